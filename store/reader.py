"""Reading runs: :func:`open_run` (a lazy dataset trimmed to the committed steps) and the catalog."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import xarray as xr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import WrapperStore

from trajscope.store.dataset_attrs import NOT_FINITE, encode_attrs, run_attr
from trajscope.store.errors import CorruptChunk, CorruptData, NotARun, RunNotReady, UserError
from trajscope.store.export import drop_chunk_encoding
from trajscope.store.layout import COMMITTED, STEP_DIM, check_format, never_fully_created
from trajscope.store.locks import writer_gone
from trajscope.store.root import StoreRoot, resolve_run
from trajscope.store.chunkio import chunk_ok
from trajscope.store.snapshot import METADATA_KEY, LostChunkCheck, Snapshot, missing_committed_chunk, snapshot


class SnapshotStore(WrapperStore):
    """A run's zarr store whose root ``zarr.json`` is a :class:`~trajscope.store.snapshot.Snapshot`.

    The snapshot carries every array's metadata with ``step`` cut to ``committed_steps`` (consolidated
    inline), so zarr and xarray see one consistent length even while arrays differ on disk: a live run
    (arrays at capacity), a finish killed half-way through shrinking, or a resume killed while regrowing.
    A committed chunk of a time-varying array that is not stored raises
    :class:`~trajscope.store.errors.CorruptData` (or ``RunNotFound``, the run deleted meanwhile) instead of
    reading as the fill value, zarr's rule for an absent chunk, where the run stores every such chunk
    (:class:`~trajscope.store.snapshot.LostChunkCheck`).

    The crc32c of the arrays in ``checked`` (name → their stored metadata; codecs ending with ``crc32c``) is
    verified here, not by zarr: their metadata is served without the ``crc32c`` codec, and each chunk read is
    checked (``stored = payload ‖ le32(crc32c(payload))``) and served as its payload. A chunk that fails raises
    :class:`~trajscope.store.errors.CorruptData` naming it and the states it holds, where zarr's decoder raised a
    bare ``ValueError`` naming none; and the bytes are checksummed once, by the ``crc32c`` package (which
    releases the GIL), not twice.
    """

    def __init__(self, store, document: bytes | None = None, lost: LostChunkCheck | None = None,
                 checked: dict[str, dict] | None = None):
        super().__init__(store)
        self._document = document
        self._lost = lost
        self._checked = checked or {}
        self._served = {f"{name}/{METADATA_KEY}": json.dumps(served_metadata(meta)).encode()
                        for name, meta in self._checked.items()}

    def _with_store(self, store) -> "SnapshotStore":
        return type(self)(store, self._document, self._lost, self._checked)

    async def get(self, key, prototype=None, byte_range=None):
        prototype = prototype or default_buffer_prototype()
        if key == METADATA_KEY and self._document is not None and byte_range is None:
            return prototype.buffer.from_bytes(self._document)
        if key in self._served and byte_range is None:  # (as the consolidated metadata serves it)
            return prototype.buffer.from_bytes(self._served[key])
        checked = self._checked_chunk(key)
        value = await self._store.get(key, prototype, None if checked else byte_range)
        if self._lost is not None:
            if value is None:
                self._lost(key)
            elif key != METADATA_KEY and not key.endswith("/" + METADATA_KEY):  # a chunk: of this very run?
                await self._lost.found(time.monotonic(), self._root_document)
        if value is None or not checked:
            return value
        payload = self._verified(key, value)
        return payload if byte_range is None else _byte_range(payload, byte_range)

    def _checked_chunk(self, key: str) -> bool:
        name, _, rest = key.partition("/")
        return name in self._checked and (rest == "c" or rest.startswith("c/"))

    def _verified(self, key: str, value):
        """The chunk's payload (its last 4 bytes, the checksum, cut off); :class:`CorruptData` naming ``key`` when
        they are not ``le32(crc32c(payload))``."""
        if chunk_ok(memoryview(value.as_numpy_array())):
            return value[: len(value) - 4]
        name = key.partition("/")[0]
        run_id = self._lost.run_id if self._lost is not None else "?"
        lost = missing_committed_chunk(self._lost.committed if self._lost is not None else 0, self._checked, key)
        raise CorruptData(run_id, [CorruptChunk(name, key, lost.steps if lost is not None else None)])

    async def _root_document(self) -> bytes | None:
        """The run's root document as stored now (not the snapshot's)."""
        value = await self._store.get(METADATA_KEY, default_buffer_prototype())
        return None if value is None else value.to_bytes()


def _byte_range(buffer, request):
    """The part of ``buffer`` a zarr byte request asks for."""
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    n = len(buffer)
    if isinstance(request, RangeByteRequest):
        return buffer[request.start: min(request.end, n)]
    if isinstance(request, OffsetByteRequest):
        return buffer[request.offset:]
    if isinstance(request, SuffixByteRequest):
        return buffer[max(n - request.suffix, 0):]
    raise TypeError(f"unknown byte request {request!r}")


def served_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """An array's metadata as :class:`SnapshotStore` serves it: without its last codec, ``crc32c`` (checked
    by the store itself)."""
    return {**meta, "codecs": list(meta.get("codecs") or [])[:-1]}


def stored_compressors(meta: dict[str, Any]) -> tuple:
    """The bytes-to-bytes codecs (zarr objects) of an array's stored metadata: what ``encoding["compressors"]``
    says of a variable zarr itself decodes (``crc32c`` included), so a ``to_zarr`` copy is checksummed too."""
    from zarr.abc.codec import BytesBytesCodec
    from zarr.core.metadata.v3 import ArrayV3Metadata

    return tuple(c for c in ArrayV3Metadata.from_dict(dict(meta)).codecs if isinstance(c, BytesBytesCodec))


def checksummed(arrays: dict[str, dict]) -> dict[str, dict]:
    """The arrays among ``arrays`` (name → metadata) whose crc32c :class:`SnapshotStore` checks: their codec
    pipeline ends with ``crc32c`` and their chunk keys are ``NAME/c/i/j/…`` (the ``default`` encoding with ``/``, as
    the store writes them; a copy with other keys, ``c.0.0`` or v2's, is left to zarr: found by a review)."""
    def default_keys(meta: dict) -> bool:
        encoding = meta.get("chunk_key_encoding") or {"name": "default"}
        separator = (encoding.get("configuration") or {}).get("separator", "/")
        return encoding.get("name") == "default" and separator == "/"

    return {name: meta for name, meta in arrays.items()
            if ((meta.get("codecs") or [{}])[-1] or {}).get("name") == "crc32c" and default_keys(meta)}


def check_openable(root: StoreRoot, run_id: str, attrs: dict[str, Any]) -> None:
    """:class:`~trajscope.store.errors.RunNotReady` for a run whose creation has not completed (being created, or
    its producer died creating it: nothing in it can be read yet), and :class:`NotARun` for someone else's Zarr
    group under the root."""
    if root.is_foreign(run_id, attrs):
        raise NotARun(root.run_url(run_id), "a Zarr group without a run's attributes", reading=True)
    check_format(run_id, attrs)
    if never_fully_created(attrs):  # (one an older trajscope left, without a status: found by a review)
        raise RunNotReady(run_id)


def open_run(
    run: str | os.PathLike,
    root: str | os.PathLike | StoreRoot | None = None,
    *,
    chunks: dict | str | None = None,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Open a run as a lazy :class:`xarray.Dataset`, trimmed to its committed steps.

    Parameters
    ----------
    run
        A run id (looked up under ``root``) or the path/URL of a ``<run_id>.zarr`` group.
    root
        Store root (local directory or fsspec URL); default ``$TRAJSCOPE_ROOT`` or ``./runs``.
    chunks
        Dask chunks; default: the stored chunks (one time chunk per dask block).
    storage_options
        fsspec options of a remote root (``{"endpoint_url": ...}``), as ``xr.open_zarr`` takes them; for a
        ``root`` given as a string or a run's URL (a :class:`StoreRoot` carries its own).

    The root attributes are read first and fresh, then each array's metadata (from the consolidated
    metadata when the run has it), and every time-varying variable is cut to ``committed_steps``
    (:func:`trajscope.store.snapshot.snapshot`): a run being written, or one whose finish or resume was
    killed half-way, is seen as one consistent snapshot. Local roots: nothing outside the root is read.

    The attributes are plain (numbers and strings; nested values as JSON text, see
    :mod:`trajscope.store.dataset_attrs`), so ``ds.to_netcdf()`` and ``ds.to_zarr()`` take the dataset as
    it is; read them decoded with ``ds.traj.attrs``, ``ds.traj.config`` or :func:`run_attr`.
    """
    store_root, run_id = resolve_run(run, root, storage_options)
    snap: Snapshot = snapshot(store_root, run_id)
    attrs = snap.attrs
    check_openable(store_root, run_id, attrs)
    committed = snap.committed
    checked = checksummed(snap.arrays)
    document = snap.document()
    document["consolidated_metadata"]["metadata"] = {name: served_metadata(meta) if name in checked else meta
                                                     for name, meta in snap.arrays.items()}
    store = SnapshotStore(store_root.zarr_store(run_id, read_only=True), json.dumps(document).encode(),
                          LostChunkCheck(store_root, run_id, snap.attrs, snap.arrays), checked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's note that consolidated v3 metadata is not in the spec
        ds = xr.open_zarr(store, consolidated=True, chunks={} if chunks is None else chunks, zarr_format=3)
    for name, meta in checked.items():  # what is stored, not what is served (a to_zarr copy keeps its crc32c)
        if name in ds.variables and "compressors" in ds.variables[name].encoding:
            ds.variables[name].encoding["compressors"] = stored_compressors(meta)
    ds = drop_chunk_encoding(ds.isel({STEP_DIM: slice(0, committed)}))  # so ds.sel(...).to_zarr(...) works
    ds.attrs = encode_attrs({**attrs, "run_id": run_id, "root": store_root.location})
    return ds


@dataclass
class RunInfo:
    """One line of the catalog."""

    run_id: str
    status: str
    committed_steps: int
    capacity: int
    created: str | None
    updated: str | None
    size_bytes: int
    config: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: a run marked ``running`` that no writer holds (its producer was killed): ``resume`` continues it
    writer_gone: bool = False
    #: the states the run is meant to hold (see :func:`planned_states`); None while unknown
    planned_states: int | None = None
    #: the run's labels (``trajscope tag``): sorted tags and a note
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    #: end values that were not finite, as text (``{"final_loss": "nan"}``: a diverged run); JSON stores them null
    not_finite: dict[str, str] = field(default_factory=dict)
    #: the loss at the last committed state, stored when the run ended (None while it runs, or when it records no
    #: loss a state or the loss was not finite: see ``not_finite``)
    final_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-ready)."""
        return asdict(self)


def describe_run(run: str, root: str | os.PathLike | StoreRoot | None = None, *, with_size: bool = True,
                 attrs: dict[str, Any] | None = None) -> RunInfo:
    """Status, progress and config of one run, from its root attributes alone (cheap); ``attrs``: those
    attributes, read by the caller (a listing's cache), else read here."""
    store_root, run_id = resolve_run(run, root)
    if attrs is None:
        attrs = store_root.read_attrs(run_id)
    return RunInfo(
        run_id=run_id,
        status=str(attrs.get("status", "unknown")),
        committed_steps=int(attrs.get(COMMITTED, 0)),
        capacity=int(attrs.get("capacity", 0)),
        created=attrs.get("created"),
        updated=attrs.get("updated"),
        size_bytes=store_root.size_bytes(run_id) if with_size else 0,
        config=run_attr(attrs, "config", {}),
        error=attrs.get("error"),
        writer_gone=attrs.get("status") == "running" and writer_gone(store_root, run_id),
        planned_states=planned_states(attrs),
        tags=[str(t) for t in run_attr(attrs, "tags") or []],
        note=attrs.get("note") or None,
        not_finite={str(k): str(v) for k, v in (run_attr(attrs, NOT_FINITE) or {}).items()},
        final_loss=_number(attrs.get("final_loss")),
    )


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def planned_states(attrs: dict[str, Any]) -> int | None:
    """The states a run is meant to hold: its ``capacity``; for a run created with ``length_known=False`` (its
    capacity is room to grow) only once its end set the capacity to its length, else None."""
    capacity = int(attrs.get("capacity", 0))
    if attrs.get("length_known") is False:  # (its end sets the capacity to what it committed; fsck --repair of a
        ended = attrs.get("status") != "running" and capacity == int(attrs.get("committed_steps", 0))  # killed
        return capacity if ended else None  # one does not: found by a review)
    return capacity or None


def unreadable_run(root: StoreRoot, run_id: str, err: OSError) -> str:
    """What a listing says of a run this process may not read (another user's, mode 700): one line."""
    uid = getattr(os, "getuid", lambda: "?")()
    return (f"run {run_id!r} cannot be read by this user (uid {uid}): {err.strerror or err}; its owner can give read "
            f"access to {root.run_url(run_id)}")


def last_committed_value(root: StoreRoot, run_id: str, name: str, committed: int) -> float | None:
    """The value of the per-step variable ``name`` at the run's last committed state (index ``committed - 1``), read
    from that array's metadata and the one chunk holding it (its checksum checked by zarr's codec): what a listing
    shows of a running run (``ls``'s latest loss) for a few requests, where opening the run reads every array's
    metadata and the step index too (found by a review, on an object store). ``None`` when the run has no such one-dimensional variable
    or no committed state, when that chunk is not stored, or when it cannot be read (``open_run`` says why)."""
    import zarr

    if committed <= 0:
        return None
    try:
        array = zarr.open_array(root.zarr_store(run_id, read_only=True), path=name, mode="r", zarr_format=3)
        if array.ndim != 1 or array.metadata.dimension_names != (STEP_DIM,) or array.shape[0] < committed:
            return None  # (a per-step variable only)
        index = committed - 1
        key = f"{name}/{array.metadata.encode_chunk_key((index // array.chunks[0],))}"
        if not root.has_key(run_id, key):  # (absent: zarr would read the fill value, NaN, for a lost chunk)
            return None
        return float(array[index])
    except Exception:  # noqa: BLE001 - a listing never fails on one run
        return None


def list_runs(root: str | os.PathLike | StoreRoot | None = None, *, with_size: bool = True) -> list[RunInfo]:
    """Every run under ``root``, sorted by id. Runs whose metadata cannot be read (malformed, half-created, another
    user's) are skipped."""
    store_root = root if isinstance(root, StoreRoot) else StoreRoot(root)
    infos = []
    for run_id in store_root.run_ids():
        try:
            infos.append(describe_run(run_id, store_root, with_size=with_size))
        except (KeyError, ValueError, UserError, PermissionError):  # unreadable, or refused (a link out of the root)
            continue
    return infos
