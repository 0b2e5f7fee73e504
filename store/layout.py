"""The on-disk layout of a run: names, dimensions, dtypes, chunking and codecs.

A run is one Zarr v3 group at ``<root>/<run_id>.zarr``. The store knows no model: the producer
passes the variables (:class:`VariableSpec`: name, dims, dtype, role) and the run's attributes carry
them as a ``schema`` (:mod:`trajscope.store.schema`). Time-varying variables have ``step`` as their
first dimension; the ``step`` variable (int64) is the coordinate of the recorded states.

Every time-varying array shares one time chunk length (:func:`chunk_steps_for`); every chunk carries
a crc32c checksum; only codecs that plain zarr-python decodes are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from trajscope.store.errors import UserError

FORMAT_VERSION = 1
RUN_SUFFIX = ".zarr"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOCK_DIR = ".locks"
STEP_DIM = "step"

#: root attribute holding the number of recorded states a reader may trust
COMMITTED = "committed_steps"
STATUSES = ("running", "complete", "failed", "interrupted")
#: status of a run whose creation has begun but not completed: readers refuse it, ``produce --name`` replaces it
CREATING = "creating"

#: default size of one ``W`` chunk, and the bounds on the time chunk length
TARGET_CHUNK_BYTES = 8 * 2**20
MAX_CHUNK_STEPS = 1024

COMPRESSORS = ("none", "zstd")


@dataclass(frozen=True)
class VariableSpec:
    """One variable of a run: its dims (the first is ``step`` when it varies in time), dtype and role.

    ``role`` is one of :data:`trajscope.store.schema.ROLES` (``parameter``, ``scalar``, ``output``,
    ``data``, ...); the store only records it in the run's schema, it never interprets it.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str
    role: str = ""

    @property
    def time_varying(self) -> bool:
        """True when the first dimension is ``step``."""
        return bool(self.dims) and self.dims[0] == STEP_DIM


#: non-dimension coordinates, listed in each time-varying variable's ``coordinates`` attribute
COORDINATES = ("t",)


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a legal run id, else raise :class:`UserError`."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or run_id.endswith(RUN_SUFFIX):
        raise UserError(
            f"invalid run id {run_id!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a "
            "letter or digit, without the .zarr suffix"
        )
    return run_id


def chunk_steps_for(bytes_per_step: int, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """Time chunk length so one chunk of the largest variable is about ``target_bytes``.

    ``T = clip(target_bytes // bytes_per_step, 1, MAX_CHUNK_STEPS)``.
    """
    return int(np.clip(target_bytes // max(int(bytes_per_step), 1), 1, MAX_CHUNK_STEPS))


def chunk_shape_for(step_shape: tuple[int, ...], itemsize: int, chunk_steps: int,
                    target_bytes: int = TARGET_CHUNK_BYTES) -> tuple[int, ...]:
    """Chunk shape ``(T, ...)`` of a time-varying array whose one state has shape ``step_shape``.

    A state that fits in ``target_bytes`` is one chunk along its own dims: ``(T, *step_shape)``.
    A larger state (``T = 1`` then) is split along its leading dims, each chunk holding at most
    ``target_bytes``: the first dim ``d0`` is cut into blocks of ``max(1, target // bytes(one row))``
    rows; when a single row is still too large the next dim is cut the same way, and so on.
    """
    shape = [max(int(d), 1) for d in step_shape]
    chunks = list(shape)
    budget = max(int(target_bytes), 1)
    for axis in range(len(shape)):
        row_bytes = int(np.prod(chunks[axis + 1:], dtype=np.int64)) * itemsize
        if chunks[axis] * row_bytes <= budget:
            break
        chunks[axis] = max(1, budget // max(row_bytes, 1))
        if chunks[axis] > 1 or row_bytes <= budget:
            break
    return (max(int(chunk_steps), 1), *chunks)


def codecs_for(compressor: str) -> tuple[object, tuple[object, ...]]:
    """Zarr v3 serializer and bytes-to-bytes codecs: raw little-endian bytes, optional zstd, crc32c last.

    The checksum is computed over the stored (possibly compressed) bytes, so any corruption of a chunk
    on disk or in transit is detected before decoding.
    """
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

    if compressor not in COMPRESSORS:
        raise UserError(f"unknown compressor {compressor!r}: use one of {', '.join(COMPRESSORS)}")
    compressors: tuple[object, ...] = (Crc32cCodec(),)
    if compressor == "zstd":
        compressors = (ZstdCodec(level=1), Crc32cCodec())
    return BytesCodec(), compressors


def fill_value_for(dtype: str) -> object:
    """NaN for floats (unwritten steps are visibly missing), 0 for integers."""
    return float("nan") if np.dtype(dtype).kind == "f" else 0
