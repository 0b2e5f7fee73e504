"""The on-disk layout of a run: names, dimensions, dtypes, chunking and codecs.

A run is one Zarr v3 group at ``<root>/<run_id>.zarr`` holding

=========  ==========================  ========  ==============================================
name       dims                        dtype     meaning
=========  ==========================  ========  ==============================================
``W``      (step, neuron, feature)     float32   first-layer weights, row = neuron
``v``      (step, neuron)              float32   second-layer weights
``loss``   (step,)                     float64   loss at the recorded state
``output`` (step, sample)              float32   network outputs ``f(x_i)`` at the recorded state
``X``      (sample, feature)           float32   training inputs as used (after preprocessing)
``y``      (sample,)                   int8      labels ±1
``step``   (step,)                     int64     coordinate: optimizer step (0 = init)
``t``      (step,)                     float64   coordinate: gradient-flow time ``step * lr``
=========  ==========================  ========  ==============================================

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
    """One variable of a run: its dims (the first is ``step`` when it varies in time) and dtype."""

    name: str
    dims: tuple[str, ...]
    dtype: str

    @property
    def time_varying(self) -> bool:
        """True when the first dimension is ``step``."""
        return bool(self.dims) and self.dims[0] == STEP_DIM


def two_layer_variables(float_dtype: str = "float32") -> dict[str, VariableSpec]:
    """The variables of a two-layer run, keyed by name (``float_dtype`` applies to the weights)."""
    specs = [
        VariableSpec("W", (STEP_DIM, "neuron", "feature"), float_dtype),
        VariableSpec("v", (STEP_DIM, "neuron"), float_dtype),
        VariableSpec("loss", (STEP_DIM,), "float64"),
        VariableSpec("output", (STEP_DIM, "sample"), float_dtype),
        VariableSpec("step", (STEP_DIM,), "int64"),
        VariableSpec("t", (STEP_DIM,), "float64"),
        VariableSpec("X", ("sample", "feature"), float_dtype),
        VariableSpec("y", ("sample",), "int8"),
    ]
    return {spec.name: spec for spec in specs}


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
