"""The on-disk layout of a run: names, dimensions, dtypes, chunking and codecs.

A run is one Zarr v3 group at ``<root>/<run_id>.zarr``. The store knows no model: the producer
passes the variables (:class:`VariableSpec`: name, dims, dtype, role) and the run's attributes carry
them as a ``schema`` (:mod:`trajscope.store.schema`). Time-varying variables have ``step`` as their
first dimension; the ``step`` variable (int64) is the coordinate of the recorded states.

Chunking (:func:`chunk_plan`): the largest time-varying variable (``W``) has chunks of ``chunk_steps``
states, about ``record.chunk_mib`` each (at least :data:`MIN_LARGE_CHUNK_STEPS` states for states of
1 MiB or more while a chunk stays under :data:`MAX_CHUNK_FILE_BYTES`; a single state above that is also
split along its second dimension). ``chunk_steps`` is the commit unit. Small per-step variables (``v``,
``loss``, ``output``, ``step``, ``t``: a ``chunk_steps`` chunk under :data:`SMALL_CHUNK_BYTES`, 256 KiB)
have longer time chunks, a multiple of ``chunk_steps`` of about :data:`SMALL_CHUNK_BYTES`, so a run holds
a few files of them instead of one per ``W`` chunk (their current chunk is rewritten by every block). Every chunk carries a crc32c checksum; only codecs that plain
zarr-python decodes are used, so ``xr.open_zarr`` reads every layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from trajscope.store.errors import UserError

FORMAT_VERSION = 1
RUN_SUFFIX = ".zarr"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOCK_DIR = ".locks"
#: names of files being written, before their rename over their key (chunk files, the root document)
TEMPORARY_PREFIX = ".tmp-"
STEP_DIM = "step"

#: root attribute holding the number of recorded states a reader may trust
COMMITTED = "committed_steps"
STATUSES = ("running", "complete", "failed", "interrupted")
#: status of a run whose creation has begun but not completed: readers refuse it, ``produce --name`` replaces it
CREATING = "creating"


def check_format(run_id: str, attrs: Mapping[str, Any]) -> None:
    """Raise :class:`UserError` for a run stored in a format newer than :data:`FORMAT_VERSION` (a later trajscope
    wrote it): read or written by this one, it could be misread or damaged. Runs without the attribute are of
    format 1 (found by a review of the store contract: nothing said what a reader does with another version)."""
    version = attrs.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"run {run_id!r} is stored in format {version!r}, which this trajscope (format "
                        f"{FORMAT_VERSION}) does not know: upgrade trajscope to read or resume it")


def never_fully_created(attrs: Mapping[str, Any]) -> bool:
    """Whether ``attrs`` are those of a run whose creation never completed: ``status: creating``, or, as a
    trajscope before that status left a run killed while creating it, no status and no ``time_variables``."""
    status = attrs.get("status")
    return status == CREATING or (status is None and "time_variables" not in attrs)


#: root attribute: a random id given at creation, so a run deleted and created again under the same id (within
#: the one-second resolution of ``created``) is told apart by readers that cache by run
RUN_UID = "run_uid"
#: key of a small object beside a run's arrays, written at creation: its writer stores every chunk of every
#: time-varying array below ``committed_steps``, an all-fill one too, so readers take such a chunk found missing
#: for a loss, not for fill values. An object of its own rather than a root attribute: a plain copy of the
#: run through xarray (``ds.to_zarr``, which stores no file for an all-NaN chunk) copies the attributes but
#: not this, while a copy of the files (``cp -r``, ``aws s3 sync``) keeps it, and is complete.
ALL_CHUNKS_STORED_KEY = ".all_chunks_stored"
#: its content
ALL_CHUNKS_STORED_BODY = b'{"all_chunks_stored": true}\n'
#: key of an empty object a deletion writes into a run before removing its root document, and removes last:
#: a folder a deletion stopped half-way left is recognised by it (or by :data:`ALL_CHUNKS_STORED_KEY`), so no
#: other folder named ``*.zarr`` (a Zarr v2 dataset, a user's files) is ever taken for one and removed
DELETING_KEY = ".trajscope_deleting"


#: what a two-layer run held before its creation marked itself ``creating`` first (commit 9b8c335), ``W`` first
EARLY_RUN_MEMBERS = frozenset({"W", "v", "loss", "output", "step", "t", "X", "y"})
EARLY_RUN_W_DIMS = ["step", "neuron", "feature"]


def is_foreign_group(attrs: Mapping[str, Any], early_run: Callable[[], bool] = lambda: False) -> bool:
    """Whether a Zarr group is someone else's: its root attributes hold none of a run's (``run_id``,
    ``status``, ``time_variables``). A group of no attributes is a run only when ``early_run()`` says it holds
    nothing, or nothing but what an early trajscope made as it began a run (:data:`EARLY_RUN_MEMBERS`, with its
    ``W`` of dims :data:`EARLY_RUN_W_DIMS`); with anything else in it, it is someone's (``xr.Dataset(...)
    .to_zarr`` of a dataset without attributes)."""
    if not attrs:
        return not early_run()
    return not {"run_id", "status", "time_variables"} & attrs.keys()


#: default size of one ``W`` chunk, and the bounds on the time chunk length
TARGET_CHUNK_BYTES = 8 * 2**20
MAX_CHUNK_STEPS = 1024

COMPRESSORS = ("none", "zstd")

#: chunk policy (:func:`chunk_plan`): the largest chunk file, the minimum states per chunk of a large
#: state, the size of a small variable's chunk and the longest time chunk of a small variable
MAX_CHUNK_FILE_BYTES = 64 * 2**20
MIN_LARGE_CHUNK_STEPS = 4
LARGE_STATE_BYTES = 2**20
SMALL_CHUNK_BYTES = 2**18
MAX_SMALL_CHUNK_STEPS = 8192


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


#: a variable's (array's) name: parameter names keep their dots (``fc1.weight``); never ``.``/``..``, a path,
#: a space, or a name zarr reserves (``__x``) or the run's own document (``zarr.json``)
VARIABLE_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"


def is_variable_name(name: str) -> bool:
    """True when ``name`` can be a variable of a run (see :data:`VARIABLE_NAME`)."""
    return (isinstance(name, str) and re.fullmatch(VARIABLE_NAME, name) is not None and not name.startswith("__")
            and name != "zarr.json")


def validate_variable_name(name: str, fix: str = "rename it") -> str:
    """Return ``name`` if a run can store a variable of that name, else raise :class:`UserError` (``fix`` says
    how, in the caller's words)."""
    if not is_variable_name(name):
        raise UserError(f"variable name {name!r} cannot be stored: use 1-128 characters from A-Z a-z 0-9 . _ -, "
                        f"starting with a letter, digit or _ (not __, not zarr.json): {fix}")
    return name


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


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk shapes of a run's time-varying variables and the commit unit ``chunk_steps``."""

    chunk_steps: int
    chunks: dict[str, tuple[int, ...]]


def chunk_plan(step_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], capacity: int,
               target_bytes: int = TARGET_CHUNK_BYTES) -> ChunkPlan:
    """Chunk shapes for time-varying variables with per-step shapes ``step_shapes``.

    With ``B_v`` the bytes of one state of variable ``v`` and ``B = max_v B_v``:

    - ``T = chunk_steps_for(B, target_bytes)``; for a large state (``B >= LARGE_STATE_BYTES``) raised to
      ``min(MIN_LARGE_CHUNK_STEPS, MAX_CHUNK_FILE_BYTES // B)`` when that is larger (larger files);
    - the largest variable, and any with ``T · B_v >= SMALL_CHUNK_BYTES``, has chunks ``(T, *shape)``; if
      one state is above
      ``MAX_CHUNK_FILE_BYTES`` its second dimension is split into ``max(1, MAX_CHUNK_FILE_BYTES // (T · row))``
      rows per chunk (``row`` = bytes of one index of that dimension; reached only with ``target_bytes`` above
      ``MAX_CHUNK_FILE_BYTES``: below it such a state has ``T = 1`` and is split to the target, next rule);
    - when ``T = 1`` and one state is above ``target_bytes``, :func:`chunk_shape_for` splits it;
    - a smaller variable has chunks ``(k T, *shape)`` with
      ``k = clip(SMALL_CHUNK_BYTES // (T · B_v), 1, MAX_SMALL_CHUNK_STEPS // T)``, and ``k T`` at most
      ``ceil(capacity / T) · T``.
    """
    sizes = {n: int(np.prod(s, dtype=np.int64)) * np.dtype(dtypes[n]).itemsize for n, s in step_shapes.items()}
    largest = max(sizes.values(), default=1)
    steps = chunk_steps_for(largest, target_bytes)
    if largest >= LARGE_STATE_BYTES:  # a large state: fewer, larger files
        steps = max(steps, min(MIN_LARGE_CHUNK_STEPS, MAX_CHUNK_FILE_BYTES // largest))
    whole = -(-max(int(capacity), 1) // steps) * steps
    chunks = {}
    for name, shape in step_shapes.items():
        shape = tuple(int(d) for d in shape)
        if steps * sizes[name] >= SMALL_CHUNK_BYTES or sizes[name] == largest:
            if steps == 1 and sizes[name] > target_bytes:  # one state above the target: split its own dims
                chunks[name] = chunk_shape_for(shape, np.dtype(dtypes[name]).itemsize, 1, target_bytes)
                continue
            if sizes[name] > MAX_CHUNK_FILE_BYTES and shape:
                row = max(sizes[name] // max(shape[0], 1), 1)
                shape = (max(1, min(shape[0], MAX_CHUNK_FILE_BYTES // (steps * row))),) + shape[1:]
            chunks[name] = (steps,) + shape
        else:
            k = int(np.clip(SMALL_CHUNK_BYTES // max(steps * sizes[name], 1), 1, max(MAX_SMALL_CHUNK_STEPS // steps, 1)))
            chunks[name] = (min(k * steps, whole),) + shape
    return ChunkPlan(steps, {n: tuple(max(int(c), 1) for c in ch) for n, ch in chunks.items()})


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
