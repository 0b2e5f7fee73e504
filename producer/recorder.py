"""The recording pipeline: chunk buffers → bounded hand-off → store's write pool (→ commits by a writer thread).

The training loop calls :meth:`Recorder.record` once per recorded state. The state is copied into the
current chunk buffer with one call: on a GPU one multi-tensor copy (``torch._foreach_copy_``, one call for
the whole state, one kernel launch for a state of a few tensors: a float64 loss beside float32 weights goes
in as two float32, see :func:`copy_carrier`; no host sync); on the CPU one numpy memcpy per variable
(torch's intra-op threads would compete with the training step for the cores). On a GPU a full buffer is handed
to the writer thread after an asynchronous copy into pinned host memory on a side stream (with
``loop_submits``, ``record.writer: loop``, the loop itself hands it to the store at its first
:meth:`Recorder.record` after that copy is done); on the CPU,
where the buffer is host memory already, the :meth:`Recorder.record` call that fills it hands it to the
store itself (the hop to the writer thread was Python under the interpreter lock the store's write threads
need, see "By reference" below). The loop continues in the next free buffer. There are ``buffers`` of them
(device and pinned buffers are allocated once and reused); when none is free the loop waits
(back-pressure), so nothing is ever dropped and memory stays bounded. The recorder counts that wait:
:attr:`Recorder.waited_seconds` is the part of it after the chunk that ended it had reached host memory
(the store was behind), :attr:`Recorder.device_waited_seconds` the part before (on a GPU, a loop that ran
ahead of the device's computation waits here for it; always 0 on the CPU), and
:attr:`Recorder.closing_seconds` the time :meth:`Recorder.close` takes to finish the last writes. Each chunk goes to
:meth:`RunWriter.write_block`, which encodes and writes its chunk files on the store's thread pool and
returns at once; the buffer is free again when its files are written, so several chunks are in flight.
The writer thread commits what is written at most every ``commit_seconds``
(:meth:`RunWriter.commit_if_due`), and everything at :meth:`Recorder.close`.

By reference (``by_reference=True``, CPU only, used by the two-layer producer, whose step makes new
tensors and never changes a recorded one in place): :meth:`Recorder.record` checks each value (one quick
test per value when it is a CPU tensor of the variable's own shape and dtype, the usual case) and keeps it
instead of copying it. A full chunk goes to :meth:`RunWriter.write_block` from the training thread itself
(numpy views of the large variables' rows, the small ones stacked), and the
store writes the chunk files from those rows (``writev``, the checksum chained over the rows): ``W`` is
never copied, only the small variables are (the stack, and the store's rows of their longer chunks), no
chunk buffers exist, and the writer thread only commits. The states of at
most ``buffers`` chunks are kept alive, the same bound as the buffers. (Handing the chunk to the writer
thread instead cost more than it saved: the hop is Python under the interpreter lock that the store's
write threads need between their system calls; BENCHMARKS.md, "Recording ceiling".)

With a writer *process* (``process=``, a local root; :mod:`trajscope.store.writer_process`) the chunk
buffers live in shared memory, a full buffer is handed off with one small message, and the writer process
does what the writer thread does (write, commit when due, free the buffer when written), so none of the
store's Python work runs under the training process's GIL. On the CPU the loop copies each state into the
shared buffers (and, with ``flush_seconds``, a writer thread only hands a paused loop's chunk over once due, as
without a process). On a GPU the loop copies into device buffers as without a process, and the writer thread
only waits for each chunk's copy to pinned memory, copies it into its shared buffer (numpy, without the
GIL) and sends the message: the store's Python per chunk (the write pool's bookkeeping, the commits) runs
in the other process. (That was to spare a launch-bound GPU loop the interpreter lock; on an H200 the thread
measured faster, so the process is opt-in: :func:`~trajscope.producer.write_path.wants_writer_process`.)
"""

from __future__ import annotations

import collections
import math
import numbers
import queue
import subprocess
import threading
import time
from typing import Mapping

import numpy as np
import torch

from trajscope.producer.staging import AS_IS, VIEWED, CudaStaging, HostStaging, Slot, copy_carrier, default_buffers
from trajscope.store import RunWriter
from trajscope.store.chunkio import StateRows, aligned_empty
from trajscope.store.locks import HEARTBEAT_SECONDS
from trajscope.store.writer_process import SharedChunks, WriterProcess, WriterProcessError


#: torch dtypes whose CPU tensors have numpy views
_NUMPY_DTYPES = {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.uint8, torch.bool, torch.complex64, torch.complex128}

#: queue item that only wakes the writer thread (a block finished writing)
_WAKE = -1

#: by reference, a variable whose chunk holds fewer values than this is stacked per block (one small
#: copy); a larger one is written from the recorded tensors' memory. 32768 is torch's grain size: below it
#: ``torch.stack`` copies serially, without waking the intra-op threads
STACK_BELOW_VALUES = 32768

#: torch's switch of gradient recording, as ``torch.no_grad()`` calls it
_set_grad_enabled = torch._C._set_grad_enabled

#: ``loop_submits``: the least time a chunk the loop left staged waits before the writer thread hands it over
#: (else ``commit_seconds``: with 0 the writer thread would take every chunk, and wake every few ms)
MIN_OVERDUE_SECONDS = 0.05

#: a chunk buffer keeps a view of each variable's row at each position (what :meth:`Recorder.record` copies
#: into, made once) while ``chunk · variables`` is at most this; beyond it each state's views are made as it is
#: recorded (found by a review: a module of 1000 tiny tensors held 1024 · 1000 views per buffer, about 0.5 MB a
#: tensor; ``bench/module_memory.py``: 577 MiB with the views kept, 100 MiB without)
MAX_KEPT_ROW_VIEWS = 16384

#: default ``flush_seconds``: a chunk not full this long after its oldest state not yet handed to the store is
#: handed over as it is (a slow loop's states reach readers, and survive a kill, without waiting for a full chunk)
FLUSH_SECONDS = 2.0

_monotonic = time.monotonic


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
        Number of chunk buffers (≥ 2): the bound on memory and on work queued for the writer (default:
        :func:`default_buffers` of the writer's write threads and the threads a block keeps busy,
        ``writer.write_pool_size`` and ``writer.block_threads``).
    staging
        How full buffers reach host memory: :class:`CudaStaging` on a GPU, :class:`HostStaging` on the
        CPU (default: chosen from ``device``). With :class:`HostStaging` (and by reference) the
        :meth:`record` call that completes a chunk hands it to the store: a write that fails there raises
        there, one that fails later (on a write thread) at the next chunk's hand-off or at :meth:`close`;
        after a Ctrl-C there nothing more is recorded, and :meth:`close` commits what came before.
    process
        A started :class:`~trajscope.store.writer_process.WriterProcess` to write through (a local root,
        numpy dtypes). With :class:`HostStaging` (the CPU) the buffers are shared memory and no writer thread
        runs in this process; with another staging (a GPU) the writer thread copies each chunk that reached
        the host into its shared buffer and hands it to the process, which writes and commits.
    by_reference
        Keep each recorded CPU tensor instead of copying it (no chunk buffers). Only for a
        caller that never changes a recorded tensor in place afterwards (an optimizer's in-place
        ``step()`` does: :class:`~trajscope.producer.module_recorder.ModuleRecorder` copies). CPU
        tensors of numpy dtypes, not with a writer process. Chunks are handed over as with
        :class:`HostStaging` (see ``staging``).
    loop_submits
        With a staging that copies (a GPU) and the writer thread: the training loop hands each chunk to the
        store itself (``record.writer: loop``), as the CPU's loop does, instead of the writer thread. While a
        chunk is staged, each :meth:`record` asks whether its copy to the host is done (``staging.ready``, no
        host sync; a copy takes a few steps) and submits, in order, the chunks whose copies are; when it
        waits for a free buffer it submits them all, waiting for their copies. The writer thread then only
        commits, and submits a chunk the loop has left staged for ``commit_seconds`` (a loop that paused
        recording) or at :meth:`close`, so a live reader sees a written chunk within about two
        ``commit_seconds``. Without a copying staging
        (the CPU, by reference) the loop hands its chunks over already; nothing changes there.
    flush_seconds
        A chunk not yet full is handed to the store as it is by the first :meth:`record` call at least this many
        seconds after the oldest state in it not yet handed over (0: only full chunks, and the last one at
        :meth:`close`). Recording goes on in another buffer that starts with the chunk's rows, and the chunk is
        written again, whole, as it grows (:class:`~trajscope.store.hotpath.HotPath` orders the writes by the
        rows they hold). So a state recorded at time t is handed over by the first :meth:`record` at or after
        ``t + flush_seconds``, then written and committed within about ``commit_seconds``: the bound on what a
        live reader waits for, and on what a kill loses, even for a loop that fills a chunk in minutes. The cost
        is bounded too: each early hand-over rewrites the current chunk file of every variable chunked by state
        (about ``chunk_steps`` × a state's bytes: ``chunk_mib``, 8 MiB of the largest variable, plus the other
        large ones', e.g. a two-layer run's ``W`` and ``output``), at most once per
        ``flush_seconds`` (a few MiB/s of extra writes), plus a copy of the chunk's rows on the training thread.
        So the bytes written grow by about ``chunk_steps`` / the states recorded per ``flush_seconds``
        (``bench/early_hand_over.py``: 2.33× at 2 s, 7.00× at 0.5 s for chunks of 41 states filled at 10 a
        second). A loop that
        fills its chunks within ``flush_seconds`` never pays it. A chunk is
        not handed over early while every other buffer is still in flight (the store is behind: the next
        :meth:`record` tries again). :meth:`flush` does it at once. On the CPU (by reference, or copied into host
        buffers, with or without a writer process) a loop that pauses recording (an evaluation, a checkpoint)
        needs no :meth:`flush`: the writer thread hands the chunk over itself once it is due, so the bound holds
        whatever the loop does. On a GPU (a copy on the loop's stream) a pause holds the chunk until the next
        :meth:`record` or :meth:`flush`.
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
        buffers: int | None = None,
        staging: HostStaging | None = None,
        process: WriterProcess | None = None,
        by_reference: bool = False,
        loop_submits: bool = False,
        flush_seconds: float = FLUSH_SECONDS,
    ):
        if by_reference and (device.type != "cpu" or process is not None
                             or any(dtypes[n] not in _NUMPY_DTYPES for n in shapes)):
            raise ValueError("recording by reference takes CPU tensors of numpy dtypes, without a writer process")
        self.writer = writer
        self.chunk = writer.chunk_steps
        self.device = device
        if buffers is None:
            buffers = default_buffers(writer.write_pool_size, writer.block_threads)
        #: chunk buffers (see :func:`default_buffers`)
        self.buffers = int(buffers)
        self.staging = staging or (CudaStaging(device) if device.type == "cuda" else HostStaging())
        self.committed = start_index
        self.index = start_index
        self._handed = start_index  # recorded indices handed to the writer (writing or written)
        self._cut: int | None = None  # first index a Ctrl-C kept from the store (nothing from it is committed)
        if not (isinstance(flush_seconds, (int, float)) and 0 <= flush_seconds < math.inf):
            raise ValueError(f"flush_seconds={flush_seconds!r}: give seconds, 0 or more (0: only full chunks)")
        self.flush_seconds = float(flush_seconds)
        # (monotonic) when the current chunk is handed over as it is: flush_seconds after its oldest state not handed
        # over yet (set by the record() that adds it: _arm_flush), infinite while there is none
        self._flush_due = math.inf
        # record(), flush() and close() hold it; the writer thread hands a paused loop's chunk over under it
        # (never waiting for it: a loop at work hands its chunks over itself)
        self._record_lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None  # the writer thread (started last: see below)
        # set as the writer thread ends: what tells it has (found by a review: a Thread.join() cut by a Ctrl-C marks
        # the thread stopped while it runs on in CPython 3.11, and the run was ended while it still committed)
        self._writer_done = threading.Event()
        self._writer_wakes_at = math.inf  # (monotonic) when the writer thread's wait ends at the latest
        #: chunks handed to the store before they were full (``flush_seconds``, :meth:`flush`)
        self.early_hand_overs = 0
        self.columns = dict(columns or {})
        self._process = process
        self._shared = None
        self._by_reference = by_reference
        # a full chunk needs no copy to finish (the CPU): the record() call that completes it hands it to the
        # store's write pool itself; on a GPU the writer thread does, once the copy to pinned memory is done
        self._direct = process is None and (by_reference or type(self.staging) is HostStaging)
        # a writer process behind a staging (a GPU): the writer thread moves each chunk into shared memory
        self._process_staged = process is not None and type(self.staging) is not HostStaging
        # the CPU's paths (the store's write pool, or a writer process fed from shared memory): the writer thread
        # hands a paused loop's chunk over once due (_hand_over_if_due); on a GPU a pause holds it (its copy is
        # the loop's stream's work)
        self._hands_over_paused = self._direct or (process is not None and not self._process_staged)
        # a staging that copies (a GPU), the writer thread: the loop submits its chunks once copied (loop_submits)
        self._loop_submits = bool(loop_submits) and process is None and not self._direct
        self._staged: collections.deque[tuple[int, float]] = collections.deque()  # (slot, perf_counter() staged)
        # one submitter at a time, in order; re-entrant: a Ctrl-C between taking it and the ``try`` that
        # releases it leaves it taken by the loop, which can still take it again (the writer thread then
        # gives way, and at close goes on without it)
        self._submit_lock = threading.RLock()
        self._overdue_seconds = max(float(getattr(writer, "commit_seconds", 0.5)), MIN_OVERDUE_SECONDS)
        if by_reference:
            self._shapes = {n: tuple(s) for n, s in shapes.items()}
            self._torch_dtypes = dict(dtypes)
            self._numpy_dtypes = {n: torch.empty(0, dtype=dtypes[n]).numpy().dtype for n in shapes}
            self._expected = {n: (torch.Size(s), dtypes[n]) for n, s in self._shapes.items()}
            self._stacked = {n for n, s in self._shapes.items() if self.chunk * math.prod(s) < STACK_BELOW_VALUES}
        try:  # whatever fails below (a device out of memory for the buffers...) leaves no process or descriptor
            if process is not None:
                if any(dtypes[n] not in _NUMPY_DTYPES for n in shapes) or not writer.root.is_local:
                    raise ValueError("a writer process records tensors of numpy dtypes into a local root only")
                self._shared = SharedChunks(shapes, {n: str(torch.empty(0, dtype=dtypes[n]).numpy().dtype)
                                                     for n in shapes}, self.chunk, buffers)
            self._carrier, self._carried = copy_carrier(shapes, dtypes)  # (the GPU's rows: one copy a state)
            self._row_specs = {n: (torch.Size(shapes[n]), dtypes[n], self._carried.get(n)) for n in shapes}
            self._slots = [self._make_slot(shapes, dtypes, i) for i in range(buffers)]
            self._numpy_rows = bool(self._slots) and self._slots[0].arrays is not None
            self._free: queue.Queue[int] = queue.Queue()
            for i in range(buffers):
                self._free.put(i)
            self._filled: queue.Queue[int | None] = queue.Queue()
            self._current: int | None = None
            self._error: BaseException | None = None
            #: seconds the training loop waited for a free chunk buffer after that chunk had reached host memory
            #: (the store was behind), and how many chunks it waited for
            self.waited_seconds, self.waits = 0.0, 0
            #: seconds it waited before that: for the device to compute and copy the chunk (a GPU run ahead)
            self.device_waited_seconds = 0.0
            #: seconds :meth:`close` took: the last chunks written and committed
            self.closing_seconds = 0.0
            if process is not None:
                process.open(writer, self._shared, self.columns, on_free=self._process_freed,
                             on_commit=self._process_committed, on_error=self._process_failed)
            if preload is not None and start_index % self.chunk:
                self._preload(preload, start_index)
            # last: a recorder that failed to build leaves no thread. With a writer process fed from shared memory,
            # only to hand a paused loop's chunk over (the process writes and commits)
            if process is None or self._process_staged or self.flush_seconds:
                self._thread = threading.Thread(target=self._write_loop, name="trajscope-writer", daemon=True)
                self._thread.start()
        except BaseException:
            if process is not None:  # nothing was handed to it, or nothing of it is the run's yet
                process.kill()
            if self._shared is not None:  # (its descriptor and mapping, whatever the writer process took)
                self._slots = []
                self._shared.close()
            raise

    def _preload(self, preload: Mapping[str, np.ndarray], start_index: int) -> None:
        """Resuming inside a chunk: its committed rows (read back from the store) fill the chunk's start."""
        slot = self._slots[self._begin_chunk()]
        if self._by_reference:
            for i in range(start_index - slot.start):
                slot.refs[i] = {n: np.asarray(preload[n])[i] for n in self._shapes}
            slot.exact = False
            preload = {}
        for name, rows in preload.items():
            if name in self.columns:
                continue
            slot.device[name][: len(rows)].copy_(torch.from_numpy(np.asarray(rows)))

    def _make_slot(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, torch.dtype], index: int) -> Slot:
        if self._by_reference:  # no buffers: each position holds the recorded values themselves
            return Slot(device={}, host={}, refs=[None] * self.chunk)
        if self._shared is not None and not self._process_staged:  # the writer process reads these pages
            device = {n: torch.from_numpy(a) for n, a in self._shared.views(index).items()}
        else:
            device = {n: self._chunk_buffer((self.chunk, *s), dtypes[n]) for n, s in shapes.items()}
        host, event = self.staging.host_buffers(device)
        arrays = None
        if self.device.type == "cpu" and all(t.dtype in _NUMPY_DTYPES for t in device.values()):
            arrays = {n: t.numpy() for n, t in device.items()}  # numpy views: plain memcpy, no OpenMP
        shared = self._shared.views(index) if self._process_staged else None
        slot = Slot(device=device, host=host, event=event, arrays=arrays, shared=shared)
        if self.chunk * len(device) <= MAX_KEPT_ROW_VIEWS:
            slot.rows = [self._rows_at(slot, i) for i in range(self.chunk)]
        return slot

    def _rows_at(self, slot: Slot, position: int) -> dict[str, torch.Tensor | np.ndarray]:
        """The views :meth:`record` copies a state into at ``position`` of ``slot``: numpy rows on the CPU (0-d
        too), else :meth:`_torch_row`."""
        if slot.arrays is not None:
            return {n: a[position, ...] for n, a in slot.arrays.items()}
        return self._torch_row(slot.device, position)

    def _torch_row(self, device: dict[str, torch.Tensor], position: int) -> dict[str, torch.Tensor]:
        """A position's rows as :meth:`record` copies into them on a GPU: a carried variable's row viewed as the
        carrier dtype (``row.reshape(-1).view(carrier)``, see :func:`copy_carrier`), any other as it is."""
        rows = {}
        for name, buffer in device.items():
            row = buffer[position]
            rows[name] = row.reshape(-1).view(self._carrier) if self._carried.get(name) is VIEWED else row
        return rows

    def _chunk_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """One variable's chunk buffer; on the CPU page-aligned (:func:`~trajscope.store.chunkio.aligned_empty`),
        so a store writing with direct I/O takes it as it is."""
        if self.device.type == "cpu" and dtype in _NUMPY_DTYPES:
            return torch.from_numpy(aligned_empty(shape, torch.empty(0, dtype=dtype).numpy().dtype))
        return torch.empty(shape, dtype=dtype, device=self.device)

    # -- training-thread side -----------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, WriterProcessError):  # its own one line
                raise RuntimeError(str(self._error)) from self._error
            raise RuntimeError(f"writing the recorded states failed: {self._error}") from self._error

    def _process_committed(self, committed: int) -> None:
        self.committed = max(self.committed, int(committed))

    def _process_failed(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _begin_chunk(self) -> int:
        self._raise_if_failed()
        try:
            slot_index = self._free.get_nowait()
        except queue.Empty:
            slot_index = self._wait_for_free()
        slot = self._slots[slot_index]
        slot.start = (self.index // self.chunk) * self.chunk
        slot.exact = True
        slot.count = 0  # (rows of it handed over: none yet)
        self._current = slot_index
        self._flush_due = math.inf  # (a resumed run's preloaded rows are the store's already: not due)
        return slot_index

    def _arm_flush(self) -> None:
        """The oldest state not yet handed over has just been recorded: its chunk is due ``flush_seconds`` from now
        (the writer thread woken if its wait would end later)."""
        self._flush_due = _monotonic() + self.flush_seconds
        if self._hands_over_paused and self._flush_due < self._writer_wakes_at:
            self._filled.put(_WAKE)

    def _wait_for_free(self) -> int:
        """Back-pressure: wait for a free buffer, noticing a dead writer. The wait is counted once a buffer
        is free: the part after its chunk reached host memory in :attr:`waited_seconds`, the rest in
        :attr:`device_waited_seconds`."""
        started = time.perf_counter()
        if self._staged:  # (loop_submits) the staged chunks are the buffers to be freed: submit them now
            self._submit_staged(wait=True, on_loop=True, lock="wait")
        while True:
            self._raise_if_failed()
            try:
                slot_index = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        ended = time.perf_counter()
        behind_store = ended - max(started, self._slots[slot_index].copied_at)  # (copied before it was freed)
        self.waits += 1
        self.waited_seconds += behind_store
        self.device_waited_seconds += (ended - started) - behind_store
        return slot_index

    def record(self, **values: torch.Tensor | float | int) -> None:
        """Copy one state (every time-varying variable) into the current chunk buffer."""
        with self._record_lock:
            self._record(values)

    def _record(self, values: dict) -> None:
        if self._cut is not None:
            raise RuntimeError(f"a Ctrl-C interrupted handing states {self._cut}.. to the store: close this recorder "
                               f"(the states before {self._cut} are kept) and resume the run to go on")
        if self._current is None:
            self._begin_chunk()
        slot = self._slots[self._current]
        position = self.index - slot.start
        if self._by_reference:
            slot.refs[position] = self._keep(slot, values)
            self.index += 1
            if position + 1 == self.chunk:
                self._hand_off(self.chunk)
            elif self._flush_due == math.inf:
                if self.flush_seconds:
                    self._arm_flush()
            elif _monotonic() >= self._flush_due:
                self._hand_over_early(wait=False)
            return
        rows = slot.rows[position] if slot.rows is not None else self._rows_at(slot, position)
        if values.keys() != self._row_specs.keys():  # (a variable left out would keep a reused buffer's old row)
            raise self._names_error(values)
        if self._numpy_rows:
            self._copy_host(slot, position, rows, values)
        else:
            self._copy_device(slot, position, rows, values)
        self.index += 1
        if position + 1 == self.chunk:
            self._hand_off(self.chunk)
            return
        if self._flush_due == math.inf:
            if self.flush_seconds:
                self._arm_flush()
        elif _monotonic() >= self._flush_due:
            self._hand_over_early(wait=False)
        if self._staged:  # (loop_submits) a staged chunk whose copy is done goes to the store at once
            self._submit_staged(wait=False, on_loop=True, lock="try")

    def flush(self) -> bool:
        """Hand the states recorded so far in the chunk being filled to the store now, as ``flush_seconds`` does
        by itself (waiting for a free buffer if need be); they are committed within about ``commit_seconds``.
        False when there was nothing to hand over (no state since the last hand-over, or after a Ctrl-C's cut)."""
        with self._record_lock:
            return self._hand_over_early(wait=True)

    def _hand_over_if_due(self) -> None:
        """The writer thread (on the CPU's paths, ``_hands_over_paused``): the chunk being filled goes to the store
        once due, as the next :meth:`record` would hand it over, so a loop that pauses recording leaves nothing
        unflushed. The loop's own calls come first: while one holds the lock, nothing is done here."""
        if self._closing or _monotonic() < self._flush_due or not self._record_lock.acquire(blocking=False):
            return
        try:
            if not self._closing and _monotonic() >= self._flush_due:
                self._hand_over_early(wait=False)
        finally:
            self._record_lock.release()

    def _seconds_until_flush_due(self) -> float | None:
        """The writer thread (``_hands_over_paused``): seconds until the chunk being filled is due for an early
        hand-over, 0 when it is due now and a buffer is free to take it (the writer thread may have been busy, a
        commit, when it fell due; or the loop held the lock: a review found the hand-over then waited for the next
        5 s wake); ``None`` when nothing is due (no state to hand over, ``flush_seconds`` 0), or when it is due and no buffer is free
        (the one freed next wakes the writer thread)."""
        left = self._flush_due - _monotonic()
        if left == math.inf:
            return None
        if left > 0:
            return left
        pending = self._current is not None and self._cut is None and self._error is None and not self._closing
        return 0.0 if pending and not self._free.empty() else None

    def _hand_over_early(self, *, wait: bool) -> bool:
        """The chunk being filled, not full, goes to the store as it is; recording goes on in another buffer,
        which first receives the chunk's rows (copied before the first buffer is handed over: the store frees it
        once written). Without ``wait``, nothing happens while no other buffer is free (tried again later)."""
        index = self._current
        if index is None or self._cut is not None:
            return False
        old = self._slots[index]
        count = self.index - old.start
        if count <= 0 or count >= self.chunk or old.count == count:  # (count: this chunk's last hand-over)
            return False
        self._raise_if_failed()
        try:
            new_index = self._free.get_nowait()
        except queue.Empty:
            if not wait:
                return False
            new_index = self._wait_for_free()
        new = self._slots[new_index]
        try:
            new.start, new.exact, new.count = old.start, old.exact, 0  # (its count was its last chunk's: a review)
            self._copy_rows(old, new, count)
        except BaseException:
            self._release(new_index)
            raise
        # the new buffer holds every row now: recording goes on there however the hand-over ends (a failure is
        # the run's error; a Ctrl-C cuts at this chunk, see _hand_off); its next state is the oldest not handed over
        self._current = new_index
        self._flush_due = math.inf
        self._hand_off(count, index)
        new.count = count  # (only now: a Ctrl-C before leaves the rows to close(), which hands them over)
        self.early_hand_overs += 1
        return True

    def _copy_rows(self, source: Slot, target: Slot, count: int) -> None:
        """The first ``count`` rows of ``source`` into ``target``: the kept references, a memcpy per variable on the
        host, or one multi-tensor copy on the device (on the loop's stream: before ``source``'s copy to the host)."""
        if self._by_reference:
            target.refs[:count] = source.refs[:count]
        elif source.arrays is not None:
            for name, array in source.arrays.items():
                np.copyto(target.arrays[name][:count], array[:count])
        else:
            with torch.no_grad():
                torch._foreach_copy_([t[:count] for t in target.device.values()],
                                     [source.device[n][:count] for n in target.device])

    def _copy_device(self, slot: Slot, position: int, rows: dict[str, torch.Tensor], values: dict) -> None:
        """A GPU's rows: one ``torch._foreach_copy_`` call for the whole state, no host sync.

        A contiguous tensor of its variable's shape, dtype and device goes into the carrier dtype's copy
        (:func:`copy_carrier`; ``rows`` holds the carried variables' rows already viewed as the carrier).
        Anything else is rarer and takes a call of its own: a tensor of another dtype (cast), not contiguous,
        or a lazy conjugate or negative view (which has no ``.view(dtype)``) in one copy per pair of dtypes, a
        number as a fill kernel's argument, a tensor that needs broadcasting by assignment. (One call is one
        kernel launch for a state of a few tensors; torch splits a call over very many tensors or elements
        into several.)
        """
        targets, sources, groups = [], [], None
        carrier, device = self._carrier, slot.device
        grad_enabled = torch.is_grad_enabled()  # parameters are copied without their graph: torch.no_grad(), by
        try:                                     # the call it makes (without the context manager's own Python)
            _set_grad_enabled(False)
            for name, value in values.items():
                shape, dtype, carried = self._row_specs[name]
                buffer = device[name]
                if isinstance(value, torch.Tensor) and value.shape == shape and value.device == buffer.device:
                    if (carried is not None and value.dtype is dtype and value.is_contiguous()
                            and (carried is AS_IS or not (value.is_conj() or value.is_neg()))):  # (lazy conj/neg
                        targets.append(rows[name])                                          # views: no .view)
                        sources.append(value if carried is AS_IS else value.reshape(-1).view(carrier))
                        continue
                    groups = groups if groups is not None else {}
                    group = groups.setdefault((value.dtype, dtype), ([], []))
                    group[0].append(buffer[position] if carried is VIEWED else rows[name])  # (the row itself)
                    group[1].append(value)
                elif (number := _host_number(value)) is not None:
                    # a number on the host (ModuleRecorder's extras are CPU tensors) into a device row: as a
                    # fill kernel's argument; an assignment (``row[i] = x``) copies x from pageable host
                    # memory, which waits for the device (found on an H200 by tests/gpu in sync debug mode)
                    check_state_shape(name, tuple(getattr(value, "shape", ())), 1, shape, fills=True)
                    buffer[position].fill_(number)
                else:  # a tensor of one value into a scalar row (shape (1,) into ()), or one on another device
                    tensor = isinstance(value, torch.Tensor)
                    check_state_shape(name, tuple(value.shape) if tensor else np.shape(value),
                                      value.numel() if tensor else int(np.size(value)), shape, fills=True)
                    buffer[position] = value
            if targets:
                torch._foreach_copy_(targets, sources)
            for group_targets, group_sources in (groups or {}).values():  # (torch's multi-tensor copy takes
                torch._foreach_copy_(group_targets, group_sources)        # one dtype a launch)
        finally:
            _set_grad_enabled(grad_enabled)

    def _keep(self, slot: Slot, values: dict) -> dict:
        """By reference: the state to keep. A state of CPU tensors of the variables' own shapes and dtypes (what a
        training loop hands over) passes one quick check per value: in the ceiling bench (no training) each
        microsecond per state held the interpreter lock the write threads need. Anything else takes
        :meth:`_references` (conversions, or a clear error)."""
        expected = self._expected
        if values.keys() == expected.keys():
            for name, value in values.items():
                shape, dtype = expected[name]
                if type(value) is not torch.Tensor or value.dtype is not dtype or value.shape != shape or not value.is_cpu:
                    break
            else:
                return values
        slot.exact = False
        return self._references(values)

    def _names_error(self, values: dict) -> ValueError:
        names = self._row_specs.keys()
        missing, extra = sorted(names - values.keys()), sorted(values.keys() - names)
        return ValueError(f"a recorded state has the variables {sorted(names)}: missing {missing}, unknown {extra}")

    def _references(self, values: dict) -> dict:
        """By reference: the values themselves, checked here on the training thread (the names, and each
        tensor's device and shape: no sync); their numpy views are taken once per block.
        A Python number, or a tensor of another dtype, is converted now (a small copy)."""
        if values.keys() != self._shapes.keys():
            raise self._names_error(values)
        for name, value in values.items():
            shape = self._shapes[name]
            if isinstance(value, torch.Tensor):
                if value.device.type != "cpu":
                    raise ValueError(f"{name}: recording by reference takes CPU tensors, not {value.device}")
                size = value.numel()
            else:
                try:
                    value = np.asarray(value, dtype=self._numpy_dtypes[name])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{name}: {value!r} is not a number of dtype {self._numpy_dtypes[name]}") from exc
                size = value.size
            check_state_shape(name, tuple(value.shape), size, shape)
            if isinstance(value, torch.Tensor) and value.dtype != self._torch_dtypes[name]:
                value = value.detach().to(self._torch_dtypes[name])
            values[name] = value
        return values

    def _row(self, name: str, value) -> np.ndarray:
        """One checked value as a numpy array of the variable's per-state shape (a view of a
        CPU tensor; a one-element value of a scalar variable is reshaped)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().numpy() if value.requires_grad else value.numpy()  # detach makes a new tensor
        shape = self._shapes[name]
        return value if value.shape == shape else value.reshape(shape)

    def _block_values(self, slot: Slot) -> dict[str, np.ndarray | StateRows]:
        """By reference (at the hand-off): each variable's rows of the slot's block, as the store takes them.

        A large variable (a chunk of :data:`STACK_BELOW_VALUES` values or more) is :class:`StateRows`: the
        rows' own memory, written without a copy. A small one (``v``, ``loss``, ``output``...) is stacked
        into one array with a single ``torch.stack``: the copy is under 32768 values, and it spares a
        numpy view per row (Python calls, under the interpreter lock the write threads need).
        """
        values: dict[str, np.ndarray | StateRows] = {}
        states = slot.refs[: slot.count]
        for name, shape in self._shapes.items():
            refs = [state[name] for state in states]
            if name in self._stacked:
                if slot.exact or all(isinstance(r, torch.Tensor) and r.shape == shape for r in refs):
                    with torch.no_grad():
                        values[name] = torch.stack(refs).numpy()
                else:  # numbers, or one-element tensors of a scalar variable
                    values[name] = np.stack([self._row(name, r) for r in refs])
            elif slot.exact:  # CPU tensors of the variable's shape and dtype (checked by _keep)
                values[name] = StateRows([r.detach().numpy() if r.requires_grad else r.numpy() for r in refs])
            else:
                values[name] = StateRows([self._row(name, r) for r in refs])
        return values

    @staticmethod
    def _copy_host(slot: Slot, position: int, rows: dict[str, np.ndarray], values) -> None:
        """CPU: copy each value into its row with numpy (a single-threaded memcpy: torch's intra-op
        threads would compete with the training step for the cores)."""
        for name, value in values.items():
            row = rows[name]
            if isinstance(value, torch.Tensor):
                if tuple(value.shape) == row.shape:
                    try:
                        np.copyto(row, value.detach().numpy(), casting="unsafe")
                        continue
                    except (TypeError, RuntimeError):  # a GPU tensor, a dtype numpy has not (bfloat16)
                        pass
                check_state_shape(name, tuple(value.shape), value.numel(), row.shape, fills=True)  # ((1,) into ())
                with torch.no_grad():
                    slot.device[name][position] = value
            else:
                array = np.asarray(value)
                check_state_shape(name, array.shape, array.size, row.shape, fills=True)
                row[...] = array

    def _hand_off(self, count: int, index: int | None = None) -> None:
        """Hand the chunk buffer ``index`` (default: the one being filled, which is then done) holding ``count``
        states to the store."""
        done = index is None
        if done:
            index = self._current
        slot = self._slots[index]
        try:  # (from here on a Ctrl-C cuts: the chunk may be neither the one filled nor handed over)
            if done:
                self._current = None
                self._flush_due = math.inf  # (nothing left to hand over early until the next chunk's first state)
            slot.count = count
            if self._process is not None and not self._process_staged:
                slot.copied_at = time.perf_counter()  # the rows are in shared host memory already
                self._process.submit(index, slot.start, count)
                self._handed = max(self._handed, slot.start + count)
                return
            if self._direct:  # nothing to wait for: the block goes to the store's write pool from here
                if self._error is not None:
                    self._release(index)
                    self._raise_if_failed()
                self._submit_on_loop(index)
                return  # the writer thread commits when due (a written block wakes it)
            self.staging.start_copy(slot)
            if self._loop_submits:
                self._staged.append((index, time.perf_counter()))
            else:
                self._filled.put(index)
            if self._loop_submits:  # the chunks before this one whose copies are done (this one's has just begun)
                self._submit_staged(wait=False, on_loop=True, lock="try")
        except BaseException as exc:  # a Ctrl-C anywhere from the moment the chunk stopped being the one filled
            # (a review found one landing before the submit's own handler left a chunk neither written nor kept,
            # and the commit at close waiting for it for ever): nothing from the cut is committed, and the run
            # ends `interrupted` over what is (not `failed` for the states it lacks)
            if not isinstance(exc, Exception) and self._cut is None:
                self._cut = self._cut_in(slot)
            raise

    def _submit_staged(self, *, wait: bool, on_loop: bool, lock: str) -> None:
        """``loop_submits``: hand the staged chunks to the store, in order: those whose copy to the host is done,
        or (``wait``) all of them, waiting for their copies.

        ``lock``: ``"try"`` gives way to a submitter at work, ``"wait"`` waits for it, ``"close"`` (the writer
        thread at close, while the loop waits in :meth:`close`) waits a second, then goes on without it. On
        the loop (``on_loop``) a failure is raised, as the CPU's hand-off raises it, and a Ctrl-C cuts at the
        first state not handed over; on the writer thread a failure becomes the run's error. After an error,
        and from a cut on, staged chunks are freed unwritten (once their copies are done).
        """
        locked = self._submit_lock.acquire(timeout=1.0) if lock == "close" else \
            self._submit_lock.acquire(blocking=lock == "wait")
        if not locked and lock != "close":
            return
        try:
            while self._staged:
                index = self._staged[0][0]
                slot = self._slots[index]
                if not wait and not self.staging.ready(slot):
                    break
                self._staged.popleft()
                if self._error is not None or (self._cut is not None and slot.start >= self._cut):
                    self._guard(lambda: self.staging.wait(slot))  # nothing of it is written: its buffer is
                    self._release(index)                           # free once its copy is done
                elif on_loop:
                    self._submit_on_loop(index)
                else:
                    self._guard(lambda: self._submit(index))
        except BaseException as exc:  # a Ctrl-C on the loop, e.g. between taking a chunk and handing it over
            if on_loop and not isinstance(exc, Exception) and self._cut is None:
                self._cut = self._handed  # (handed over in order: the first state not handed over)
            raise
        finally:
            if locked:
                self._submit_lock.release()

    def _submit_on_loop(self, index: int) -> None:
        """A chunk handed to the store from the training thread: a failed write raises here (the run's error); a
        Ctrl-C here keeps this chunk and the later ones from being committed."""
        try:
            self._submit(index)  # releases the slot itself if it raises
        except Exception as exc:  # noqa: BLE001 - a Ctrl-C (KeyboardInterrupt) is not a failed write
            if self._error is None:
                self._error = exc
            self._raise_if_failed()
        except BaseException:  # a Ctrl-C: this chunk may never be written, so nothing from it is committed
            if self._cut is None:
                self._cut = self._cut_in(self._slots[index])
            raise

    def _cut_in(self, slot: Slot) -> int:
        """Where a Ctrl-C that interrupted handing ``slot`` over cuts: at its chunk's start, or past the rows of the
        chunk an earlier hand-over gave the store already (its early hand-overs: every file of the chunk holds
        them, whichever of its writes lands; found by a review, they were lost)."""
        return max(slot.start, min(self._handed, slot.start + slot.count))

    def _seconds_until_overdue(self) -> float:
        """``loop_submits``: seconds before the first staged chunk is overdue for the writer thread (the whole
        overdue time when none is staged; the loop may take the first one meanwhile)."""
        try:
            staged_at = self._staged[0][1]
        except IndexError:
            return self._overdue_seconds
        return staged_at + self._overdue_seconds - time.perf_counter()

    def close(self) -> int:
        """Flush the partial chunk, wait for the writer thread, return ``committed_steps``.

        A Ctrl-C (``KeyboardInterrupt``) during close is raised after the writer thread (or process) has
        stopped: the caller ends the run ``interrupted`` over :attr:`committed`. After a second Ctrl-C the
        thread may still run (:attr:`stopped` is False): the caller leaves the run to ``resume``.
        The writer thread is stopped (after committing what was handed over) even when handing over the
        partial chunk raises. The time it takes is :attr:`closing_seconds`.
        """
        started = time.perf_counter()
        try:
            return self._close()
        finally:
            self.closing_seconds = time.perf_counter() - started

    def _close(self) -> int:
        self._closing = True  # (the writer thread hands nothing over from now on)
        try:
            with self._record_lock:  # (a hand-over the writer thread began is finished first)
                if self._current is not None:
                    slot = self._slots[self._current]
                    count = self.index - slot.start
                    if count > 0 and self._cut is None and slot.count != count:  # (count: handed over early already)
                        self._hand_off(count)
                    else:
                        self._free.put(self._current)
                        self._current = None
        except BaseException:
            try:
                if self._thread is not None:
                    self._filled.put(None)
                    self._join_writer_thread()
            finally:
                if self._process is not None:  # what the process committed is the run's: never finish over it
                    self._stop_process()
            raise
        if self._process is not None:
            interrupt = None
            if self._thread is not None:  # (staged: every chunk handed to the writer thread reaches the process
                self._filled.put(None)     # first; else the thread only hands paused chunks over, none from now on)
                try:
                    self._join_writer_thread()
                except KeyboardInterrupt as exc:
                    interrupt = exc  # (a second one left the thread running: the process is closed all the same)
            try:
                said = self._close_process()
            finally:
                self.committed = self.writer.reload_committed()  # what the writer process left committed
            if interrupt is not None:
                raise interrupt
            self._raise_if_failed()
            if said < 0:  # it never confirmed the final commit: states handed off may not be on disk
                raise WriterProcessError(
                    f"the writer process never confirmed its final commit ({self.committed} of {self.index} "
                    "states committed): the run is not complete; `trajscope resume` continues it")
            if self._cut is None and self.committed < self.index:  # never a run complete with states missing
                raise WriterProcessError(
                    f"the writer process committed {self.committed} of the {self.index} states recorded: the run "
                    "is not complete; `trajscope resume` continues it")
            return self.committed
        self._filled.put(None)
        self._join_writer_thread()
        self._raise_if_failed()
        if self._cut is None and self.committed < self.index:  # never a run complete with states missing
            raise RuntimeError(f"the writer committed {self.committed} of the {self.index} states recorded: the run "
                               "is not complete; resume continues it")
        return self.committed

    @property
    def cut(self) -> int | None:
        """The first recorded index a Ctrl-C while handing states to the store kept from it (nothing from there
        is committed, and :meth:`close` returns fewer states than were recorded), or ``None``."""
        return self._cut

    def _join_writer_thread(self) -> None:
        """Wait for the writer thread to write and commit what it was handed (a few chunks at most). A Ctrl-C
        meanwhile is raised once it has, so the caller ends the run over what is committed and no thread
        commits behind its back; a second Ctrl-C is raised at once (then :attr:`stopped` is False while the
        thread still runs, and the caller must not end the run: ``resume`` does, later)."""
        try:
            self._wait_for_writer()
        except KeyboardInterrupt:
            self._wait_for_writer()
            raise

    def _wait_for_writer(self) -> None:
        """Wait until the writer thread has ended: on its event, not ``Thread.join()`` (see ``_writer_done``)."""
        self._writer_done.wait()

    def _close_process(self) -> int:
        """The writer process's final commit and exit (its ``committed_steps``, -1 if it never said). A Ctrl-C
        meanwhile waits for them all the same and is raised after; a second one kills the process at once
        (nothing more is committed)."""
        try:
            return self._process.close()
        except KeyboardInterrupt:
            try:
                self._process.close()
            except KeyboardInterrupt:
                self._process.kill()
            raise

    def outcome_of_interrupted_close(self, status: str, error: str | None) -> tuple[str, str | None]:
        """A run's status and error after a Ctrl-C during :meth:`close` (once :attr:`stopped`): ``failed``
        with the writer's error if its writing failed too, else ``interrupted``; a run already failed stays so."""
        if self._error is not None:
            return "failed", error or f"writer: {self._error}"
        return ("interrupted" if status == "complete" else status), error

    @property
    def stopped(self) -> bool:
        """Nothing of this recorder writes or commits any more: its writer process has exited (with one, the
        writer thread never commits), or else its writer thread has ended. A run is ended only then."""
        if self._process is not None:
            return self._process.proc.poll() is not None
        return self._thread is None or self._writer_done.is_set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) until :attr:`stopped`; returns :attr:`stopped`."""
        if self._process is not None:
            try:
                self._process.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        elif self._thread is not None:
            self._writer_done.wait(timeout)
        return self.stopped

    def unlock_when_stopped(self) -> threading.Thread:
        """After a second Ctrl-C during :meth:`close` left the writer running (:attr:`stopped` False): a daemon
        thread that waits for it to stop, then stops the store's write threads and releases the run's lock.
        The run stays ``running`` with everything the writer committed, for ``resume`` to end or continue, in
        this process too (a notebook's kernel or a sweep's worker outlives the Ctrl-C; the lock, held until
        the process exits, made ``resume`` there refuse the run)."""

        def unlock() -> None:
            try:
                self.wait_stopped()
                self.writer.close_writes()
            finally:
                self.writer.lock.release()

        thread = threading.Thread(target=unlock, name="trajscope-unlock", daemon=True)
        thread.start()
        return thread

    def _stop_process(self) -> None:
        """Handing over the partial chunk failed (e.g. a GPU's copy raised after a device error): let the
        writer process commit what it was handed (or kill it if that fails too), and take its
        ``committed_steps``, so that finishing the run neither shrinks it below them nor races the process."""
        try:
            self._process.close()
        except BaseException:
            self._process.kill()
            raise
        finally:
            self.committed = self.writer.reload_committed()

    # -- writer-thread side (and the hand-off: _submit runs on the training thread on the CPU; the
    # -- done-callbacks _block_written and _release on the store's write threads) ---------------------
    def _write_loop(self) -> None:
        """The writer thread: hands staged chunks to the store, commits when due. Whatever raises here is the
        run's error (the training thread raises it at its next hand-off or wait), and the thread keeps taking
        hand-offs, freeing their buffers, until :meth:`close`: a loop never waits on a dead thread."""
        try:
            self._write_until_closed()
        finally:
            self._writer_done.set()

    def _write_until_closed(self) -> None:
        while True:
            timeout = HEARTBEAT_SECONDS / 2
            # (a writer process commits itself; after a Ctrl-C's cut only close() commits: its wait is not cut short
            # for a commit that never comes, found by a review: it woke every 5 ms until close)
            committing = self._error is None and self._process is None and self._cut is None
            if committing and self._behind_commit():
                timeout = min(timeout, max(self._seconds_until_commit(), 0.005))  # commit when due
            if self._loop_submits:  # look at what the loop staged (it stages without a word) when it is overdue
                timeout = min(timeout, max(self._seconds_until_overdue(), 0.005))
            flush_in = self._seconds_until_flush_due() if self._hands_over_paused else None
            if flush_in is not None:  # a paused loop's chunk: handed over when due (_hand_over_if_due)
                timeout = min(timeout, flush_in + 0.001)
            self._writer_wakes_at = _monotonic() + timeout
            try:
                item = self._filled.get(timeout=timeout)
            except queue.Empty:
                item = _WAKE
            if item is None:
                if self._loop_submits:  # closing: what the loop staged is written (or, after an error, freed)
                    self._guard(lambda: self._submit_staged(wait=True, on_loop=False, lock="close"))
                break
            if item != _WAKE:
                if self._error is None:
                    self._guard(lambda: self._submit(item))
                else:  # nothing of it is committed; its copy to the host is still waited for, so a buffer
                    try:  # is never refilled while a copy out of it may be pending
                        self.staging.wait(self._slots[item])
                    except BaseException:  # noqa: BLE001 - the first error stands; the buffer is freed anyway
                        pass
                    self._release(item)
            if self._loop_submits and self._seconds_until_overdue() <= 0:
                # a paused loop: a live reader waits (the thread never dies of it: a failure is the run's error)
                self._guard(lambda: self._submit_staged(wait=True, on_loop=False, lock="try"))
            if self._hands_over_paused and self._error is None:  # (a paused loop's chunk, when due; a failure is
                # the run's)
                self._guard(self._hand_over_if_due)
            if self._error is None and self._process is None:  # (a writer process commits itself)
                self._guard(self._commit_if_due)
        if self._process is None:  # closing: everything handed off written, then committed
            if self._error is None:
                self._guard(self._commit_all)
            if self._error is not None:  # (also a block that failed during that last commit)
                self._salvage()

    def _behind_commit(self) -> bool:
        """Whether states are written but not committed (the first call builds the store's write path)."""
        try:
            return getattr(self.writer, "written_steps", 0) > self.committed
        except BaseException as exc:  # noqa: BLE001 - reported to the training thread
            if self._error is None:
                self._error = exc
            return False

    def _guard(self, action) -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - reported to the training thread
            if self._error is None:
                self._error = exc

    def _submit(self, index: int) -> None:
        slot = self._slots[index]
        if self._process_staged:
            self._submit_to_process(index, slot)
            return
        try:
            self.staging.wait(slot)
            slot.copied_at = time.perf_counter()
            if self._by_reference:
                values = self._block_values(slot)
            else:
                values = {name: tensor[: slot.count].numpy() for name, tensor in slot.host.items()}
            values.update({name: column[slot.start : slot.start + slot.count]
                           for name, column in self.columns.items()})
            handle = self.writer.write_block(slot.start, values)
        except BaseException:
            self._release(index)
            raise
        self._handed = max(self._handed, slot.start + slot.count)
        if handle is None:  # a writer that writes synchronously
            self._release(index)
        else:  # the buffer is reused only once its chunk files are written
            handle.add_done_callback(lambda h, i=index: self._block_written(i, h))

    def _submit_to_process(self, index: int, slot: Slot) -> None:
        """A writer process behind a staging: once the chunk is in host memory, copy its rows into the slot's
        shared buffers (``np.copyto`` releases the GIL for a large copy) and hand the slot to the process;
        the process frees it when its chunk files are written."""
        try:
            self.staging.wait(slot)
            slot.copied_at = time.perf_counter()
            for name, shared in slot.shared.items():
                np.copyto(shared[: slot.count], slot.host[name][: slot.count].numpy())
            self._process.submit(index, slot.start, slot.count)
        except BaseException:
            self._release(index)
            raise
        self._handed = max(self._handed, slot.start + slot.count)

    def _process_freed(self, index: int) -> None:
        """A writer process wrote the chunk of slot ``index`` (on its receiver thread): the slot is free again, and a
        paused loop's chunk that fell due while no buffer was free is handed over now (the writer thread woken)."""
        self._free.put(index)
        if self._thread is not None and self._flush_due != math.inf:
            self._filled.put(_WAKE)

    def _block_written(self, index: int, handle) -> None:
        if handle.exception is not None and self._error is None:
            self._error = handle.exception
        self._release(index)
        self._filled.put(_WAKE)

    def _release(self, index: int) -> None:
        """The slot's chunk is written (or dropped): drop its references, make it free again."""
        slot = self._slots[index]
        if slot.refs is not None:
            slot.refs = [None] * self.chunk
        self._free.put(index)

    def _seconds_until_commit(self) -> float:
        due = getattr(self.writer, "seconds_until_commit_due", None)
        return due() if due is not None else 0.0

    def _commit_if_due(self) -> None:
        commit_if_due = getattr(self.writer, "commit_if_due", None)
        # (after a Ctrl-C's cut, only close commits, up to the cut: nothing of a cut chunk nor after it)
        if self._cut is None and commit_if_due is not None and commit_if_due():
            self.committed = self.writer.committed_steps
        elif self.writer.heartbeat_due():
            self.writer.commit(self.committed)

    def _salvage(self) -> None:
        """After a failure: commit the states that every block before it holds, all fully written (the
        frontier never passes a failed block). Best effort: if this fails too, the last commit stands."""
        commit_written = getattr(self.writer, "commit_written", None)  # (a stand-in writer may lack it)
        if commit_written is None:
            return
        try:
            self.committed = max(self.committed, commit_written(self._handed_target))
        except Exception:  # noqa: BLE001 - the run already fails with the first error
            pass

    @property
    def _handed_target(self) -> int:
        """States handed to the store that may be committed (none from a chunk a Ctrl-C cut)."""
        return self._handed if self._cut is None else min(self._handed, self._cut)

    def _commit_all(self) -> None:
        target = self._handed_target
        if target > self.committed:
            self.writer.commit(target)
            self.committed = target


def check_state_shape(name: str, shape: tuple[int, ...], size: int, expected: tuple[int, ...],
                      fills: bool = False) -> None:
    """Raise ``ValueError`` unless a recorded value of ``shape`` (``size`` values) fits its variable's
    per-state ``expected`` shape as it is, or is one value of a one-value variable (shape ``(1,)`` into
    ``()``): never broadcast, never reshaped. ``fills`` (the copying paths): a 0-d value (a number) fills its
    row, as ``ModuleRecorder`` fills a missing gradient's; a tensor or array of one value does not."""
    if tuple(shape) != tuple(expected) and not (size == 1 and (math.prod(expected) == 1 or (fills and not shape))):
        raise ValueError(f"{name}: a state of shape {tuple(shape)}, the variable's is {tuple(expected)}")


def _host_number(value) -> numbers.Number | None:
    """``value`` as a Python number when it is one number on the host (a Python or numpy number, a one-element
    numpy array or CPU tensor), else ``None``."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item() if value.size == 1 else None
    if isinstance(value, torch.Tensor):
        return value.item() if value.device.type == "cpu" and value.numel() == 1 else None
    return value if isinstance(value, numbers.Number) else None
