"""A consistent, read-only snapshot of a run's store for remote readers (``/zarr/{run_id}/{key}``).

The HTTP pass-through serves a run key by key so that ``xr.open_zarr("http://host/zarr/RUN")`` works
without trajscope. Two things make a live run safe to read that way, and both live here because only
``store`` knows the layout:

* :func:`snapshot_metadata` — the root ``zarr.json`` consolidated on the fly: the root attributes
  (read first, fresh) plus every array's metadata with the ``step`` length cut to ``committed_steps``.
  A reader that opens the snapshot never asks for a state that was not committed when it opened.
* :func:`read_key` — validates a key against the layout (``zarr.json``, ``NAME/zarr.json``,
  ``NAME/c/i/j/...``) before touching storage, refuses chunks that start at or past the committed
  length (they may hold states not yet committed) and, for local roots, refuses any file whose real
  path leaves the store root (symlinks). Chunk objects are replaced atomically by the writer, so a
  chunk read is never torn.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from trajscope.store.chunkio import chunk_ok
from trajscope.store.errors import CorruptChunk, CorruptData, PathOutsideRoot, RunNotFound, UserError
from trajscope.store.layout import ALL_CHUNKS_STORED_KEY, COMMITTED, RUN_UID, STEP_DIM, VARIABLE_NAME
from trajscope.store.root import StoreRoot
from trajscope.store.safe import is_inside, resolve_inside

METADATA_KEY = "zarr.json"
_NAME = VARIABLE_NAME
_ARRAY_META = re.compile(rf"({_NAME})/zarr\.json")
# chunk indices as zarr writes them: no leading zero (a review found W/c/00/0/0 read as chunk (0, 0, 0), whose
# file at that other path is absent: a healthy run reported corrupt)
_CHUNK = re.compile(rf"({_NAME})/c((?:/(?:0|[1-9][0-9]{{0,11}}))+)")


class KeyNotServed(UserError):
    """A key the pass-through does not serve (malformed, not in the layout, or past the snapshot)."""


@dataclass(frozen=True)
class KeyInfo:
    """A validated key: its kind (``root``, ``array``, ``chunk``), array name and chunk indices."""

    key: str
    kind: str
    array: str | None = None
    chunk: tuple[int, ...] = ()


def parse_key(key: str) -> KeyInfo:
    """Validate ``key`` against the run layout; :class:`KeyNotServed` names what is wrong."""
    if key == METADATA_KEY:
        return KeyInfo(key, "root")
    match = _ARRAY_META.fullmatch(key)
    if match:
        return KeyInfo(key, "array", match.group(1))
    match = _CHUNK.fullmatch(key)
    if match:
        indices = tuple(int(i) for i in match.group(2).strip("/").split("/"))
        return KeyInfo(key, "chunk", match.group(1), indices)
    raise KeyNotServed(
        f"key {key!r} is not part of a run's store: keys are zarr.json, NAME/zarr.json or NAME/c/i/j/..."
    )


def _array_names(root: StoreRoot, run_id: str, group: dict[str, Any]) -> list[str]:
    consolidated = (group.get("consolidated_metadata") or {}).get("metadata")
    if consolidated:
        return sorted(name for name, meta in consolidated.items() if meta.get("node_type") == "array")
    base = root.run_url(run_id) if root.is_local else root.fs._strip_protocol(root.run_url(run_id))
    if not root.is_local:  # the store's listing now, not one fsspec cached before arrays were added
        root.fs.invalidate_cache(base)
    names = []
    for entry in root.fs.ls(base, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if re.fullmatch(_NAME, name):
            names.append(name)
    return sorted(names)


def _trim(meta: dict[str, Any], committed: int) -> dict[str, Any]:
    dims = meta.get("dimension_names") or []
    if meta.get("node_type") == "array" and dims and dims[0] == STEP_DIM:
        meta = dict(meta)
        shape = list(meta["shape"])
        shape[0] = min(int(shape[0]), committed)
        meta["shape"] = shape
    return meta


@dataclass
class Snapshot:
    """The root attributes and the trimmed metadata of every array, as read at one moment."""

    attrs: dict[str, Any]
    arrays: dict[str, dict[str, Any]]

    @property
    def committed(self) -> int:
        return int(self.attrs.get(COMMITTED, 0))

    def document(self) -> dict[str, Any]:
        """The root ``zarr.json`` with inline consolidated metadata (the form zarr-python reads)."""
        return {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": self.attrs,
            "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": self.arrays},
        }


def snapshot(root: StoreRoot, run_id: str) -> Snapshot:
    """Read the root attributes first, then each array's metadata, trimmed to ``committed_steps``.

    Every array is at least ``committed_steps`` long at any moment (created at capacity, shrunk only to
    the committed length, after the final document is written); arrays of differing lengths (a finish
    or resume stopped half-way) all come out cut to ``committed_steps``.
    """
    group = root.read_group_metadata(run_id)  # RunNotFound when absent
    attrs = dict(group.get("attributes", {}))
    try:
        return Snapshot(attrs, array_metadata(root, run_id, int(attrs.get(COMMITTED, 0)), group))
    except (FileNotFoundError, NotADirectoryError):  # the run's folder listed after its deletion
        raise RunNotFound(f"no run {run_id!r} under {root.location}: it was deleted while it was read") from None


def member_names(root: StoreRoot, run_id: str) -> list[str]:
    """The names of the run's arrays, as the snapshot's consolidated metadata lists them: what a reader that lists
    the group (``consolidated=False``) finds as its members."""
    return sorted(name for name in snapshot(root, run_id).arrays if re.fullmatch(_NAME, name))  # (the keys served)


def array_metadata(root: StoreRoot, run_id: str, committed: int,
                   group: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every array's metadata, ``step`` cut to ``committed``: from the group's consolidated metadata when
    ``group`` has it, else each ``NAME/zarr.json`` read now (through the root's safe reads). An entry the run's
    attributes (``group["attributes"]``) do not name is skipped when it is not a readable array inside the
    root; one they name raises ``PathOutsideRoot``, or ``CorruptData`` when its metadata is lost or unreadable
    in a run that stores all it names (:func:`all_chunks_stored`)."""
    group = group or {}
    consolidated = (group.get("consolidated_metadata") or {}).get("metadata") or {}
    own = _named_arrays(group.get("attributes") or {})
    arrays: dict[str, dict[str, Any]] = {}
    for name in _array_names(root, run_id, group):
        meta = consolidated.get(name)
        if meta is None:
            try:
                meta = read_array_metadata(root, run_id, name)
            except KeyError:  # a folder that is not an array (a stray one, an unreadable document): skipped,
                continue  # unless the run names it (below)
            except PathOutsideRoot:
                if name in own:  # one of the run's own arrays leads out of the root: refused, loudly
                    raise
                continue  # a stray link beside the arrays: skipped (fsck reports it), the run stays readable
        if isinstance(meta, dict) and meta.get("node_type") == "array":
            arrays[name] = _trim(meta, committed)
    if not consolidated:  # listed: an array the run names that is unreadable or gone is lost, not absent, in a
        lost = sorted(own - set(arrays))  # run whose writer made every array it names (a plain subset copy,
        if lost and all_chunks_stored(root, run_id):  # ds[["W"]].to_zarr(consolidated=False), names others)
            raise CorruptData(run_id, [CorruptChunk(name, f"{name}/{METADATA_KEY}", missing=True) for name in lost])
    return arrays


def _named_arrays(attrs: dict[str, Any]) -> set[str]:
    """The arrays the run's attributes name (``time_variables``, and the schema's variables)."""
    names = {str(n) for n in attrs.get("time_variables") or [] if isinstance(n, str)}
    schema = attrs.get("schema")
    if isinstance(schema, dict) and isinstance(schema.get("variables"), dict):
        names.update(str(n) for n in schema["variables"])
    return names


def read_array_metadata(root: StoreRoot, run_id: str, name: str) -> dict[str, Any]:
    """The ``NAME/zarr.json`` of an array of the run, read now (through the root's safe reads).

    :class:`KeyError` when there is none, or when it is not an array's metadata (not JSON, not an object,
    another node type): a folder that is not an array is no key of the run.
    :class:`~trajscope.store.errors.PathOutsideRoot` passes through."""
    key = f"{name}/{METADATA_KEY}"
    try:
        meta = json.loads(root.read_bytes(run_id, key))
    except (ValueError, UnicodeDecodeError):
        raise KeyError(key) from None
    if not isinstance(meta, dict) or meta.get("node_type") != "array":
        raise KeyError(key)
    return meta


def snapshot_metadata(root: StoreRoot, run_id: str) -> bytes:
    """The bytes served as ``/zarr/{run_id}/zarr.json``."""
    return json.dumps(snapshot(root, run_id).document(), allow_nan=False).encode()


def _check_inside(root: StoreRoot, run_id: str, key: str) -> None:
    """Local roots: :class:`PathOutsideRoot` when the key's real path leaves the root (a link out of it)."""
    if root.is_local:
        resolve_inside(root.location, os.path.join(root.run_url(run_id), key), f"key {key!r} of run {run_id!r}")


def _chunk_steps(meta: dict[str, Any]) -> int | None:
    grid = meta.get("chunk_grid") or {}
    shape = (grid.get("configuration") or {}).get("chunk_shape")
    return int(shape[0]) if shape else None


def missing_committed_chunk(committed: int, arrays: dict[str, dict], key: str) -> CorruptChunk | None:
    """The :class:`CorruptChunk` (``missing``) ``key`` names if it is a committed chunk of a time-varying array
    (its first state below ``committed``, every index inside the array's chunk grid), else ``None``.

    Only the rule: whether such a chunk may be absent is the run's to say (:func:`all_chunks_stored`;
    :class:`LostChunkCheck` applies both). ``arrays`` are the snapshot's array metadata (``step`` trimmed)."""
    try:
        info = parse_key(key)
    except KeyNotServed:
        return None
    meta = arrays.get(info.array) if info.kind == "chunk" else None
    if meta is None or not info.chunk or (meta.get("dimension_names") or [None])[0] != STEP_DIM:
        return None
    shape = [int(n) for n in meta.get("shape", ())]
    chunk = ((meta.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape") or shape
    if len(info.chunk) != len(shape) or any(i * max(int(c), 1) >= n for i, n, c in
                                            zip(info.chunk[1:], shape[1:], chunk[1:])):
        return None  # not a key of the array's grid (a crawler, a typo): absent, not lost
    steps = max(int(chunk[0]), 1)
    first = info.chunk[0] * steps
    if first >= committed:
        return None
    return CorruptChunk(info.array, key, (first, min(first + steps, committed) - 1), missing=True)


def all_chunks_stored(root: StoreRoot, run_id: str) -> bool:
    """Whether the run's writer stores every committed chunk (:data:`~trajscope.store.layout.ALL_CHUNKS_STORED_KEY`,
    written at creation since that key exists; runs before it, and plain ``ds.to_zarr`` copies, have none)."""
    try:
        return json.loads(root.read_bytes(run_id, ALL_CHUNKS_STORED_KEY)).get("all_chunks_stored") is True
    except (KeyError, ValueError, AttributeError, UserError):
        return False


class LostChunkCheck:
    """Called with a key that was not found: raises if reading it as the fill value would return made-up
    numbers. Costs nothing on the path of a chunk that is found.

    - :class:`~trajscope.store.errors.RunNotFound` when the run is gone, or was replaced by another run of the
      same id (``run_uid``), since ``attrs`` were read (deleted while it was read);
    - :class:`~trajscope.store.errors.CorruptData` when the key is a committed chunk of a time-varying array
      (:func:`missing_committed_chunk`) of a run that stores every such chunk (:func:`all_chunks_stored`):
      removed by hand, lost by the file system;
    - otherwise it returns: the chunk is absent (past the committed steps, outside the grid, or a run that may
      skip all-fill chunks) and zarr's fill value is its value.

    The run's root document is read fresh (never an ``exists`` answered from an fsspec listing cache, which
    on an object store may predate the chunk), and the marker once per check object.
    """

    def __init__(self, root: StoreRoot, run_id: str, attrs: dict[str, Any], arrays: dict[str, dict]):
        self.root, self.run_id, self.arrays = root, run_id, arrays
        self.committed = int(attrs.get(COMMITTED, 0))
        self.uid = attrs.get(RUN_UID)
        self._marker: bool | None = None
        self._same_since = -math.inf  # when the last check that found the same run began (time.monotonic)
        self._stamp: tuple[int, int, int] | None = None  # of the local document the last check read (_same_run)
        self._pending: dict[Any, tuple[float, asyncio.Task]] = {}  # the check under way, per event loop

    def __getstate__(self) -> dict[str, Any]:  # (a dask graph sent to distributed workers pickles it)
        state = dict(self.__dict__)
        state["_pending"] = {}
        state["_same_since"] = -math.inf  # (another machine's clock: checked afresh there)
        state["_stamp"] = None
        return state

    async def found(self, read_done: float, read_document: Callable[[], Awaitable[bytes | None]]) -> None:
        """A chunk was found, its read done at ``read_done`` (``time.monotonic()``): raise
        :class:`~trajscope.store.errors.RunNotFound` if the run was deleted, or replaced by another run of the
        same id, since ``attrs`` were read; its chunks would be the new run's data under the old run's
        attributes (found by a review: a lazy ``open_run`` dataset kept across ``rm`` and ``produce --name``).

        A check that *began* after the read was done covers it: a run's ``run_uid`` never comes back, so the
        old run was still there when its chunk was read. One check (``read_document``: a fresh read of the
        run's root document, awaited, so other reads go on meanwhile) runs at a time; the reads done before it
        began wait for it, those done after it began wait for the next one, so reads done together share one
        check (a first version read the document synchronously, one read a chunk: found by a review). On a
        local root the document is read in place (no await: a local read is cheaper than the hop to a thread
        an awaited one takes)."""
        if self.uid is None:  # (a run from before run_uid: only deletions are seen, by __call__)
            return
        if self.root.is_local:  # a local read of the document (tens of µs) costs less than a hop to a thread
            if self._same_since <= read_done:
                began = time.monotonic()
                self._same_run()
                self._same_since = max(self._same_since, began)
            return
        loop = asyncio.get_running_loop()
        while self._same_since <= read_done:
            pending = self._pending.get(loop)
            if pending is None:
                began = time.monotonic()
                pending = self._pending[loop] = (began, loop.create_task(self._check(read_document, began, loop)))
            await asyncio.shield(pending[1])  # (its RunNotFound is every waiter's)

    async def _check(self, read_document: Callable[[], Awaitable[bytes | None]], began: float, loop: Any) -> None:
        try:
            raw = await read_document()
            try:
                attrs = None if raw is None else (json.loads(raw).get("attributes") or {})
            except (ValueError, AttributeError):
                attrs = None
            if attrs is None or attrs.get(RUN_UID) != self.uid:
                raise RunNotFound(f"no run {self.run_id!r} under {self.root.location}: it was deleted (or replaced) "
                                  "while it was read; open it again")
            self._same_since = max(self._same_since, began)
        finally:
            self._pending.pop(loop, None)

    def __call__(self, key: str) -> None:
        lost = missing_committed_chunk(self.committed, self.arrays, key)
        known = self._marker  # (read once: zarr may call from more than one thread)
        if lost is None or known is False:  # a run without the marker: zarr's fill value, one check per reader
            return
        marker = all_chunks_stored(self.root, self.run_id) if known is None else True
        self._same_run()  # a run deleted meanwhile has no marker either: it is gone, not an older run
        self._marker = marker
        if marker:
            raise CorruptData(self.run_id, [lost])

    def _same_run(self) -> None:
        """The run's document, read now, is still of this run; on a local root a document whose stamp (inode,
        mtime, size) is that of the one this check last found of this run is not read again: every write replaces
        it with a new file (found by a review: reading a run of 500 parameters read and parsed its large document
        once per chunk, 10 s for one quantity)."""
        try:
            stamp = self.root.document_stamp(self.run_id)  # (before the read: a document replaced after it is new)
        except OSError:
            stamp = None  # (gone: the read says so)
        if stamp is not None and stamp == self._stamp:
            return
        try:
            current = self.root.read_attrs(self.run_id)
        except (KeyError, ValueError):  # (RunNotFound is a KeyError)
            current = None
        if current is None or (self.uid is not None and current.get(RUN_UID) != self.uid):
            raise RunNotFound(f"no run {self.run_id!r} under {self.root.location}: it was deleted (or replaced) "
                              "while it was read; open it again")
        self._stamp = stamp


def lost_last_chunks(root: StoreRoot, run_id: str, committed: int, names: list[str]) -> list[CorruptChunk]:
    """The chunks holding the last committed state (index ``committed - 1``) of the arrays ``names`` that are not
    stored, in a run that stores every committed chunk, or fail their checksum: what ``resume`` reads back to go
    on (the last state, the partial chunk it rewrites whole) and would otherwise take as fill values, then store as
    data, or fail on after it had marked the run ``running`` (found by a review: the run's end was erased, and the
    error named neither run nor chunk)."""
    if committed <= 0 or not all_chunks_stored(root, run_id):
        return []
    lost = []
    for name in names:
        try:
            meta = read_array_metadata(root, run_id, name)
        except KeyError:
            lost.append(CorruptChunk(name, f"{name}/{METADATA_KEY}", missing=True))
            continue
        shape = [int(n) for n in meta.get("shape", ())]
        chunk = [max(int(c), 1) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        separator = ((meta.get("chunk_key_encoding") or {}).get("configuration") or {}).get("separator", "/")
        first = (committed - 1) // chunk[0]
        for rest in itertools.product(*(range(-(-n // c)) for n, c in zip(shape[1:], chunk[1:]))):
            key = f"{name}/c{separator}" + separator.join(str(i) for i in (first, *rest))
            steps = (first * chunk[0], min((first + 1) * chunk[0], committed) - 1)
            if not root.has_key(run_id, key):
                lost.append(CorruptChunk(name, key, steps, missing=True))
            elif not chunk_ok(root.read_bytes(run_id, key)):
                lost.append(CorruptChunk(name, key, steps))
    return lost


def read_key(root: StoreRoot, run_id: str, key: str, info: KeyInfo | None = None) -> bytes:
    """The bytes of ``key`` as the pass-through serves them; :class:`KeyError` when there is none.

    ``zarr.json`` is the trimmed snapshot; ``NAME/zarr.json`` the array metadata trimmed to the
    committed length read now; a chunk is served only when its first step is committed.
    """
    info = info or parse_key(key)
    if info.kind == "root":
        return snapshot_metadata(root, run_id)
    _check_inside(root, run_id, key)
    attrs = root.read_attrs(run_id)  # fresh, before the array metadata or the chunk
    committed = int(attrs.get(COMMITTED, 0))
    meta = read_array_metadata(root, run_id, info.array)
    if info.kind == "array":
        return json.dumps(_trim(meta, committed), allow_nan=False).encode()
    dims = meta.get("dimension_names") or []
    if len(info.chunk) != len(meta.get("shape", ())):
        raise KeyNotServed(f"chunk key {key!r} has {len(info.chunk)} indices; array {info.array!r} has "
                           f"{len(meta.get('shape', ()))} dimensions")
    if dims and dims[0] == STEP_DIM:
        steps = _chunk_steps(meta)
        if steps is not None and info.chunk[0] * steps >= committed:
            raise KeyError(key)  # not committed yet: a reader of the snapshot never asks for it
    try:
        return root.read_bytes(run_id, key)
    except (KeyError, FileNotFoundError):  # (a 404 of a lost chunk reads as the fill value in the client's zarr)
        LostChunkCheck(root, run_id, attrs, {info.array: _trim(meta, committed)})(key)
        raise


def inside_root(root: StoreRoot, run_id: str) -> bool:
    """False when a local run's directory resolves (through symlinks) outside the store root."""
    return not root.is_local or is_inside(root.location, root.run_url(run_id))
