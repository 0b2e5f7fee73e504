"""Stored-data corruption: recognising a failed chunk checksum and naming the chunks that fail it.

Every chunk of a run ends with a crc32c checksum of the bytes before it (see
:func:`trajscope.store.layout.codecs_for`): ``stored = payload ‖ le32(crc32c(payload))``. Zarr's
decoder raises a bare ``ValueError`` when ``crc32c(payload)`` differs from the stored value, without
saying which chunk. This module turns that into :class:`CorruptData`, which names the run, the
variables and the chunk keys, by re-checking the raw chunks of the committed snapshot.

Only this package knows the codecs, so the API and the CLI ask here instead of parsing messages.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Iterable

from trajscope.store.chunkio import chunk_ok
from trajscope.store.errors import CorruptChunk, CorruptData
from trajscope.store.root import StoreRoot
from trajscope.store.snapshot import all_chunks_stored, missing_committed_chunk, snapshot

#: the text zarr's crc32c codec puts in the ValueError it raises on a mismatch
_MISMATCH = "checksum do not match"


def is_checksum_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is zarr's crc32c mismatch."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, CorruptData) or (isinstance(exc, ValueError) and _MISMATCH in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _chunk_grid(meta: dict) -> tuple[list[int], list[int]]:
    shape = [int(n) for n in meta.get("shape", [])]
    chunk = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape") or shape
    return shape, [max(int(c), 1) for c in chunk]


def _keys(name: str, meta: dict) -> Iterable[tuple[str, tuple[int, int] | None]]:
    shape, chunk = _chunk_grid(meta)
    encoding = (meta.get("chunk_key_encoding") or {}).get("configuration", {})
    sep = encoding.get("separator", "/")
    stepwise = bool(meta.get("dimension_names")) and meta["dimension_names"][0] == "step"
    counts = [math.ceil(n / c) for n, c in zip(shape, chunk)]
    for index in itertools.product(*(range(c) for c in counts)):
        key = f"{name}/c" + (sep + sep.join(map(str, index)) if index else "")
        steps = None
        if stepwise and index:
            steps = (index[0] * chunk[0], min((index[0] + 1) * chunk[0], shape[0]) - 1)
        yield key, steps


def find_corrupt_chunks(root: StoreRoot, run_id: str, variables: Iterable[str] | None = None,
                        *, limit: int = 8) -> list[CorruptChunk]:
    """The committed chunks of ``run_id`` whose checksum fails (at most ``limit``).

    ``variables`` narrows the search (the named ones are checked first, then no others); ``None``
    checks every array. A committed chunk that is not stored counts too where the run stores every chunk
    (:func:`~trajscope.store.snapshot.all_chunks_stored`).
    Reads every committed chunk it checks: cost is one pass over those bytes.
    """
    snap = snapshot(root, run_id)
    names = list(snap.arrays) if variables is None else [v for v in variables if v in snap.arrays]
    found: list[CorruptChunk] = []
    complete = all_chunks_stored(root, run_id)
    for name in names:
        meta = snap.arrays[name]
        if "crc32c" not in json.dumps(meta.get("codecs", [])):
            continue
        for key, steps in _keys(name, meta):
            try:
                stored = root.read_bytes(run_id, key)
            except (KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
                lost = missing_committed_chunk(snap.committed, snap.arrays, key) if complete else None
                if lost is not None:
                    found.append(lost)
                    if len(found) >= limit:
                        return found
                continue
            if not chunk_ok(stored):
                found.append(CorruptChunk(name, key, steps))
                if len(found) >= limit:
                    return found
    return found


def corrupt_data(root: StoreRoot, run_id: str, variables: Iterable[str] | None = None) -> CorruptData:
    """A :class:`CorruptData` naming the failing chunks: ``variables`` first, then every array."""
    chunks = find_corrupt_chunks(root, run_id, variables) if variables is not None else []
    if not chunks:
        chunks = find_corrupt_chunks(root, run_id)
    return CorruptData(run_id, chunks)


__all__ = ["CorruptChunk", "CorruptData", "chunk_ok", "corrupt_data", "find_corrupt_chunks", "is_checksum_error"]
