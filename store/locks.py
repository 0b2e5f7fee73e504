"""One writer per run.

* Local roots: an exclusive ``flock`` on ``<root>/.locks/<run_id>.lock``. The kernel releases it when
  the writer process dies (even by SIGKILL), so a crashed run can be resumed at once.
* Remote roots (object stores have no locks): a lease object ``<root>/.locks/<run_id>.lease`` created
  with an atomic conditional PUT (``If-None-Match: *``): of two writers starting at the same instant,
  exactly one creates it, the other is refused. The holder refreshes the lease's ``heartbeat`` at least
  every :data:`HEARTBEAT_SECONDS` while it commits; a lease without a heartbeat for :data:`LEASE_SECONDS`
  (its writer died) is taken over with a conditional PUT on its ETag (``If-Match``), so of two writers
  taking over the same dead lease, exactly one wins too. Within one process a registry refuses a second
  writer at once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import socket
import stat
import threading
import time
import uuid
from typing import Any

from trajscope.store.chunkio import refused_by_condition
from trajscope.store.errors import PathOutsideRoot, RunLocked, UserError
from trajscope.store.layout import LOCK_DIR, RUN_SUFFIX, validate_run_id
from trajscope.store.nolinks import CLOEXEC, NOFOLLOW, open_real_dir
from trajscope.store.root import StoreRoot, default_location

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0
#: how long a local lock whose named holder is dead is waited for (its writer process is exiting)
EXIT_GRACE_SECONDS = 5.0
#: how a local lock file begins once its holder let it go (``released by pid N on HOST``)
RELEASED = "released"

_HELD: set[tuple[str, str]] = set()
_HELD_GUARD = threading.Lock()
#: the descriptors of the flocks this process holds, closed in a child made by ``fork`` (see below)
_HELD_FDS: set[int] = set()


def _drop_held_locks_in_child() -> None:
    """In a child made by ``fork`` without ``exec`` (a DataLoader's workers beside a ``ModuleRecorder``): close
    its copies of the writer locks' descriptors. A flock belongs to the open file, which every copy keeps
    alive, so a long-lived child held the run locked after its writer released it. (The writer process gets
    its descriptor on purpose, by ``SCM_RIGHTS``, and is started by ``exec``: no ``fork`` hook runs there.)"""
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_held_locks_in_child)


#: how many times a lease refresh is tried while the object it finds is still this writer's own
LEASE_WRITE_ATTEMPTS = 3


#: a local run's flock refused this many times in a row (10 ms apart) while its lock file names a live process is
#: held by a writer (once could be a reader's shared probe, :func:`writer_holds`)
LIVE_REFUSALS = 5


#: what a writer lock is taken for, and how a refusal says it (an object store's lease records it: a deletion
#: killed on another host held the run for a minute under "being written"; found by a review)
PURPOSES = {"writing": "being written", "deleting": "being deleted", "editing": "having its attributes edited",
            "repairing": "being repaired by fsck"}


class WriterLock:
    """Exclusive right to write one run; use as a context manager or call :meth:`release`.

    ``purpose``: one of :data:`PURPOSES`, what the lock is taken for; an object store's lease records it, and a
    writer refused by it is told (``run 'r' is being deleted by pid N on HOST ...``)."""

    def __init__(self, root: StoreRoot, run_id: str, purpose: str = "writing"):
        if purpose not in PURPOSES:
            raise ValueError(f"unknown lock purpose {purpose!r}: use one of {', '.join(PURPOSES)}")
        self.purpose = purpose
        self.root = root
        self.run_id = run_id = _locked_id(root, run_id)
        self.token = uuid.uuid4().hex
        self._fd: int | None = None
        self._key = (root.location, run_id)
        self._lease_written = 0.0
        self._held_lease = False
        self._etag: str | None = None  # of the lease object this writer last wrote (remote roots)
        self._refresh_guard = threading.Lock()
        #: why this writer lost the run (its lease taken over), or None: it then writes nothing more
        self.lost: str | None = None
        #: the ETag of the run's root document as the holder last wrote it (object stores; see
        #: ``RunWriter._write_document``): its next write replaces exactly that object or is refused
        self.document_etag: str | None = None

    @property
    def held(self) -> bool:
        """Whether this writer holds the lock now (taken, not yet released)."""
        return self._fd is not None or self._held_lease

    def lease(self) -> dict[str, Any]:
        """The ``writer`` attribute stamped into the run at each commit (remote roots: also refreshes the
        lease object when its heartbeat is older than :data:`HEARTBEAT_SECONDS`)."""
        if self.lost is not None:
            raise RunLocked(self.lost)
        stamp = self._stamp()
        if self._held_lease and stamp["heartbeat"] - self._lease_written > HEARTBEAT_SECONDS:
            self._refresh_lease(stamp)
        return stamp

    @property
    def has_etags(self) -> bool:
        """Whether this writer holds an object store's lease whose object has an ETag (conditional writes)."""
        return self._held_lease and self._etag is not None

    def confirm(self) -> None:
        """Raise :class:`RunLocked` unless this writer holds the run now: on an object store the lease is
        refreshed at once, on the condition that it is still the object this writer wrote (local roots: the
        flock holds as long as its descriptor)."""
        if self.lost is not None:
            raise RunLocked(self.lost)
        if self._held_lease:
            self._refresh_lease(self._stamp())

    @contextlib.contextmanager
    def kept_alive(self):
        """Refresh an object store's lease from a thread of its own while the block runs: a long operation that
        writes no commit (a deletion of many objects) keeps the run, where after :data:`LEASE_SECONDS` without a
        heartbeat another writer could take it over and write beside it (found by a review: ``rm`` of a large run
        on S3). Nothing to do on a local root (the ``flock`` holds as long as its descriptor)."""
        if not self._held_lease:
            yield self
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS / 2):
                try:
                    self.lease()  # (refreshed once older than HEARTBEAT_SECONDS)
                except Exception:  # noqa: BLE001 - lost (self.lost says why) or the store did not answer: the
                    if self.lost is not None:  # next beat tries again, as a writer's next commit would
                        return

        thread = threading.Thread(target=beat, name=f"trajscope-lease-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def acquire(self) -> "WriterLock":
        """Take the lock or raise :class:`RunLocked` naming the holder."""
        with _HELD_GUARD:
            if self._key in _HELD:
                raise RunLocked(f"run {self.run_id!r} is already being written by this process")
            _HELD.add(self._key)
        try:
            if self.root.is_local:
                self._acquire_flock()
            else:
                self._check_lease()
        except BaseException:
            with _HELD_GUARD:
                _HELD.discard(self._key)
            raise
        return self

    def _acquire_flock(self) -> None:
        import fcntl

        path = self.root.lock_path(self.run_id)
        fd = _open_lock_file(self.root.location, path)
        deadline = time.monotonic() + EXIT_GRACE_SECONDS
        refusals = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    named = _names(path, fd)
                except BaseException:  # (its flock is not kept by a descriptor nobody holds)
                    os.close(fd)
                    raise
                if named:
                    break
                # a deleted run's lock file, removed by its deleter (remove_file) after this opened it: the lock
                # is now the file of that name, made again (a lock on the removed one excludes nobody)
                os.close(fd)
                fd = _open_lock_file(self.root.location, path)
                continue
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                alive = not holder.startswith(RELEASED) and _holder_alive(holder)  # (released: its writer
                # process, which shares the flock, is exiting)
                refusals += 1
                if alive and refusals < LIVE_REFUSALS:  # (a reader's shared probe, writer_holds, lasts
                    time.sleep(0.01)  # microseconds: refused again and again, it is a writer; found by a review)
                    continue
                if alive or time.monotonic() > deadline:
                    os.close(fd)
                    if alive:
                        raise RunLocked(f"run {self.run_id!r} is being written by {holder}; wait for it to "
                                        "finish or stop it first") from None
                    raise RunLocked(  # its writer process is still in a slow last commit (an fsync)
                        f"run {self.run_id!r} is still locked by the writer process of {holder}, which has exited: "
                        f"that writer process is finishing its last commit; retry in a few seconds (if it persists, "
                        f"another process inherited the lock: `fuser {path}` names it)") from None
                time.sleep(0.02)  # the named holder is dead; its writer process (same flock) is exiting
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        except BaseException:  # e.g. a full disk or quota: the lock is not taken, nor its descriptor kept
            os.close(fd)
            raise
        self._fd = fd
        _HELD_FDS.add(fd)

    def _lease_path(self) -> str:
        return _lease_path(self.root, self.run_id)

    def check(self) -> None:
        """Raise :class:`RunLocked` if this writer has lost the run. On an object store whose lease this writer
        last refreshed over half a lease ago (its process was paused), the lease is verified first: a writer
        taken over meanwhile learns it before it writes, not at its next commit."""
        if self.lost is None and self._held_lease and time.time() - self._lease_written > LEASE_SECONDS / 2:
            self.lease()
        if self.lost is not None:
            raise RunLocked(self.lost)

    def _stamp(self) -> dict[str, Any]:
        """This writer's identity and the time: the lease object's content and the ``writer`` attribute."""
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "processes": process_space(),
                "purpose": self.purpose, "heartbeat": time.time()}

    def _write_lease(self, **conditions: Any) -> None:
        self._put_lease(self._stamp(), **conditions)
        self._held_lease = True

    def _put_lease(self, stamp: dict[str, Any], **conditions: Any) -> None:
        """Write the lease object; remember its ETag (the version a refresh must still find)."""
        path = self._lease_path()
        result = self.root.fs.pipe_file(path, json.dumps(stamp).encode(), **conditions)
        etag = result.get("ETag") if isinstance(result, dict) else None
        if etag is None:
            try:
                etag = self.root.fs.info(path).get("ETag")
            except (OSError, ValueError):
                etag = None
        self._etag = etag
        self._lease_written = stamp["heartbeat"]

    def _refresh_lease(self, stamp: dict[str, Any]) -> None:
        """Refresh the lease only if it is still the object this writer wrote (``If-Match`` its ETag): a writer
        that stalled past :data:`LEASE_SECONDS` (a paused process, a network partition) and was taken over
        by a ``resume`` elsewhere is told so and stops, instead of overwriting the new writer's lease and
        attributes. Without ETags (``memory://``) the lease is rewritten as it is.

        A refusal that finds this writer's own token stored (its PUT retried after the first attempt landed) is
        written again over exactly the object read (``If-Match`` its ETag): a writer that takes the run over
        between that read and this write makes it refused, not overwritten (found by a review: the rewrite was
        unconditional). Only a store that refuses ``If-Match`` on the very object it just named, or answers
        ``NotImplemented``, is written without conditions."""
        with self._refresh_guard:  # (the write threads' fenced chunk writes confirm the lease too: one at a time,
            if self._etag is None:  # each naming the ETag the last one left)
                self._put_lease(stamp)
                return
            expected, conditional = self._etag, True
            for _ in range(LEASE_WRITE_ATTEMPTS):
                try:
                    self._put_lease(stamp, **({"IfMatch": expected} if conditional else {}))
                    return
                except (FileExistsError, OSError) as refused:
                    last = refused
                    holder, etag = self._lease_now(refused)
                    if holder.get("token") != self.token:
                        break  # another writer's lease, or none
                    # still ours: a retried PUT that had landed (written again over the object read), a store that
                    # refuses If-Match on the very object it names or answers NotImplemented (without conditions
                    # from then on), or a failure that never reached the store (a timeout: the same condition again;
                    # found by a review: it too went without conditions, over a takeover made meanwhile)
                    takes_none = getattr(refused, "errno", None) == errno.ENOSYS or (
                        refused_by_condition(refused) and etag is not None and etag == expected)
                    conditional = conditional and etag is not None and not takes_none
                    expected = etag
            else:
                raise last from None  # refused again and again over this writer's own lease: the error stands
        self._held_lease = False
        if holder.get("token"):
            self.lost = (f"run {self.run_id!r}: this writer's lease was taken over by pid {holder.get('pid')} on "
                         f"{holder.get('host')} after {LEASE_SECONDS:.0f} s without a heartbeat from this one (a "
                         "paused process?); it stops writing, and the run is the new writer's")
        else:  # (found by a review: "taken over by pid None on None after 60 s" where nobody had)
            self.lost = (f"run {self.run_id!r}: this writer's lease object is gone from the store (deleted, or "
                         "released by a writer that took the run over and finished); it stops writing: check the "
                         f"run with `trajscope fsck {self.run_id}`")
        raise RunLocked(self.lost) from None

    def _lease_now(self, refused: BaseException) -> tuple[dict[str, Any], str | None]:
        """The lease object as stored now and its ETag (read in that order: an object replaced after the ETag was
        read shows its new holder); ``({}, None)`` when gone. A store that cannot be read: ``refused`` stands."""
        path = self._lease_path()
        self.root.fs.invalidate_cache(path)
        try:
            etag = self.root.fs.info(path).get("ETag")
            return json.loads(self.root.fs.cat_file(path)), etag
        except FileNotFoundError:
            return {}, None  # removed: a writer that took over has released it since
        except (OSError, ValueError):
            raise refused from None  # the store unreachable: the refresh's own error stands

    def _refused(self, holder: dict[str, Any], age: float) -> RunLocked:
        purpose = holder.get("purpose")  # (older leases have none; a later version's may be anything)
        purpose = purpose if isinstance(purpose, str) and purpose in PURPOSES else "writing"
        where = "" if self.root.location == default_location() else f" --root {self.root.location}"
        stopped = {"deleting": "; if that deletion was stopped (its process killed), retry after "
                               f"{LEASE_SECONDS:.0f} s without a heartbeat: `trajscope rm {self.run_id}{where}` then "
                               "finishes it"}
        return RunLocked(
            f"run {self.run_id!r} is {PURPOSES[purpose]} by pid {holder.get('pid')} on {holder.get('host')} "
            f"(heartbeat {age:.0f} s ago)" + stopped.get(purpose, "; wait for it to finish, or retry after "
                                                                  f"{LEASE_SECONDS:.0f} s without a heartbeat")
        )

    def _check_lease(self) -> None:
        """Take the lease object with an atomic create, or take over a dead one atomically (see module)."""
        path = self._lease_path()
        try:
            self._write_lease(mode="create")  # If-None-Match: *
            return
        except FileExistsError:
            pass
        self.root.fs.invalidate_cache(path)
        try:
            info = self.root.fs.info(path)
            holder = json.loads(self.root.fs.cat_file(path))
        except (FileNotFoundError, ValueError):  # released (or unreadable) meanwhile: one more atomic create
            holder, info = None, None
        if holder is not None:
            age = time.time() - float(holder.get("heartbeat", 0))
            if age < LEASE_SECONDS and not _died_here(holder):  # (a writer of this host seen dead: taken over at
                raise self._refused(holder, age)  # once, as a local root's lock is; found by a review)
        try:
            if info is not None and info.get("ETag"):  # a dead writer's lease: replace exactly that object
                try:
                    self._write_lease(IfMatch=info["ETag"])
                except OSError as refused:  # a store that takes no If-Match (NotImplemented): as without ETags
                    if refused.errno != errno.ENOSYS:  # (found by a review: "being written by pid ..., heartbeat
                        raise  # 75 s ago; retry after 60 s", for ever)
                    self.root.fs.rm(path)
                    self._write_lease(mode="create")
            else:  # gone meanwhile, or a file system without ETags (memory://): remove, then create atomically
                if info is not None:
                    self.root.fs.rm(path)
                self._write_lease(mode="create")
        except (FileExistsError, OSError):
            try:
                holder = json.loads(self.root.fs.cat_file(path))
            except (FileNotFoundError, ValueError):
                holder = {}
            raise self._refused(holder, time.time() - float(holder.get("heartbeat", 0))) from None

    def remove_file(self) -> None:
        """Remove the lock file of a local run this lock holds, as the run's deletion ends (found by a review:
        ``rm`` left ``.locks/RUN.lock`` behind). Safe while others wait for it: one that opened the removed file
        takes the lock and finds its name gone, and locks the file made again (:meth:`_acquire_flock`). Still
        held until :meth:`release`."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # (the run is gone already: a lock file left is no error)
                os.unlink(self.root.lock_path(self.run_id))

    def release(self) -> None:
        """Give the lock back (idempotent, from any thread: an interrupted ``finish`` releases it from a thread
        of its own, maybe while the owner calls again; a descriptor closed twice could close another file)."""
        with _HELD_GUARD:
            fd, self._fd = self._fd, None
            lease, self._held_lease = self._held_lease, False
        if fd is not None:
            _HELD_FDS.discard(fd)
            try:  # the file says so: a pid it kept naming could be a live process's (a notebook that tagged the
                os.ftruncate(fd, 0)  # run), which made a crashed run's listing say its writer is alive
                os.pwrite(fd, f"{RELEASED} by pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            except OSError:
                pass  # (a full disk: the pid stays, as before)
            os.close(fd)
        if lease:
            try:
                path = self._lease_path()
                if json.loads(self.root.fs.cat_file(path)).get("token") == self.token:
                    self.root.fs.rm(path)
            except (OSError, ValueError):
                pass  # gone already, or unreachable: it expires after LEASE_SECONDS
        with _HELD_GUARD:
            _HELD.discard(self._key)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _locked_id(root: StoreRoot, run_id: str) -> str:
    """The run whose lock guards ``run_id``: itself, or, where a local run's folder is a link to another run's
    folder in the root, that run (found by a review: a link ``alias.zarr -> real.zarr`` let ``resume alias`` write
    ``real`` while its producer held ``real``'s lock, and ``tag alias`` be overwritten by that producer). A
    link to anything else keeps its own id (what the store's reads and writes allow through it is theirs to say).
    """
    if not root.is_local:
        return run_id
    path = os.path.join(root.location, run_id + RUN_SUFFIX)
    if not os.path.islink(path):
        return run_id
    folder, name = os.path.split(os.path.realpath(path))
    if folder == os.path.realpath(root.location) and name.endswith(RUN_SUFFIX):
        try:
            return validate_run_id(name[: -len(RUN_SUFFIX)])
        except UserError:
            pass
    return run_id


def _open_lock_read_only(root: StoreRoot, run_id: str) -> int:
    """A read-only descriptor of a local run's lock file, neither it nor its folder followed if a link (the lock
    folder is not made where missing: a read makes nothing); :class:`FileNotFoundError` when there is none."""
    folder, name = os.path.split(root.lock_path(run_id))
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | CLOEXEC)
    try:
        return os.open(name, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW | CLOEXEC, dir_fd=dir_fd)  # (a FIFO: no wait)
    finally:
        os.close(dir_fd)


def _lock_record(root: StoreRoot, run_id: str) -> str | dict[str, Any]:
    """What the run's lock says of its writer, read only: a local lock file's line (``pid N on HOST``; empty
    when none was written) or an object store's lease (a dict). :class:`FileNotFoundError` when there is none."""
    if root.is_local:
        fd = _open_lock_read_only(root, run_id)
        try:
            return os.pread(fd, 200, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
    path = _lease_path(root, run_id)
    root.fs.invalidate_cache(path)
    return dict(json.loads(root.fs.cat_file(path)))


def _lease_path(root: StoreRoot, run_id: str) -> str:
    """The object-store lease of ``run_id``: ``<root>/.locks/<run_id>.lease``, as the root's file system names it."""
    return root.fs._strip_protocol(f"{root.location}/{LOCK_DIR}/{run_id}.lease")


def writer_gone(root: StoreRoot, run_id: str) -> bool:
    """True when no writer can be holding ``run_id``: the local lock file names a process of this host that no
    longer exists or holds no ``flock`` on it (a zombie, a reused pid), or the object store's lease has had no
    heartbeat for :data:`LEASE_SECONDS` (or there is none: a writer removes it only when it lets the run go). Read only, nothing locked; False whenever unsure
    (another host's process, no lock file where every writer leaves one, a run reached through a link to a
    folder that is no run of the root). For listings: a run still marked ``running`` whose producer was killed."""
    try:
        run_id = _locked_id(root, run_id)  # (a link to a run: that run's writer; found by a review)
        if (root.location, run_id) in _HELD:
            return False
        record = _lock_record(root, run_id)
        if isinstance(record, str):
            if record.startswith(RELEASED) or (bool(record) and not _holder_alive(record)):
                return True
            # a process of this host that still answers but holds no flock is no writer: killed and not yet
            # reaped by its parent (a zombie), or its pid taken by another process (found by a review)
            return _of_this_host(record) and not writer_holds(root, run_id)
        return time.time() - float(record.get("heartbeat", 0)) > LEASE_SECONDS or _died_here(record)
    except FileNotFoundError:
        return not root.is_local
    except (OSError, ValueError, TypeError, PathOutsideRoot):
        return False


def writer_holds(root: StoreRoot, run_id: str) -> bool:
    """Whether a writer holds ``run_id`` now, asked without writing anything (a check of a root this user may only
    read: found by a review, ``fsck`` took the writer lock to ask, which a read-only root or another user's lock
    file refused, and rewrote the lock file's holder line). Local roots: a shared ``flock`` tried on the lock file,
    which a writer's exclusive one refuses; object stores: a lease with a heartbeat within :data:`LEASE_SECONDS`."""
    run_id = _locked_id(root, run_id)
    if (root.location, run_id) in _HELD:
        return True
    if not root.is_local:
        return not writer_gone(root, run_id)
    import fcntl

    try:
        fd = _open_lock_read_only(root, run_id)
    except FileNotFoundError:  # no lock file (or folder): no writer ever took this run's lock here
        return False
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # a link planted as the lock or its folder: cannot tell
            return True
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (which lets go of the shared flock)
    return False


def writer_named(root: StoreRoot, run_id: str) -> str:
    """The writer the run's lock names (``pid N on HOST``, with the lease's last heartbeat on an object store),
    read only; ``""`` when it names none or cannot be read. For messages."""
    try:
        record = _lock_record(root, _locked_id(root, run_id))
    except (OSError, ValueError, TypeError, PathOutsideRoot):
        return ""
    if isinstance(record, str):
        return "" if record.startswith(RELEASED) else record
    age = time.time() - float(record.get("heartbeat", 0) or 0)
    return f"pid {record.get('pid')} on {record.get('host')} (heartbeat {age:.0f} s ago)"


@functools.lru_cache(maxsize=1)
def process_space() -> str:
    """Where a pid names one process: this boot of this machine (its ``boot_id``) and this process's pid
    namespace, ``BOOT_ID/NAMESPACE_INODE``; ``""`` where the system does not tell (not Linux). A host name alone
    does not say it: two machines, or two containers of one, may have the same name and other processes."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot = file.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}" if boot else ""
    except OSError:
        return ""


def _died_here(lease: dict[str, Any]) -> bool:
    """Whether an object-store lease was written by a process of this machine's boot and pid namespace (and host
    name) that no longer exists: its writer is dead, whatever its last heartbeat (a killed producer's run was
    refused for a minute, where a local root's lock frees at once). A lease without that record (written
    before it was kept), or of another process space, is waited out as before."""
    space = lease.get("processes")
    if not space or space != process_space() or lease.get("host") != socket.gethostname():
        return False
    return not _holder_alive(f"pid {lease.get('pid')} on {lease.get('host')}")


def _of_this_host(holder: str) -> bool:
    """Whether the holder line ``pid N on HOST`` names a process of this host."""
    parts = holder.split()
    return len(parts) == 4 and parts[0] == "pid" and parts[2] == "on" and parts[3] == socket.gethostname()


def _holder_alive(holder: str) -> bool:
    """False only when the lock file names a process of this host that no longer exists."""
    parts = holder.split()
    if not _of_this_host(holder):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _open_lock_file(root: str, path: str) -> int:
    """A read-write descriptor of the lock file ``path`` (made if missing) in the root's lock folder, neither
    of them followed if it is a link (:mod:`trajscope.store.nolinks`): a lock file planted as a link would
    have the lock's holder line written over what it points at."""
    folder, name = os.path.split(path)
    os.makedirs(root, exist_ok=True)  # (the root itself is the user's: followed if a link)
    dir_fd = open_real_dir(root, [os.path.basename(folder)], f"the lock folder of {root}")
    try:  # (O_NONBLOCK: a FIFO planted there does not block the open)
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | NOFOLLOW | CLOEXEC, 0o666, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PathOutsideRoot(f"the lock file {path} is a symbolic link; trajscope never writes through a "
                                  "link: remove it") from None
        if err.errno == errno.EISDIR:  # (found by a review: a traceback)
            raise UserError(f"the lock file {path} is a folder, not a regular file: remove it (trajscope makes the "
                            "file again)") from None
        # the whole path (opened relative to its folder, the error named the file alone: found by a review)
        raise type(err)(err.errno, err.strerror, path) from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device: its holder line cannot be written (found by
        os.close(fd)  # a review: a DELETE answered 500)
        raise UserError(f"the lock file {path} is not a regular file: remove it (trajscope makes it again)")
    return fd
