"""The hot write path of a run: blocks of recorded states in, chunk files out, several at a time.

:class:`HotPath` is what :meth:`RunWriter.write_block` and :meth:`RunWriter.commit` use. A block (the
rows ``start:stop`` of every time-varying variable, one commit chunk of ``chunk_steps`` states) is
split into chunk files, encoded by :class:`~trajscope.store.chunkio.ChunkEncoder` and written by a
thread pool; :meth:`HotPath.submit` returns at once with a :class:`BlockWrite` handle.

Two kinds of variables (the chunk policy of :func:`trajscope.store.layout.chunk_plan`):

- *direct* variables (``W``, and any variable whose chunk of ``chunk_steps`` states is large) have
  chunks of ``chunk_steps`` states: each block writes its chunk files once, concurrently. A block of fewer
  states (a slow loop's chunk handed over early so that readers see it, or the last one) writes the chunk
  whole (the rest at the fill value), and the blocks that later carry more of its rows write it again; such
  writes carry their version, as the buffered variables' do (below).
- *buffered* variables (the small per-step ones: ``v``, ``loss``, ``output``, ``step``, ``t``...) have
  chunks of a multiple of ``chunk_steps`` states: their rows are kept in memory, so a finished run holds a
  few of their files instead of one per block. A chunk is written once by the block that completes it;
  until then :meth:`HotPath.flush` (called by every commit, before the attributes) writes it whole (the
  rows so far, the rest at the fill value) — at most once per commit, not once per block, which is what a
  fast loop's small files cost before. Writes of one key are ordered by version (the rows they hold): a
  write whose rows a newer version already holds is skipped, so the file never goes back in time. A
  complete chunk is written from its buffer itself, and the buffer serves a later chunk once that write has
  landed (:data:`SPARE_BUFFERS`): fresh buffers cost a page fault per page.

Ordering: :class:`WrittenFrontier` tracks which blocks are written (their direct chunks and the
buffered chunks they complete); ``written`` is the end of the longest run of written blocks from the last
commit, whatever order the writes complete in. A commit to ``n`` waits until ``written >= n`` (blocks of
this writer) and :meth:`HotPath.flush` has written the buffered rows below ``n``, so ``committed_steps``
never covers a chunk not fully written. Rows of a partial buffered chunk that no commit covered may
never reach storage (a crash loses them, as it loses anything uncommitted).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping

import numpy as np

from trajscope.store import faults
from trajscope.store.chunkio import ChunkEncoder, FsspecSink, LocalSink, StateRows


#: most threads writing a local root (see :func:`default_write_threads`)
LOCAL_WRITE_THREADS_MAX = 4
#: threads writing an fsspec root (an object store, ``memory://``), or a local root with direct I/O: writes that
#: wait on the network or the device, not on a core
WAITING_WRITE_THREADS = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity on Linux, e.g. a container's ``--cpuset-cpus``;
    ``os.cpu_count()`` elsewhere, which counts the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_write_threads(local: bool, io: str = "buffered") -> int:
    """Threads writing chunk files when the run asks for no number.

    On a local root written through the page cache, one per core this process may run on, at most
    :data:`LOCAL_WRITE_THREADS_MAX`: a write there is a copy into the page cache, bound by the CPU, and more
    threads than cores only take turns with the training loop and with each other. On an fsspec root (an
    object store, ``memory://``), and on a local root written with direct I/O (``io="direct"``),
    :data:`WAITING_WRITE_THREADS`: a write there waits on the network or the device, not on a core. The
    measurements behind these choices, which were small and noisy on 2 cores, are in BENCHMARKS.md,
    "Recording ceiling". ``bench/record_ceiling.py --write-threads N`` measures other choices.
    """
    if not local or io == "direct":
        return WAITING_WRITE_THREADS
    return max(1, min(LOCAL_WRITE_THREADS_MAX, usable_cores()))


def block_threads(arrays: Mapping, chunk_steps: int) -> int:
    """Write threads one block keeps busy: the bytes of its chunk files over those of its largest file,
    rounded down, at least 1 (``⌊Σ files / max file⌋``).

    A block writes one file per chunk of each variable chunked by ``chunk_steps`` states: one ``W`` file
    for the reference run (1), a ``W`` file beside a much smaller ``output`` file (still 1: the small one
    is written long before the large one), a state larger than a chunk file split along its own dimensions
    into ``k`` files of one size (``k``), or a module's parameters whose files together are at least twice
    its largest.
    """
    total, largest = 0, 0
    for array in arrays.values():
        chunks = tuple(array.metadata.chunk_grid.chunk_shape)
        files = math.prod(_chunk_counts(tuple(array.shape), chunks))
        if chunks[0] != chunk_steps or files == 0:  # not written per block, or empty (a zero-size dim)
            continue
        file_bytes = math.prod(chunks) * np.dtype(array.dtype).itemsize
        total += file_bytes * files
        largest = max(largest, file_bytes)
    return max(1, total // largest) if largest else 1


#: chunk buffers of a small (buffered) variable kept for reuse once their chunks are on storage
SPARE_BUFFERS = 2


class WriteFailed(RuntimeError):
    """A chunk write failed; nothing after it is ever committed."""


class BlockWrite:
    """Handle of one submitted block: ``done()``, ``wait()``, ``add_done_callback(fn)``."""

    def __init__(self, start: int, stop: int, parts: int, *, advances: bool = True) -> None:
        self.start, self.stop = start, stop
        self.advances = advances  # False for a commit's flush: it rewrites rows, it adds no block
        self.exception: BaseException | None = None
        self._remaining = parts
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: list[Callable[["BlockWrite"], None]] = []

    def done(self) -> bool:
        """True once every chunk of the block is written (or one failed)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the block is written; raise :class:`WriteFailed` if a chunk failed."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"block {self.start}:{self.stop} not written after {timeout} s")
        if self.exception is not None:
            raise WriteFailed(f"writing states {self.start}:{self.stop} failed: {self.exception}") from self.exception

    def add_done_callback(self, fn: Callable[["BlockWrite"], None]) -> None:
        """Call ``fn(self)`` when the block is done (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _part_done(self, exc: BaseException | None) -> bool:
        """Record one finished chunk; True when this call finished the block."""
        with self._lock:
            if exc is not None and self.exception is None:
                self.exception = exc
            self._remaining -= 1
            return self._remaining == 0

    def _finish(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)


class WrittenFrontier:
    """``written``: every recorded index below it is on storage (blocks may complete in any order).

    Starts at the run's committed count; a finished block ``[start, stop)`` with ``start <= written``
    raises it to ``stop`` (a rewrite of an already committed chunk, as at resume, is allowed).
    """

    def __init__(self, written: int) -> None:
        self.written = int(written)
        self.error: BaseException | None = None
        self._done: dict[int, int] = {}
        self._cond = threading.Condition()

    def block_done(self, start: int, stop: int) -> None:
        with self._cond:
            self._done[start] = max(stop, self._done.get(start, stop))
            advanced = True
            while advanced:
                advanced = False
                for s, e in list(self._done.items()):
                    if e <= self.written:
                        del self._done[s]
                    elif s <= self.written:
                        self.written = e
                        del self._done[s]
                        advanced = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = exc
            self._cond.notify_all()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise WriteFailed(f"a chunk write failed: {self.error}") from self.error

    def wait_for(self, n: int) -> None:
        """Block until ``written >= n``; raise :class:`WriteFailed` if a write failed first."""
        with self._cond:
            while self.written < n and self.error is None:
                self._cond.wait(1.0)
        if self.written < n:
            self.raise_if_failed()


def _chunk_counts(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> list[int]:
    """Chunks along each non-step dimension of an array of ``shape`` in chunks of ``chunk_shape``."""
    return [math.ceil(n / c) for n, c in zip(shape[1:], chunk_shape[1:])]


def _chunk_grid(encoder: ChunkEncoder, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Chunk coordinates along the non-step dimensions (one ``()`` when only ``step`` is chunked)."""
    return list(itertools.product(*(range(k) for k in _chunk_counts(shape, encoder.chunk_shape))))


class HotPath:
    """Concurrent chunk writes of one run (see the module docstring).

    Threads: blocks are submitted by one thread at a time (a recorder's training thread, or its writer
    thread), commits and :meth:`flush` may come from another (the recorder's writer thread); the write pool's
    threads finish blocks and run their callbacks.

    Parameters
    ----------
    sink
        A :class:`LocalSink` or :class:`FsspecSink` rooted at the run's group.
    arrays
        The run's time-varying ``zarr.Array`` objects, by name.
    chunk_steps
        States per block (the commit chunk).
    committed
        ``committed_steps`` when the writer was opened (rows below it are on storage already).
    threads
        Size of the write pool.
    """

    def __init__(self, sink: LocalSink | FsspecSink, arrays: Mapping, chunk_steps: int, committed: int,
                 threads: int = 4) -> None:
        self.sink = sink
        self.arrays = dict(arrays)
        self.chunk_steps = int(chunk_steps)
        self.encoders = {name: ChunkEncoder(array) for name, array in self.arrays.items()}
        self.shapes = {name: tuple(array.shape) for name, array in self.arrays.items()}
        self.direct = [n for n, e in self.encoders.items() if e.chunk_shape[0] == self.chunk_steps]
        self.buffered = [n for n, e in self.encoders.items() if e.chunk_shape[0] != self.chunk_steps]
        for name in self.buffered:
            if self.encoders[name].chunk_shape[0] % self.chunk_steps:
                raise ValueError(f"{name}: time chunk {self.encoders[name].chunk_shape[0]} is not a multiple "
                                 f"of chunk_steps {self.chunk_steps}")
        self.grids = {name: _chunk_grid(self.encoders[name], self.shapes[name]) for name in self.arrays}
        self.frontier = WrittenFrontier(committed)
        self._base_committed = int(committed)
        self._buffers: dict[str, dict[int, np.ndarray]] = {name: {} for name in self.buffered}
        self._held: dict[str, dict[int, int]] = {name: {} for name in self.buffered}  # chunk -> rows held through
        # buffers of chunks on storage, for the next chunks (fresh ones cost page faults, under the GIL or not)
        self._spare: dict[str, list[np.ndarray]] = {name: [] for name in self.buffered}
        self._buffer_lock = threading.Lock()
        self._landed: dict[str, int] = {}  # key -> version (rows through) of its last write
        self._key_locks: dict[str, threading.Lock] = {}
        self._pool = ThreadPoolExecutor(max(1, int(threads)), thread_name_prefix="trajscope-chunk")
        self.submitted = int(committed)  # end of the furthest block submitted (or the opening commit)
        self._rewritten: set[int] = set()  # starts of blocks submitted partial: their chunk is written again
        self._outstanding: set[BlockWrite] = set()
        self._outstanding_lock = threading.Lock()

    # -- blocks -------------------------------------------------------------------------------------
    def submit(self, start: int, count: int, values: Mapping[str, np.ndarray]) -> BlockWrite:
        """Write rows ``start:start+count`` of every variable; returns at once.

        The direct variables' arrays in ``values`` (or :class:`~trajscope.store.chunkio.StateRows`, one
        array per state, written without stacking them) are read by the pool threads: they must stay
        unchanged until the returned handle is done. The buffered variables' rows are copied now.
        """
        self.frontier.raise_if_failed()
        stop = start + count
        self.submitted = max(self.submitted, stop)
        # a chunk written more than once (a partial block handed over early, then again as it grows): its writes
        # carry their version (the rows they hold), so a slower older write never lands over a newer one
        version = stop if count < self.chunk_steps or start in self._rewritten else None
        if count < self.chunk_steps:
            self._rewritten.add(start)
        else:
            self._rewritten.discard(start)
        jobs = []
        for name in self.direct:
            encoder, data = self.encoders[name], values[name]
            t = start // encoder.chunk_shape[0]
            whole = len(self.grids[name]) == 1  # one chunk spans the whole state
            if isinstance(data, StateRows) and not whole:
                data = np.asarray(data)  # chunked along a state dimension too: cut from the stacked block
            for coords in self.grids[name]:
                piece = data if whole else data[(slice(None),) + self._cells(encoder, coords)]
                jobs.append((encoder, encoder.key((t,) + coords), piece, version))
        with self._buffer_lock:
            for name in self.buffered:
                index, complete = self._buffer_rows(name, start, np.asarray(values[name]), stop)
                if complete:  # its last row arrived: written now, once, as part of this block
                    jobs += self._buffered_jobs(name, index, stop)
        return self._launch(BlockWrite(start, stop, len(jobs)), jobs)

    def _launch(self, block: BlockWrite, jobs: list[tuple]) -> BlockWrite:
        """Hand the block's write jobs ``(encoder, key, piece, version)`` to the pool; track the block."""
        try:  # (from the block's registration on: a Ctrl-C is raised as any call here returns, that one included)
            with self._outstanding_lock:
                self._outstanding.add(block)
            if not jobs:
                self._complete(block)
            for encoder, key, piece, version in jobs:
                self._pool.submit(self._write_piece, block, encoder, key, piece, version)
        except BaseException:
            # e.g. Ctrl-C on the training thread (the recorder submits from there): some jobs may never run,
            # so the block may never finish. It never advances the frontier then (nothing is committed over
            # it), and draining must not wait for it; the jobs that were queued still run before close.
            with self._outstanding_lock:
                self._outstanding.discard(block)
            raise
        return block

    @staticmethod
    def _cells(encoder: ChunkEncoder, coords: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, encoder.chunk_shape[1:]))

    def _write_piece(self, block: BlockWrite, encoder: ChunkEncoder, key: str, piece: np.ndarray,
                     version: int | None) -> None:
        error = None
        try:
            if version is None:
                self.sink.put(key, encoder.encode(piece))
            else:  # a rewritten chunk: never replace a newer version by an older one
                with self._key_lock(key):
                    if version > self._landed.get(key, -1):
                        self.sink.put(key, encoder.encode(piece))
                        self._landed[key] = version
        except BaseException as exc:  # noqa: BLE001 - reported through the handle and the frontier
            error = exc
        if block._part_done(error):
            self._complete(block)

    def _complete(self, block: BlockWrite) -> None:
        if block.exception is None and block.advances:
            try:
                faults.checkpoint("write.chunk")  # the block's chunks are written, not yet committed
            except BaseException as exc:  # noqa: BLE001
                block.exception = exc
        if block.exception is not None:
            self.frontier.fail(block.exception)
        elif block.advances:
            self.frontier.block_done(block.start, block.stop)
        with self._outstanding_lock:
            self._outstanding.discard(block)
        block._finish()

    # -- buffered (small) variables -----------------------------------------------------------------
    def _key_lock(self, key: str) -> threading.Lock:
        with self._outstanding_lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _buffer_rows(self, name: str, start: int, rows: np.ndarray, stop: int) -> tuple[int, bool]:
        """Put rows ``start:stop`` into the variable's current chunk; return its index and whether the
        chunk is complete (its last row, or the array's last row, arrived)."""
        encoder = self.encoders[name]
        span = encoder.chunk_shape[0]
        index = start // span
        buffer = self._buffers[name].get(index)
        if buffer is None:
            for old in [i for i in self._buffers[name] if i < index]:  # chunks behind: dropped once on storage
                if self._landed_through(name, old) >= self._held[name][old]:  # (no write reads them any more)
                    spare = self._buffers[name].pop(old)
                    del self._held[name][old]
                    if len(self._spare[name]) < SPARE_BUFFERS:
                        self._spare[name].append(spare)
            buffer = self._buffers[name][index] = self._new_buffer(name, index)
        offset = start - index * span
        buffer[offset : offset + len(rows)] = rows
        self._held[name][index] = max(stop, self._held[name].get(index, 0))
        return index, stop >= min((index + 1) * span, self.arrays[name].shape[0])  # (capacity may grow)

    def _landed_through(self, name: str, index: int) -> int:
        """Rows of the variable's chunk ``index`` on storage (the version of its last write; -1 if none).
        A variable of no values (a zero-size dimension) has no chunk files: all its rows are on storage."""
        encoder = self.encoders[name]
        return min((self._landed.get(encoder.key((index,) + coords), -1) for coords in self.grids[name]),
                   default=sys.maxsize)

    def _buffered_jobs(self, name: str, index: int, stop: int) -> list[tuple]:
        """Write jobs of the variable's chunk ``index`` as it holds the rows below ``stop`` (the rest at
        the fill value); the version of the writes is ``stop``.

        A complete chunk (all its ``span`` rows below ``stop``) is written from its buffer itself: no row of
        it is written again (a block never spans two chunks), and the buffer is reused only once a write of
        this version has landed (``_buffer_rows``), when no write reads it any more (a second write of the same
        version is skipped without reading it). A partial chunk is copied, since later rows go into its
        buffer while the write reads it.
        """
        encoder = self.encoders[name]
        span = encoder.chunk_shape[0]
        chunk = self._buffers[name][index]
        if stop < (index + 1) * span:
            chunk = chunk.copy()
            chunk[stop - index * span:] = encoder.fill_value
        return [(encoder, encoder.key((index,) + coords), chunk[(slice(None),) + self._cells(encoder, coords)], stop)
                for coords in self.grids[name]]

    def flush(self, n: int) -> None:
        """Write the buffered variables' chunks that lack rows below ``n`` on storage; wait for them.

        Called by a commit to ``n`` before it writes the attributes. Every chunk still held is checked,
        not only the current one: the block that completes an earlier chunk may still be in flight when
        the commit comes (its write and this one carry the same rows; whichever lands second is skipped).
        Raises :class:`WriteFailed` if a write fails.
        """
        jobs = []
        with self._buffer_lock:
            for name in self.buffered:
                span = self.encoders[name].chunk_shape[0]
                for index, held in sorted(self._held[name].items()):
                    if min(n, held) > index * span and self._landed_through(name, index) < min(n, held):
                        jobs += self._buffered_jobs(name, index, held)
        if jobs:
            self._launch(BlockWrite(0, n, len(jobs), advances=False), jobs).wait()

    def _new_buffer(self, name: str, index: int) -> np.ndarray:
        encoder = self.encoders[name]
        span = encoder.chunk_shape[0]
        if self._spare[name]:
            buffer = self._spare[name].pop()
            buffer.fill(encoder.fill_value)
        else:
            buffer = np.full((span,) + self.shapes[name][1:], encoder.fill_value, dtype=encoder.dtype)
        lo, hi = index * span, min(self._base_committed, (index + 1) * span)
        if hi > lo:  # resuming inside this chunk: its committed rows are on storage
            buffer[: hi - lo] = self.arrays[name][lo:hi]
        return buffer

    # -- draining -----------------------------------------------------------------------------------
    def drain(self) -> None:
        """Wait until every submitted block is done (written or failed)."""
        with self._outstanding_lock:
            pending = list(self._outstanding)
        for block in pending:
            block._event.wait()

    def close(self) -> None:
        """Drain, stop the pool's threads and close what the sink keeps open."""
        self.drain()
        self._pool.shutdown(wait=True)
        close = getattr(self.sink, "close", None)  # (a LocalSink's kept folders)
        if close is not None:
            close()
