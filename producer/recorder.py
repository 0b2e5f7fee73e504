"""The recording pipeline: chunk buffers → bounded hand-off → writer thread → store.

The training loop calls :meth:`Recorder.record` once per recorded state. The state is copied into the
current chunk buffer (device memory on a GPU, so no host sync per step). A full buffer is handed to the
writer thread — on a GPU after an asynchronous copy into pinned host memory on a side stream — and the
loop continues in the next free buffer. There are ``buffers`` of them; when none is free the loop waits
(back-pressure), so nothing is ever dropped and memory stays bounded. The writer thread writes each
chunk through :class:`~trajscope.store.RunWriter` and then commits it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from trajscope.store import RunWriter
from trajscope.store.locks import HEARTBEAT_SECONDS


@dataclass
class _Slot:
    device: dict[str, torch.Tensor]
    host: dict[str, torch.Tensor]
    event: object | None = None
    start: int = 0
    count: int = 0


class HostStaging:
    """CPU training: the chunk buffer is host memory already; nothing to copy or wait for."""

    def host_buffers(self, device: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], object | None]:
        """Host buffers the writer reads (here: the buffers themselves) and a completion handle."""
        return device, None

    def start_copy(self, slot: _Slot) -> None:
        """Begin moving a full buffer to the host (no-op)."""

    def wait(self, slot: _Slot) -> None:
        """Block (writer thread) until the copy of ``slot`` is complete (no-op)."""


class CudaStaging(HostStaging):
    """GPU training: pinned host buffers filled by asynchronous copies on a side stream.

    The copy stream first waits for the compute stream (the buffer's last writes), copies with
    ``non_blocking=True`` and records an event; the writer thread waits on that event, so the training
    loop never synchronizes with the host.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def host_buffers(self, device):
        host = {n: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for n, t in device.items()}
        return host, torch.cuda.Event()

    def start_copy(self, slot):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for name, tensor in slot.device.items():
                slot.host[name].copy_(tensor, non_blocking=True)
            slot.event.record(self.stream)

    def wait(self, slot):
        slot.event.synchronize()


class Recorder:
    """Records states into whole time chunks of a run.

    Parameters
    ----------
    writer
        The run's writer (its ``chunk_steps`` sets the buffer length).
    shapes, dtypes
        Per-step shape and torch dtype of every time-varying variable.
    device
        Where the training tensors live.
    start_index
        First recorded index to write (``committed_steps`` when resuming).
    columns
        Time-varying variables known in advance (e.g. ``step`` and ``t`` from the recording schedule),
        as full arrays indexed by recorded index: the writer takes their slices, the loop copies nothing.
    preload
        When resuming inside a chunk: the committed rows ``chunk_start:start_index`` of that chunk, so
        the chunk is rewritten whole.
    buffers
        Number of chunk buffers (≥ 2): the bound on memory and on work queued for the writer.
    staging
        How full buffers reach host memory: :class:`CudaStaging` on a GPU, :class:`HostStaging` on the
        CPU (default: chosen from ``device``).
    """

    def __init__(
        self,
        writer: RunWriter,
        shapes: Mapping[str, tuple[int, ...]],
        dtypes: Mapping[str, torch.dtype],
        device: torch.device,
        *,
        start_index: int = 0,
        columns: Mapping[str, np.ndarray] | None = None,
        preload: Mapping[str, np.ndarray] | None = None,
        buffers: int = 3,
        staging: HostStaging | None = None,
    ):
        self.writer = writer
        self.chunk = writer.chunk_steps
        self.device = device
        self.staging = staging or (CudaStaging(device) if device.type == "cuda" else HostStaging())
        self.committed = start_index
        self.index = start_index
        self.columns = dict(columns or {})
        self._slots = [self._make_slot(shapes, dtypes) for _ in range(buffers)]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(buffers):
            self._free.put(i)
        self._filled: queue.Queue[int | None] = queue.Queue()
        self._current: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name="trajscope-writer", daemon=True)
        self._thread.start()
        if preload is not None and start_index % self.chunk:
            slot = self._slots[self._begin_chunk()]
            for name, rows in preload.items():
                if name in self.columns:
                    continue
                slot.device[name][: len(rows)].copy_(torch.from_numpy(np.asarray(rows)))

    def _make_slot(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype]) -> _Slot:
        device = {n: torch.empty((self.chunk, *s), dtype=dtypes[n], device=self.device) for n, s in shapes.items()}
        host, event = self.staging.host_buffers(device)
        return _Slot(device=device, host=host, event=event)

    # -- training-thread side -----------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the writer thread failed: {self._error}") from self._error

    def _begin_chunk(self) -> int:
        while True:  # back-pressure: wait for a free buffer, but notice a dead writer
            self._raise_if_failed()
            try:
                slot_index = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        slot = self._slots[slot_index]
        slot.start = (self.index // self.chunk) * self.chunk
        self._current = slot_index
        return slot_index

    def record(self, **values: torch.Tensor | float | int) -> None:
        """Copy one state (every time-varying variable) into the current chunk buffer."""
        if self._current is None:
            self._begin_chunk()
        slot = self._slots[self._current]
        position = self.index - slot.start
        for name, value in values.items():
            slot.device[name][position] = value
        self.index += 1
        if position + 1 == self.chunk:
            self._hand_off(self.chunk)

    def _hand_off(self, count: int) -> None:
        slot = self._slots[self._current]
        slot.count = count
        self.staging.start_copy(slot)
        self._filled.put(self._current)
        self._current = None

    def close(self) -> int:
        """Flush the partial chunk, wait for the writer thread, return ``committed_steps``."""
        if self._current is not None:
            slot = self._slots[self._current]
            count = self.index - slot.start
            if count > 0:
                self._hand_off(count)
            else:
                self._free.put(self._current)
                self._current = None
        self._filled.put(None)
        self._thread.join()
        self._raise_if_failed()
        return self.committed

    # -- writer-thread side -------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            try:
                item = self._filled.get(timeout=HEARTBEAT_SECONDS / 2)
            except queue.Empty:
                if self._error is None and self.writer.heartbeat_due():
                    self._guard(lambda: self.writer.commit(self.committed))
                continue
            if item is None:
                return
            if self._error is None:
                self._guard(lambda: self._write_slot(self._slots[item]))
            self._free.put(item)

    def _guard(self, action) -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - reported to the training thread
            self._error = exc

    def _write_slot(self, slot: _Slot) -> None:
        self.staging.wait(slot)
        values = {name: tensor[: slot.count].numpy() for name, tensor in slot.host.items()}
        values.update({name: column[slot.start : slot.start + slot.count] for name, column in self.columns.items()})
        self.writer.write_block(slot.start, values)
        self.committed = slot.start + slot.count
        self.writer.commit(self.committed)
