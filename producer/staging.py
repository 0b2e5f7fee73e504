"""How a recorder's chunk buffers reach host memory, and how many there are.

A :class:`Slot` is one chunk buffer (device and host tensors, or by reference the kept states); a staging
moves a full one to host memory: :class:`HostStaging` on the CPU (nothing to move), :class:`CudaStaging` on a GPU
(pinned buffers filled by asynchronous copies on a side stream). :func:`copy_carrier` picks the dtype a GPU
copies a whole state in with one launch; :func:`default_buffers` how many buffers keep the write threads busy.
Used by :class:`trajscope.producer.recorder.Recorder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

#: dtypes that can carry other variables' bytes in a GPU's one copy per state (:func:`copy_carrier`): torch's
#: multi-tensor copy moves their bits unchanged. Not float16/bfloat16 (it computes in float32: a round trip that
#: may change a NaN's payload) nor bool (it would make every nonzero byte a 1)
COPY_CARRIERS = (torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)

#: how a variable goes into the carrier dtype's copy (:func:`copy_carrier`)
AS_IS, VIEWED = "as is", "viewed"

#: fewest chunk buffers a recorder keeps (:func:`default_buffers`)
MIN_BUFFERS = 3


def default_buffers(write_threads: int, block_threads: int = 1) -> int:
    """Chunk buffers when none are asked for: enough blocks in flight for every write thread, plus the one
    being filled, ``max(MIN_BUFFERS, ceil(write_threads / block_threads) + 1)``.

    One buffer is being filled while the others' chunks are copied or written, so at most ``buffers - 1``
    blocks are in flight, each keeping ``block_threads`` write threads busy
    (:func:`~trajscope.store.hotpath.block_threads`: 1 for the reference run's one ``W`` file a block;
    more when a large state is split into several files, or for a module's parameters whose files together
    are at least twice its largest).
    With fewer busy threads in flight than write threads, threads sit idle while the loop waits for a
    free buffer: 3 buffers left 2 of the 4 threads of an fsspec root, or of a local root on 4 cores or
    more, idle, when a block is one file. By reference a buffer is the states of a chunk, kept alive;
    otherwise a chunk of host (on a GPU, pinned) and device memory, which is why a block that keeps several
    threads busy gets no more buffers than it needs.
    """
    return max(MIN_BUFFERS, -(-int(write_threads) // max(int(block_threads), 1)) + 1)


def copy_carrier(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype]
                 ) -> tuple[torch.dtype | None, dict[str, str]]:
    """The dtype a GPU's :meth:`Recorder.record` copies a state in with one launch, and how each variable goes in.

    ``torch._foreach_copy_`` copies a list of tensors of one dtype in one call (one kernel launch for a few
    tensors; torch splits very long lists or very many elements into several). The carrier is the dtype
    of the variable with the most bytes a state, if that copy moves its bits unchanged (:data:`COPY_CARRIERS`).
    A variable of the carrier dtype goes in as it is (``"as is"``); one whose item size is a multiple of the
    carrier's is viewed as the carrier on both sides of the copy (``"viewed"``: ``x.reshape(-1).view(carrier)``,
    e.g. a float64 loss as two float32 beside float32 weights): the same bytes, so the same bits, and one
    launch a state instead of one per dtype. A variable not in the returned mapping (narrower than the
    carrier, e.g. float16 beside float32) is copied in a launch of its own dtype.

    Returns ``(None, {})`` when the largest variable's dtype cannot carry (then every dtype has its launch).
    A CPU recorder takes torch rows too when a variable has a dtype numpy lacks (bfloat16): there nothing is
    launched, and the carrier's two views cost about 1 µs a state (BENCHMARKS.md, "Record call").
    """
    if not shapes:
        return None, {}
    largest = max(shapes, key=lambda n: math.prod(shapes[n]) * dtypes[n].itemsize)
    carrier = dtypes[largest]
    if carrier not in COPY_CARRIERS:
        return None, {}
    carried = {}
    for name in shapes:
        if dtypes[name] is carrier:
            carried[name] = AS_IS
        elif dtypes[name].itemsize % carrier.itemsize == 0:
            carried[name] = VIEWED
    return carrier, carried


@dataclass
class Slot:
    """One chunk buffer of a recorder: its device and host tensors (the same ones on the CPU), the staging's
    completion handle, the chunk it holds (``start``, ``count``), and by reference the states it keeps."""

    device: dict[str, torch.Tensor]
    host: dict[str, torch.Tensor]
    event: object | None = None
    start: int = 0
    count: int = 0
    rows: list[dict[str, torch.Tensor]] | None = None  # per position: a view of each variable's row (or None,
    #                                                     see MAX_KEPT_ROW_VIEWS: made by Recorder._rows_at)
    arrays: dict[str, np.ndarray] | None = None  # the CPU's buffers as numpy arrays (their rows copied by memcpy)
    refs: list[dict[str, torch.Tensor | np.ndarray] | None] | None = None  # by reference: each position's values
    exact: bool = True  # by reference: every value kept is a CPU tensor of its variable's shape and dtype
    shared: dict[str, np.ndarray] | None = None  # a writer process behind a staging (a GPU): the slot's shared buffers
    copied_at: float = 0.0  # perf_counter() when its chunk was seen in host memory (on the CPU: its hand-off;
    #                         with loop_submits: when it was handed to the store, which may be a chunk later)


class HostStaging:
    """CPU training: the chunk buffer is host memory already; nothing to copy or wait for."""

    def host_buffers(self, device: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], object | None]:
        """Host buffers the writer reads (here: the buffers themselves) and a completion handle."""
        return device, None

    def start_copy(self, slot: Slot) -> None:
        """Begin moving a full buffer to the host (no-op)."""

    def wait(self, slot: Slot) -> None:
        """Block (writer thread) until the copy of ``slot`` is complete (no-op)."""

    def ready(self, slot: Slot) -> bool:
        """Whether the copy of ``slot`` is complete, without waiting for it (here: always)."""
        return True


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
        # blocking: the writer thread's wait sleeps instead of spinning a core (CUDA's default for an event
        # synchronize) while the loop runs ahead by up to ``buffers`` chunks
        return host, torch.cuda.Event(blocking=True)

    def start_copy(self, slot):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for name, tensor in slot.device.items():
                slot.host[name].copy_(tensor, non_blocking=True)
            slot.event.record(self.stream)

    def wait(self, slot):
        slot.event.synchronize()

    def ready(self, slot):
        return slot.event.query()  # (cudaEventQuery: no host sync)
