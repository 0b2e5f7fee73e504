"""Writing a run: create the group, write whole time chunks, commit, finish, reopen for resume.

Commit protocol (DESIGN §3): the data of a chunk is written first (each chunk object replaced
atomically), then one write of the root attributes raises ``committed_steps``. Arrays are created at
their full capacity up front, so no array metadata changes while the run is written; a reader trims
every variable to ``committed_steps``. When the run ends the arrays are shrunk to the committed length
and the metadata is consolidated.
"""

from __future__ import annotations

import datetime as _dt
import platform
import threading
import time
import warnings
from importlib import metadata as _metadata
from typing import Any, Mapping

import numpy as np
import zarr

from trajscope.store.errors import UserError
from trajscope.store.layout import (
    COMMITTED,
    COORDINATES,
    FORMAT_VERSION,
    STATUSES,
    VariableSpec,
    chunk_shape_for,
    chunk_steps_for,
    codecs_for,
    fill_value_for,
)
from trajscope.store.locks import HEARTBEAT_SECONDS, WriterLock
from trajscope.store.root import StoreRoot


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

    All methods are called from one thread (the recorder's writer thread) except :meth:`finish`,
    which the owner calls after that thread has stopped.
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
        self._last_write = time.monotonic()

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
    ) -> "RunWriter":
        """Create a new run with room for ``capacity`` recorded states and write its static arrays.

        ``sizes`` gives the length of every non-step dimension; ``static`` the values of the variables
        without a ``step`` dimension. Refuses to overwrite an existing run.
        """
        if root.exists(run_id):
            raise UserError(
                f"run {run_id!r} already exists under {root.location}: choose another --name, "
                f"or continue it with `trajscope resume {run_id}`"
            )
        lock = WriterLock(root, run_id).acquire()
        try:
            serializer, compressors = codecs_for(compressor)
            step_bytes = max(
                int(np.prod([sizes[d] for d in spec.dims[1:]], dtype=np.int64)) * np.dtype(spec.dtype).itemsize
                for spec in variables.values()
                if spec.time_varying
            )
            target = {"target_bytes": chunk_bytes} if chunk_bytes else {}
            chunk_steps = chunk_steps_for(step_bytes, **target)
            group = zarr.open_group(root.zarr_store(run_id), mode="w-", zarr_format=3)
            time_variables = []
            for spec in variables.values():
                shape = tuple(capacity if d == spec.dims[0] and spec.time_varying else sizes[d] for d in spec.dims)
                if spec.time_varying:
                    chunks = chunk_shape_for(shape[1:], np.dtype(spec.dtype).itemsize, chunk_steps, **target)
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
                )
                if not spec.time_varying:
                    array[...] = np.asarray(static[spec.name], dtype=spec.dtype)
            full_attrs = {
                "format_version": FORMAT_VERSION,
                "run_id": run_id,
                **dict(attrs),
                "versions": library_versions(),
                "created": _now(),
                "updated": _now(),
                "status": "running",
                COMMITTED: 0,
                "capacity": int(capacity),
                "chunk_steps": int(chunk_steps),
                "compressor": compressor,
                "time_variables": time_variables,
                "error": None,
                "writer": lock.lease(),
            }
            root.write_attrs(run_id, full_attrs)
        except BaseException:
            lock.release()
            raise
        return cls(root, run_id, lock, full_attrs)

    @classmethod
    def reopen(cls, root: StoreRoot, run_id: str) -> "RunWriter":
        """Reopen an unfinished run (``running`` after a crash, ``interrupted`` or ``failed``) to resume it."""
        lock = WriterLock(root, run_id).acquire()
        try:
            attrs = root.read_attrs(run_id)
            if attrs.get("status") == "complete":
                raise UserError(f"run {run_id!r} is complete; nothing to resume")
            attrs["status"] = "running"
            attrs["error"] = None
            attrs["writer"] = lock.lease()
            attrs["updated"] = _now()
            root.write_attrs(run_id, attrs)  # drops stale consolidated metadata first
            writer = cls(root, run_id, lock, attrs)
            for array in writer.arrays.values():
                if array.shape[0] != writer.capacity:
                    array.resize((writer.capacity,) + array.shape[1:])
        except BaseException:
            lock.release()
            raise
        return writer

    # -- growth (runs of unknown length) ---------------------------------------------------------------
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
        for array in self.arrays.values():
            array.resize((capacity,) + array.shape[1:])
        with self._attrs_guard:
            self.capacity = capacity
            self.attrs["capacity"] = capacity
            self.attrs["updated"] = _now()
            self.attrs["writer"] = self.lock.lease()
            self.root.write_attrs(self.run_id, self.attrs)
            self._last_write = time.monotonic()

    # -- reading back (resume) ----------------------------------------------------------------------
    @property
    def committed_steps(self) -> int:
        """Recorded states a reader may trust."""
        return int(self.attrs[COMMITTED])

    def read_states(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Values of every time-varying variable for recorded indices ``start:stop``."""
        return {name: array[start:stop] for name, array in self.arrays.items()}

    # -- writing ------------------------------------------------------------------------------------
    def write_block(self, start: int, values: Mapping[str, np.ndarray]) -> None:
        """Write recorded indices ``start : start + len`` of every time-varying variable.

        ``start`` must be a chunk boundary; the block is a whole chunk except at the final flush.
        """
        count = len(next(iter(values.values())))
        if start % self.chunk_steps or count > self.chunk_steps:
            raise ValueError(f"block {start}+{count} is not within one chunk of {self.chunk_steps}")
        if start + count > self.capacity:
            raise ValueError(f"block {start}+{count} exceeds the run's capacity {self.capacity}")
        for name in self.arrays:
            self.arrays[name][start : start + count] = values[name]

    def commit(self, committed_steps: int, **extra: Any) -> None:
        """Raise ``committed_steps`` (after the data is written) in one write of the root attributes."""
        with self._attrs_guard:
            self.attrs[COMMITTED] = int(committed_steps)
            self.attrs.update(extra)
            self.attrs["updated"] = _now()
            self.attrs["writer"] = self.lock.lease()
            self.root.write_attrs(self.run_id, self.attrs)
            self._last_write = time.monotonic()

    def heartbeat_due(self) -> bool:
        """True when the lease should be refreshed (no commit for :data:`HEARTBEAT_SECONDS`)."""
        return time.monotonic() - self._last_write > HEARTBEAT_SECONDS

    def finish(self, status: str, error: str | None = None, **extra: Any) -> None:
        """End the run: shrink arrays to the committed length, set the status, consolidate, unlock."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"cannot finish with status {status!r}")
        try:
            committed = self.committed_steps
            for array in self.arrays.values():
                if array.shape[0] != committed:
                    array.resize((committed,) + array.shape[1:])
            with self._attrs_guard:
                self.attrs.update(extra)
                self.attrs.update(status=status, error=error, updated=_now(), finished=_now())
                self.attrs.pop("writer", None)
                self.root.write_attrs(self.run_id, self.attrs)
            with warnings.catch_warnings():  # consolidated v3 metadata: zarr-python reads it fine
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(self.root.zarr_store(self.run_id))
        finally:
            self.lock.release()
