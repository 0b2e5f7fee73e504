"""Writing a run: create the group, write whole time chunks, commit, finish, reopen for resume.

Commit protocol (DESIGN §3): the data of a chunk is written first (each chunk object replaced
atomically), then one write of the root attributes raises ``committed_steps``. Arrays are created at
their full capacity up front, so no array metadata changes while the run is written; a reader trims
every variable to ``committed_steps``.

Every step leaves a run that opens (each is a named fault point of :mod:`trajscope.store.faults`):

* **create**: the lock is taken, then the root document is written with ``status: creating`` (readers
  refuse such a run with a message; ``produce --name`` replaces it), then the arrays and the static data,
  then the full attributes with ``status: running``.
* **finish**: one atomic write of the root document sets the final status *and* the consolidated
  metadata with every array already cut to ``committed_steps``; only then are the arrays shrunk, one by
  one. A reader (even plain ``xr.open_zarr``, which reads the consolidated metadata) sees one length
  whatever the shrinking has reached.
* **resume**: the status goes back to ``running`` (which drops the consolidated metadata), then the
  arrays grow back to capacity; readers trim to ``committed_steps`` meanwhile.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import platform
import threading
import time
import uuid
from importlib import metadata as _metadata
from typing import Any, Callable, Mapping

import numpy as np
import zarr

from trajscope.store import faults
from trajscope.store.chunkio import (DURABILITY_LEVELS, WRITE_IO_MODES, FsspecSink, LocalSink,
                                     remove_stale_temporaries)
from trajscope.store.dataset_attrs import set_finite_or_null
from trajscope.store.errors import CorruptData, NotARun, RunLocked, UserError
from trajscope.store.hotpath import BlockWrite, HotPath, block_threads, default_write_threads
from trajscope.store.layout import (
    ALL_CHUNKS_STORED_BODY,
    ALL_CHUNKS_STORED_KEY,
    COMMITTED,
    COORDINATES,
    CREATING,
    FORMAT_VERSION,
    RUN_UID,
    STATUSES,
    VariableSpec,
    check_format,
    chunk_plan,
    codecs_for,
    fill_value_for,
    never_fully_created,
    validate_variable_name,
)
from trajscope.store.locks import HEARTBEAT_SECONDS, WriterLock
from trajscope.store.root import StoreRoot, attrs_document
from trajscope.store.snapshot import lost_last_chunks


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions recorded with every run (read from the installed distributions; nothing is imported)."""
    versions = {"zarr": zarr.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for dist in ("trajscope", "torch"):
        try:
            versions[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree, or a reader without torch
            pass
    return versions


class RunWriter:
    """The single writer of one run. Create with :meth:`create` or reopen with :meth:`reopen`.

    A recorder calls :meth:`write_block` from one thread (its training thread on the CPU, its writer thread
    on a GPU, after the copy to the host) and :meth:`commit`, :meth:`commit_if_due` and
    :attr:`written_steps` from its writer thread; the owner calls :meth:`finish` after both have stopped.
    """

    def __init__(self, root: StoreRoot, run_id: str, lock: WriterLock, attrs: dict[str, Any]):
        self.root = root
        self.run_id = run_id
        self.lock = lock
        self.attrs = attrs
        self.group = zarr.open_group(root.zarr_store(run_id), mode="r+", use_consolidated=False)
        self.arrays = {name: self.group[name] for name in attrs["time_variables"]}
        self.chunk_steps: int = int(attrs["chunk_steps"])
        self.capacity: int = int(attrs["capacity"])
        self._attrs_guard = threading.Lock()
        self._hot_guard = threading.Lock()  # the hot path is made once, whichever thread asks first
        self._last_write = time.monotonic()
        # set when the thread that releases the lock after an interrupted finish has ended (an Event, not the thread:
        # a Thread.join() cut by a Ctrl-C marks the thread stopped while it runs on in CPython 3.11)
        self._unlocker: threading.Event | None = None
        self._unlocked_after_interrupt = False  # (it has: a later finish takes the lock back)
        self._unlock_guard = threading.Lock()

    # -- creation -----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: StoreRoot,
        run_id: str,
        *,
        variables: Mapping[str, VariableSpec],
        sizes: Mapping[str, int],
        capacity: int,
        static: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any],
        compressor: str = "none",
        chunk_bytes: int | None = None,
        length_known: bool = True,
    ) -> "RunWriter":
        """Create a new run with room for ``capacity`` recorded states and write its static arrays.

        ``length_known=False``: ``capacity`` is room to grow, not the run's planned length (a recorder that
        does not know how long the run will be); listings then give no progress while it runs.

        ``sizes`` gives the length of every non-step dimension; ``static`` the values of the variables
        without a ``step`` dimension. Refuses to overwrite an existing run, except one left
        ``creating`` by a producer that died while creating it (that one is replaced).
        """
        for name in (*variables, *static):  # (before anything is made: a run nothing could read back)
            validate_variable_name(name, "nothing was created")
        try:
            json.dumps(dict(attrs), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise UserError(f"run {run_id!r}: its attributes cannot be stored as JSON ({err}); nothing was created") from None
        serializer, compressors = codecs_for(compressor)  # (an unknown one is refused before anything is made)
        _refuse_existing(root, run_id)
        lock = WriterLock(root, run_id).acquire()
        try:
            faults.checkpoint("create.locked")
            if _refuse_existing(root, run_id):  # a half-created run whose creator is gone: replace it
                root.delete(run_id)
            else:  # a deletion stopped half-way: its chunks must not lie under the new run's arrays
                root.clear_for_create(run_id)
            uid = uuid.uuid4().hex
            root.write_attrs(run_id, {"format_version": FORMAT_VERSION, "run_id": run_id, RUN_UID: uid,
                                      "status": CREATING, "created": _now(), "updated": _now(), COMMITTED: 0,
                                      "writer": lock.lease()})
            timed = [spec for spec in variables.values() if spec.time_varying]
            plan = chunk_plan({s.name: tuple(sizes[d] for d in s.dims[1:]) for s in timed},
                              {s.name: s.dtype for s in timed}, capacity,
                              **({"target_bytes": chunk_bytes} if chunk_bytes else {}))
            chunk_steps = plan.chunk_steps
            group = zarr.open_group(root.zarr_store(run_id), mode="r+", zarr_format=3, use_consolidated=False)
            time_variables = []
            for spec in variables.values():
                shape = tuple(capacity if d == spec.dims[0] and spec.time_varying else sizes[d] for d in spec.dims)
                if spec.time_varying:
                    chunks = plan.chunks[spec.name]
                    time_variables.append(spec.name)
                else:
                    chunks = shape
                array_attrs = {}
                coords = [c for c in COORDINATES if c in variables]
                if spec.time_varying and coords and spec.name not in COORDINATES and spec.name != "step":
                    array_attrs["coordinates"] = " ".join(coords)
                array = group.create_array(
                    spec.name,
                    shape=shape,
                    chunks=tuple(max(c, 1) for c in chunks),
                    dtype=spec.dtype,
                    serializer=serializer,
                    compressors=compressors,
                    filters=None,
                    fill_value=fill_value_for(spec.dtype),
                    dimension_names=list(spec.dims),
                    attributes=array_attrs,
                    config={"write_empty_chunks": True},  # every chunk stored: a missing one is always a loss
                )
                if not spec.time_varying:
                    array[...] = np.asarray(static[spec.name], dtype=spec.dtype)
            root.write_bytes(run_id, ALL_CHUNKS_STORED_KEY, ALL_CHUNKS_STORED_BODY)
            faults.checkpoint("create.arrays")
            full_attrs = {
                "format_version": FORMAT_VERSION,
                "run_id": run_id,
                # the default level, unless given; set_write_options stores another (found by a review: a module
                "durability": cls.durability,  # run, which sets none, had no such attribute)
                **dict(attrs),
                RUN_UID: uid,
                "versions": library_versions(),
                "created": _now(),
                "updated": _now(),
                "status": "running",
                COMMITTED: 0,
                "capacity": int(capacity),
                "length_known": bool(length_known),
                "chunk_steps": int(chunk_steps),
                "compressor": compressor,
                "time_variables": time_variables,
                "error": None,
                "writer": lock.lease(),
            }
            lock.document_etag = root.write_attrs(run_id, full_attrs)
            faults.checkpoint("create.attrs")
        except BaseException:
            lock.release()
            raise
        return cls(root, run_id, lock, full_attrs)

    @classmethod
    def reopen(cls, root: StoreRoot, run_id: str,
               check: Callable[[dict[str, Any], dict[str, tuple[int, ...]]], None] | None = None) -> "RunWriter":
        """Reopen an unfinished run (``running`` after a crash, ``interrupted`` or ``failed``) to resume it.

        ``check(attrs, shapes)``, given the run's attributes and its time-varying arrays' shapes, may refuse the
        resume by raising: it is called under the lock, before anything of the run is changed (found by a review:
        a resume its caller refused after this had marked the run ``running`` had erased the run's end)."""
        root.read_group_metadata(run_id)  # RunNotFound before a lock file is made for a run that is not there
        lock = WriterLock(root, run_id).acquire()
        try:
            attrs = root.read_attrs(run_id)
            if root.is_foreign(run_id, attrs):  # someone else's Zarr group: never written by a resume
                raise NotARun(root.run_url(run_id), "a Zarr group without a run's attributes", reading=True)
            check_format(run_id, attrs)  # (a later trajscope's run: never written by this one)
            if attrs.get("status") == "complete":
                raise UserError(f"run {run_id!r} is complete; nothing to resume")
            if attrs.get("exported_from"):  # (found by a review: resuming a copy failed it half-way)
                source = attrs["exported_from"].get("run_id") if isinstance(attrs["exported_from"], dict) else None
                raise UserError(f"run {run_id!r} is a copy written by `trajscope export`" + (
                    f" of run {source!r}" if source else "") + "; a copy is not resumed: resume the run it copies")
            if never_fully_created(attrs):  # (found by a review: one an older trajscope left "lacks the attributes")
                raise UserError(f"run {run_id!r} was never fully created (its producer stopped while creating it): "
                                f"start it again with `trajscope produce CONFIG --name {run_id}`, which replaces it")
            # a run with a schema describes itself; one written before the schema needs its producer config
            needed = ("time_variables", "chunk_steps", "capacity") + (() if "schema" in attrs else ("config",))
            missing = [k for k in needed if k not in attrs]
            if missing:
                raise UserError(f"run {run_id!r} lacks the attributes {', '.join(missing)}; it cannot be resumed "
                                f"(`trajscope fsck {run_id}` lists its problems)")
            lost = lost_last_chunks(root, run_id, int(attrs.get(COMMITTED, 0)), list(attrs["time_variables"]))
            if lost:  # read back as fill values, then stored whole, they would become the run's data
                raise CorruptData(run_id, lost)
            if check is not None:
                check(attrs, {name: tuple(json.loads(root.read_bytes(run_id, f"{name}/zarr.json"))["shape"])
                              for name in attrs["time_variables"]})
            if root.is_local:  # what a writer killed in mid-write left (nothing else writes under the lock)
                remove_stale_temporaries(root.run_url(run_id))
            attrs["status"] = "running"
            attrs["error"] = None
            for ended in ("final_loss", "last_step", "not_finite", "finished"):  # of the end this resume undoes (found
                attrs.pop(ended, None)  # by a review: `ls` showed a run being resumed with its old final loss)
            attrs["writer"] = lock.lease()
            attrs["updated"] = _now()
            # drops stale consolidated metadata first; a run recorded with durability fsync: this document, its
            # committed count included, is fsynced too
            lock.document_etag = root.write_attrs(run_id, attrs,
                                                  durable=root.is_local and attrs.get("durability") == "fsync")
            faults.checkpoint("resume.reopened")
            writer = cls(root, run_id, lock, attrs)
            for array in writer.arrays.values():
                if array.shape[0] != writer.capacity:
                    array.resize((writer.capacity,) + array.shape[1:])
            faults.checkpoint("resume.regrown")
        except BaseException:
            lock.release()
            raise
        return writer

    # -- growth (runs of unknown length) ---------------------------------------------------------------
    def _write_document(self, data: bytes) -> None:
        """Write ``data`` as the run's root document over the one this writer wrote last (``If-Match`` its ETag, on
        an object store that gives ETags), and keep the new ETag.

        Found by a review: a writer cut off from S3 for longer than the lease was taken over by a ``resume``; one
        of its commits, sent before the takeover and retried by the client, landed after the new writer had
        finished, and turned the complete run back into ``running`` with fewer states. Sent with ``If-Match``,
        such a write is refused by the store once another writer has replaced the document: this writer stops
        (:class:`RunLocked`) and the run stays the new writer's. A refusal of this writer's own write retried
        (its first attempt landed, its answer was lost) finds its own bytes stored: that is success (found by the
        review of this fix). A store that refuses ``If-Match`` itself (the document unchanged) is written without
        it from then on, as the lease is."""
        etag = self.lock.document_etag
        try:
            self.lock.document_etag = self.root.write_bytes(self.run_id, "zarr.json", data, durable=self._durable,
                                                            if_match=etag)
            return
        except (FileExistsError, OSError) as refused:
            if etag is None:
                raise
            stored, now = self._stored_document()
            if stored == data:  # this very write, landed by an earlier attempt
                self.lock.document_etag = now
                return
            if now != etag:  # replaced by another writer
                self.lock.lost = (f"run {self.run_id!r}: another writer replaced the run's document since this "
                                  "writer last wrote it (a resume took the run over after a stall of this one); this "
                                  "writer stops writing, and the run is the new writer's")
                raise RunLocked(self.lock.lost) from None
            if getattr(refused, "errno", None) == errno.ENOSYS:  # the store does not implement If-Match
                self.root.write_bytes(self.run_id, "zarr.json", data, durable=self._durable)
                self.lock.document_etag = None  # (unconditional from then on)
                return
            raise  # unchanged, another failure (the store unreachable...): the write's own error stands

    def _stored_document(self) -> tuple[bytes | None, str | None]:
        """The root document as stored now and its ETag (asked of the store itself; ``None`` when gone)."""
        path = self.root.fs._strip_protocol(f"{self.root.run_url(self.run_id)}/zarr.json")
        self.root.fs.invalidate_cache(path)
        try:
            return self.root.fs.cat_file(path), self.root.fs.info(path).get("ETag")
        except FileNotFoundError:
            return None, None

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` recorded states (never shrinks; a no-op when there is room).

        Arrays are resized first (only the ``step`` length changes: existing chunks keep their keys),
        then the root attributes record the new ``capacity`` in the same write that a commit would do.
        A crash in between leaves arrays longer than ``capacity``; readers trim to ``committed_steps``
        and :meth:`reopen` resizes them back, so every intermediate state opens.
        Callers grow in large increments (e.g. doubling) so metadata is rewritten rarely.
        """
        capacity = int(capacity)
        if capacity <= self.capacity:
            return
        lease = self.lock.lease()  # first: a writer whose lease was taken over resizes nothing (RunLocked)
        for array in self.arrays.values():
            array.resize((capacity,) + array.shape[1:])
        if self._durable and self._tree_durable:  # (before, the first commit fsyncs the whole tree)
            for name in self.arrays:
                self._hot().sink.durable_document(f"{name}/zarr.json")
        with self._attrs_guard:
            self.capacity = capacity
            self.attrs["capacity"] = capacity
            self.attrs["updated"] = _now()
            self.attrs["writer"] = lease
            self._write_document(attrs_document(self.attrs))
            self._last_write = time.monotonic()

    # -- reading back (resume) ----------------------------------------------------------------------
    @property
    def committed_steps(self) -> int:
        """Recorded states a reader may trust."""
        return int(self.attrs[COMMITTED])

    def read_states(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Values of every time-varying variable for recorded indices ``start:stop``."""
        return {name: array[start:stop] for name, array in self.arrays.items()}

    # -- writing (the hot path: store/hotpath.py, store/chunkio.py) ---------------------------------
    #: ``process`` (survives a killed process) or ``fsync`` (also power loss / kernel crash; local roots)
    durability: str = "process"
    #: threads that encode and write chunk files (``None``: :func:`default_write_threads` of the root)
    write_threads: int | None = None
    #: :meth:`commit_if_due` commits at most this often (the bound on a live reader's extra latency)
    commit_seconds: float = 0.5
    #: how chunk files are written on a local root: ``buffered`` or ``direct`` (:class:`LocalSink`)
    io: str = "buffered"
    _hotpath: HotPath | None = None
    _tree_durable: bool = False

    def set_write_options(self, *, durability: str | None = None, threads: int | None = None,
                          commit_seconds: float | None = None, io: str | None = None) -> None:
        """Choose the durability level, the write threads, the commit interval and the I/O mode of a local
        root (all but the commit interval before the first write)."""
        if self._hotpath is not None and (durability is not None or threads is not None or io is not None):
            raise RuntimeError("set_write_options: durability, threads and io must be set before the first write")
        if io is not None:
            if io not in WRITE_IO_MODES:
                raise UserError(f"unknown io {io!r}: use one of {', '.join(WRITE_IO_MODES)}")
            self.io = io
        if durability is not None:
            if durability not in DURABILITY_LEVELS:
                raise UserError(f"unknown durability {durability!r}: use one of {', '.join(DURABILITY_LEVELS)}")
            self.durability = durability
            self.attrs["durability"] = durability  # (stored at the next commit: resume honours it from the start)
        if threads is not None:
            self.write_threads = max(1, int(threads))
        if commit_seconds is not None:
            self.commit_seconds = max(0.0, float(commit_seconds))

    def _hot(self) -> HotPath:
        hot = self._hotpath
        if hot is not None:
            return hot
        with self._hot_guard:  # a recorder submits from one thread and commits from another
            if self._hotpath is None:
                if self.root.is_local:
                    sink = LocalSink(self.root.run_url(self.run_id), self.durability, self.io)
                else:
                    fenced = self.lock.confirm if self.lock.has_etags else None  # (see FsspecSink)
                    sink = FsspecSink(self.root.fs, self.root._fs_path(self.run_id), fenced_by=fenced)
                self._hotpath = HotPath(sink, self.arrays, self.chunk_steps, self.committed_steps,
                                        self.write_pool_size)
            return self._hotpath

    @property
    def _durable(self) -> bool:
        """Durability ``fsync`` on a local root: documents are fsynced as they are replaced."""
        return self.durability == "fsync" and self.root.is_local

    @property
    def write_pool_size(self) -> int:
        """Threads writing chunk files: ``write_threads``, else :func:`default_write_threads` of the root."""
        return self.write_threads or default_write_threads(self.root.is_local, self.io)

    @property
    def block_threads(self) -> int:
        """Write threads one block of ``chunk_steps`` states keeps busy
        (:func:`~trajscope.store.hotpath.block_threads`)."""
        return block_threads(self.arrays, self.chunk_steps)

    @property
    def written_steps(self) -> int:
        """Recorded states written (every block below it), committed or not; the small variables' rows of
        a chunk not yet complete are written by the next :meth:`commit`, before its attributes."""
        return self._hot().frontier.written

    def write_block(self, start: int, values: Mapping[str, np.ndarray]) -> BlockWrite:
        """Write recorded indices ``start : start + len`` of every time-varying variable, concurrently.

        ``start`` must be a chunk boundary; the block is a whole chunk except at the final flush (or when
        rewriting a partially committed chunk at resume). Returns at once with a
        :class:`~trajscope.store.hotpath.BlockWrite` handle; the arrays in ``values`` must stay unchanged
        until it is done (``handle.wait()``) or until a :meth:`commit` covering the block has returned.
        """
        count = len(next(iter(values.values())))
        if start % self.chunk_steps or count > self.chunk_steps:
            raise ValueError(f"block {start}+{count} is not within one chunk of {self.chunk_steps}")
        if start + count > self.capacity:
            raise ValueError(f"block {start}+{count} exceeds the run's capacity {self.capacity}")
        self.lock.check()  # a writer taken over while paused writes no chunk over the new writer's
        return self._hot().submit(start, count, values)

    def commit(self, committed_steps: int | None = None, **extra: Any) -> None:
        """Raise ``committed_steps`` in one write of the root attributes, after the data is on storage.

        Waits until every block this writer was given below ``committed_steps`` (default: everything
        written so far) is written, then writes the attributes. With durability ``fsync`` the
        chunk files and their directories are fsynced before the attributes are written, and the
        attributes document (and its directory) after.
        """
        hot = self._hot()
        target = hot.frontier.written if committed_steps is None else int(committed_steps)
        # every block this writer submitted below the target; rows it never received (written by an
        # earlier writer of the run) are the caller's word, as with any explicit commit
        hot.frontier.wait_for(min(target, hot.submitted))
        lease = self.lock.lease()  # first: a writer whose lease was taken over flushes nothing (RunLocked)
        hot.flush(target)  # the small variables' partial chunks: written once per commit, not per block
        if not self._tree_durable:  # once: what create wrote (array metadata, static data)
            hot.sink.durable_tree()
            self._tree_durable = True
        with self._attrs_guard:
            self.attrs[COMMITTED] = target
            self.attrs.update(extra)
            self.attrs["updated"] = _now()
            self.attrs["writer"] = lease
            self._write_document(attrs_document(self.attrs))
            self._last_write = time.monotonic()
        faults.checkpoint("commit.attrs")

    def commit_if_due(self, *, force: bool = False) -> bool:
        """Commit everything written if that raises ``committed_steps`` and the last commit is at least
        :attr:`commit_seconds` old (or ``force``). True when it committed.

        A live reader therefore sees a written chunk at most ``commit_seconds`` (plus one commit) after it
        is written, while the attributes are rewritten at most ``1 / commit_seconds`` times a second.
        """
        written = self.written_steps
        if written <= self.committed_steps:
            return False
        if not force and time.monotonic() - self._last_write < self.commit_seconds:
            return False
        self.commit(written)
        return True

    def seconds_until_commit_due(self) -> float:
        """Seconds before :meth:`commit_if_due` would commit (0 when it would now)."""
        return max(0.0, self.commit_seconds - (time.monotonic() - self._last_write))

    def commit_written(self, limit: int) -> int:
        """After a failed write: wait for the writes in flight to end, then commit the states below ``limit``
        that are written (the written frontier never passes a failed block). Returns ``committed_steps``."""
        if self._hotpath is not None:
            self._hotpath.drain()
        target = min(self.written_steps, int(limit))
        if target > self.committed_steps:
            self.commit(target)
        return self.committed_steps

    def _release_when_written(self) -> None:
        """Release the lock once the write threads have stopped (from a thread of its own): a lock released
        while they still write would let a ``resume`` in this process (a notebook) take the run, and a late
        write of the old one land over the new one's chunk. A process that exits loses both at once."""
        hot = self._hotpath
        if hot is None:
            self.lock.release()
            return

        done = threading.Event()

        def release() -> None:
            try:
                hot.close()
            finally:
                with self._unlock_guard:
                    try:
                        if self._unlocker is done:  # (not taken back by a finish since)
                            self._unlocker = None
                            self._unlocked_after_interrupt = True
                            self.lock.release()
                    finally:
                        done.set()  # (under the guard: a finish that sees it unset knows it has not looked yet)

        with self._unlock_guard:
            self._unlocker = done
            threading.Thread(target=release, name="trajscope-unlock-when-written", daemon=True).start()

    def _take_back_the_lock(self) -> None:
        """A ``finish`` called again after an interrupted one: its unlocking thread is told not to release,
        and waited for (the last writes); a lock it released meanwhile is taken again (:class:`RunLocked`
        when another writer has taken it), so the final document is never written unlocked."""
        with self._unlock_guard:
            pending, self._unlocker = self._unlocker, None
            released, self._unlocked_after_interrupt = self._unlocked_after_interrupt, False
        if pending is not None:
            try:
                self._wait_for_unlocker(pending)
            except BaseException:  # a Ctrl-C meanwhile: the lock is released once the writes land, as after the
                with self._unlock_guard:  # first interrupted finish (it was held until the process exited)
                    if not pending.is_set():
                        self._unlocker = pending  # (it releases the lock when it ends)
                    elif self.lock.held:  # it ended without releasing (this finish had told it not to)
                        self._unlocked_after_interrupt = True
                        self.lock.release()
                raise
        if (pending is not None or released) and not self.lock.held:
            self.lock.acquire()

    def _wait_for_unlocker(self, done: threading.Event) -> None:
        """Wait until an interrupted finish's unlocking thread has ended (its last writes landed)."""
        done.wait()

    def close_writes(self) -> None:
        """Wait for every chunk write in flight and stop the write threads (``finish`` calls it)."""
        with self._hot_guard:
            if self._hotpath is not None:
                self._hotpath.close()
                self._hotpath = None

    def reload_committed(self) -> int:
        """Take ``committed_steps`` from storage (after a writer process committed on this writer's
        behalf, :mod:`trajscope.store.writer_process`); returns it."""
        stored = self.root.read_attrs(self.run_id)
        with self._attrs_guard:
            self.attrs[COMMITTED] = int(stored.get(COMMITTED, 0))
            self.attrs["updated"] = stored.get("updated", self.attrs.get("updated"))
            self._last_write = time.monotonic()
        return self.committed_steps

    def heartbeat_due(self) -> bool:
        """True when the lease should be refreshed (no commit for :data:`HEARTBEAT_SECONDS`)."""
        return time.monotonic() - self._last_write > HEARTBEAT_SECONDS

    def finish(self, status: str, error: str | None = None, **extra: Any) -> None:
        """End the run: status and consolidated metadata in one write, then shrink the arrays, unlock."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"cannot finish with status {status!r}")
        self._take_back_the_lock()
        try:
            self.close_writes()
        except BaseException:  # e.g. a second Ctrl-C while the last writes land: their threads go on writing
            self._release_when_written()
            raise
        try:
            if self.lock.lost is not None:  # another writer holds the run now: nothing of this one is written
                raise RunLocked(self.lock.lost)
            with self._attrs_guard:
                # a number JSON cannot hold (a diverged run's final loss: nan, inf) is stored as null: the run
                # ends with its status, never with a traceback and the run left ``running``
                set_finite_or_null(self.attrs, extra)
                self.attrs.update(status=status, error=error, updated=_now(), finished=_now())
                self.attrs.pop("writer", None)
                self._write_document(final_document_bytes(self.root, self.run_id, self.attrs))
            faults.checkpoint("finish.status")
            shrink_arrays(self.root, self.run_id, self.committed_steps, self.arrays)
            faults.checkpoint("finish.shrunk")
        finally:
            self.lock.release()


def is_half_created(root: StoreRoot, run_id: str) -> bool:
    """Whether ``run_id`` is a run its creator left ``creating`` (:meth:`RunWriter.create` replaces it, once that
    creator's lock is free)."""
    try:
        return never_fully_created(root.read_attrs(run_id))
    except (UserError, KeyError, ValueError, OSError):  # (not there, not a run, unreadable: not half-created)
        return False


def _refuse_existing(root: StoreRoot, run_id: str) -> bool:
    """Raise when ``run_id`` exists and is not a half-created run; True when it is one (replaceable)."""
    if not root.exists(run_id):
        return False
    try:
        attrs = root.read_attrs(run_id)
    except (KeyError, ValueError):
        attrs = {"status": "unreadable"}
    status = attrs.get("status")
    if root.is_foreign(run_id, attrs):
        raise NotARun(root.run_url(run_id), "a Zarr group without a run's attributes")
    if never_fully_created(attrs):
        return True  # half-created (or left so by an older trajscope: a group without attributes)
    if status == "running":  # a live writer is named ("being written by ..."); a dead one is resumable
        WriterLock(root, run_id).acquire().release()
    raise UserError(
        f"run {run_id!r} already exists under {root.location}: choose another --name, "
        f"or continue it with `trajscope resume {run_id}`"
    )


def final_document(root: StoreRoot, run_id: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """The root ``zarr.json`` of a finished run: ``attrs`` plus every array's metadata, consolidated
    inline, with the ``step`` length cut to ``attrs["committed_steps"]`` (what shrinking will leave)."""
    from trajscope.store.snapshot import Snapshot, array_metadata

    committed = int(attrs.get(COMMITTED, 0))
    arrays = array_metadata(root, run_id, committed, {"attributes": attrs})  # the run's own arrays: all or raise
    return Snapshot(dict(attrs), arrays).document()


def final_document_bytes(root: StoreRoot, run_id: str, attrs: dict[str, Any]) -> bytes:
    """:func:`final_document` as the bytes of the root ``zarr.json``."""
    return json.dumps(final_document(root, run_id, attrs), indent=2, allow_nan=False).encode()


def write_final_document(root: StoreRoot, run_id: str, attrs: dict[str, Any], *, durable: bool = False) -> None:
    """Write :func:`final_document` in one atomic replace of the root ``zarr.json`` (fsynced: ``durable``)."""
    root.write_bytes(run_id, "zarr.json", final_document_bytes(root, run_id, attrs), durable=durable)


def shrink_arrays(root: StoreRoot, run_id: str, committed: int, arrays: Mapping[str, Any] | None = None) -> None:
    """Cut every time-varying array to ``committed`` states (deleting the chunks past it), one by one."""
    if arrays is None:
        group = zarr.open_group(root.zarr_store(run_id), mode="r+", use_consolidated=False)
        arrays = {name: group[name] for name in root.read_attrs(run_id).get("time_variables", [])}
    for array in arrays.values():
        if array.shape[0] != committed:
            array.resize((committed,) + array.shape[1:])
