"""The recording ceiling: how fast states reach a store root with no training at all.

For each root (a local directory, tmpfs ``/dev/shm`` if present, ``memory://``), in one run, the
reference trajectory's states (h=100, D=784, n=1000: ``W``, ``v``, ``loss``, ``output``, ``step``,
``t``; 318 kB a state; ``--config wide``: h=2000, n=10000, 6.3 MB a state, the issue's 8× config;
``--config mnist-like``: h=50, n=10000) are moved nine ways; each figure is MB of states per second
(1 MB = 1e6 bytes):

- **raw parallel**: the chunk files of ``T`` states per variable (``T`` = the store's chunk length,
  8 MiB of ``W``, or 4 states of a large one), each with its crc32c appended, written by ``--threads``
  threads (open/write/close, no rename; for ``memory://`` one ``pipe_file`` of the bytes made by the store's ``joined``, which copies
  without holding the GIL as the store does: ``b"".join`` holds it, and a baseline that copies more slowly
  than the store is no ceiling)
  — what the hardware and the OS give;
- **raw parallel, from the states**: the same chunk files, their bytes gathered with one ``writev`` from the
  per-state arrays the recorders are fed (each state its own allocation, as a training loop hands them
  over; a contiguous 8 MB block gets huge pages from numpy, a 313 kB state does not) — what the hardware
  gives for the memory a recorder that copies nothing must write from;
- **plain zarr**: a zarr-python v3 array per variable with the store's codecs, one chunk per call;
- **store write path**: :meth:`RunWriter.write_block` per block, commits as the recorder makes them;
- **store write path, from the states**: the same, each block's ``W`` given as the per-state arrays the recorders
  are fed (:class:`~trajscope.store.chunkio.StateRows`, what the by-reference recorder hands the store), every
  block submitted at once: what separates the recorder from it is the recorder's own work (its ``record()`` calls,
  the hand-offs, the chunk buffers it waits for), what separates it from raw parallel from the states the store's;
- **recorder**: :class:`trajscope.producer.recorder.Recorder` fed one state per call (CPU tensors,
  no training), closed at the end (everything committed), with the store's write threads in this
  process, the way the two-layer producer records on the CPU when it writes through the page cache
  (``record.io: buffered``, and ``auto`` off ext2/3/4 and xfs): by reference (the states are kept, not
  copied, the ``record()`` call completing a chunk hands it to the write pool, and the chunk files are
  written from the states' memory). The states fed are ``2 T`` distinct tensors made before the clock
  starts, fed in turn (a training loop hands a new tensor every step; one constant tensor would stay in
  the cache);
- **recorder, copying**: the same, each state copied into the chunk buffers, the ``record()`` call that
  fills one handing it to the write pool (what ``ModuleRecorder`` does on the CPU with buffered writes, whose
  optimizer changes parameters in place; the GPU path copies the same way, then its writer thread hands the
  chunk over after the device-to-host copy);
- **recorder, direct I/O**: copying, each chunk written with ``O_DIRECT`` from the page-aligned chunk buffers
  (``record.io: direct``, local roots; ``auto`` picks it for CPU training on ext2/3/4 or xfs), with the 4 write
  threads direct writes get; compare it with **raw parallel, direct I/O**, the same chunk files written with
  ``O_DIRECT`` from page-aligned memory by ``--threads`` threads (``recorder_direct_over_raw_direct``): both
  are bound by the disk, not the page cache. The other recorder rows write buffered, as a GPU run does;
- **recorder, writer process**: copying into shared-memory buffers, with ``record.writer: process``
  (local roots only): a second process writes and commits. The process is started before the
  clock starts (``produce`` starts it before building the dataset, so its start-up overlaps that).
- **recorder, from the device** (``--device cuda``): the fed states are device tensors (made before the clock
  starts), each state copied into pinned chunk buffers with one asynchronous copy launch, the writer thread
  handing a chunk to the store once its copy is done: the path of a GPU run (the issue's "Recorder, constant
  GPU tensor, no training" row), whose chunks reach the store contiguous, with no gather. **..., loop hands
  over**: the same with ``record.writer: loop``. ``--device cpu`` runs both rows with CPU tensors (the
  copying recorder; the loop hands over nothing on the CPU), to rehearse them on a machine without a GPU.

Every path moves the same ``2 T`` distinct states (two blocks, taken in turn), made before the clock
starts: the raw write, plain zarr and the store path write block ``i % 2`` as chunk ``i``, the recorders
are fed the same states one by one. (Until 2026-11-28 the first three wrote one block over and over,
which stays in the CPU cache while the recorders' states did not.) ``--write-threads`` sets the store's
write threads (store path and recorders; default: the store's own choice, one per core, at most 4, on a
local root); ``--buffers`` the recorders' chunk buffers (default: theirs, one per write thread plus one, at
least 3; ``--buffers 3`` is the default before commit fec39c2).

Each MB/s is the median of ``--repeats`` interleaved runs (the order rotates between repeats; ``sync``
before each, untimed, so none pays for another's dirty pages); each ratio is the median of the per-repeat
ratios against a raw path of the same root and repeat. ``--json`` prints one JSON object (with key
``recorder_over_raw`` = the recorder with its default writer (the thread) over raw parallel on the
local-dir root; ``recorder_over_raw_from_states`` the same over raw parallel from the states;
``recorder_process_over_raw`` with the writer process; ``recorder_copying_over_raw`` the copying recorder;
``store_over_raw`` the store write path; ``store_from_states_over_raw_from_states`` the store write path fed the
states over raw parallel from the states; ``recorder_device_over_raw`` and ``recorder_device_loop_over_raw`` the
``--device`` rows (``None`` without ``--device``); ``recorder_direct_over_raw_direct`` the direct-I/O recorder over raw
parallel direct I/O; ``over_raw`` and ``over_raw_from_states`` every path on every root; ``recorder_ratio_range``
the lowest and highest single-repeat ratio of the recorder over raw parallel, per root; ``write_threads`` and
``buffers`` the buffered recorders', ``direct_write_threads`` and ``direct_buffers`` the direct-I/O recorder's).

    python bench/record_ceiling.py [--config reference|mnist-like|wide] [--quick] [--mb 512] [--repeats 3]
                                   [--write-threads N] [--buffers N] [--roots local,tmpfs,memory] [--device cuda]
                                   [--json] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: ``--config`` name -> (h, n); D = 784 for all (the configs of ``record_overhead.py`` and the issue's table)
CONFIGS = {"reference": (100, 1000), "mnist-like": (50, 10000), "wide": (2000, 10000)}
D = 784
DTYPES = {"W": "float32", "v": "float32", "loss": "float64", "output": "float32", "step": "int64", "t": "float64"}
#: the rows ``--device`` adds: the recorder fed states on the device, with the writer thread / the loop handing over
DEVICE_ROW, DEVICE_LOOP_ROW = "recorder, from the device", "recorder, from the device, loop hands over"


def use_config(name: str) -> None:
    """Set the states every path moves (module globals ``H``, ``N``, ``SHAPES``, ``STATE_BYTES``) to a config's."""
    global H, N, SHAPES, STATE_BYTES
    H, N = CONFIGS[name]
    SHAPES = {"W": (H, D), "v": (H,), "loss": (), "output": (N,), "step": (), "t": ()}
    STATE_BYTES = sum(int(np.prod(s, dtype=np.int64)) * np.dtype(DTYPES[n]).itemsize for n, s in SHAPES.items())


use_config("reference")


def chunk_steps() -> int:
    """The store's commit unit for these states: the time length of a ``W`` chunk (its chunk policy)."""
    from trajscope.store.layout import chunk_plan

    return chunk_plan(SHAPES, DTYPES, capacity=1).chunk_steps


def blocks(T: int) -> dict[str, np.ndarray]:
    """One block of ``T`` states of every variable (random values: incompressible, like weights)."""
    rng = np.random.default_rng(0)
    return {n: (rng.normal(size=(T, *s)).astype(DTYPES[n]) if DTYPES[n] != "int64" else np.arange(T))
            for n, s in SHAPES.items()}


class Root:
    """A fresh, empty store root of one kind; ``close`` removes it."""

    def __init__(self, kind: str, local_dir: str | None):
        self.kind = kind
        if kind == "memory":
            self.location = f"memory://ceiling-{uuid.uuid4().hex[:8]}"
        else:
            base = "/dev/shm" if kind == "tmpfs" else local_dir
            self.location = tempfile.mkdtemp(prefix="ts-ceiling-", dir=base)

    def fs_and_base(self):
        import fsspec

        if self.kind == "memory":
            fs, path = fsspec.core.url_to_fs(self.location)
            return fs, path
        return None, self.location

    def close(self) -> None:
        if self.kind == "memory":
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.location)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        else:
            shutil.rmtree(self.location, ignore_errors=True)


def two_blocks(T: int) -> list[dict[str, np.ndarray]]:
    """The ``2 T`` distinct states every path moves, as two blocks of ``T``."""
    data = blocks(2 * T)
    return [{n: a[:T] for n, a in data.items()}, {n: a[T:] for n, a in data.items()}]


def state_pool(T: int) -> list[dict[str, np.ndarray]]:
    """The same ``2 T`` states, one array per state and variable, each its own allocation (as a training
    loop hands them over: 313 kB of ``W``, in 4 kB pages, where a contiguous 8 MB block gets huge pages)."""
    data = blocks(2 * T)
    return [{n: np.array(data[n][i]) for n in SHAPES} for i in range(2 * T)]


def raw_parallel(root: Root, states: int, T: int, threads: int, from_states: bool = False,
                 direct: bool = False) -> float:
    """Raw chunk files written by ``threads`` threads: each block's contiguous bytes, or (``from_states``)
    the same bytes gathered from the per-state arrays of :func:`state_pool` with one ``writev``; ``direct``:
    each block's bytes from page-aligned memory, a file's aligned prefix written with ``O_DIRECT``."""
    from trajscope.store.chunkio import aligned_empty, checksum, direct_bytes, joined, write_direct

    fs, base = root.fs_and_base()
    if direct and fs is not None:
        return float("nan")  # direct I/O is a local filesystem's
    payloads = [{n: np.ascontiguousarray(a).reshape(-1).view(np.uint8) for n, a in block.items()}
                for block in two_blocks(T)]
    if direct:
        for block in payloads:
            for name, data in block.items():
                block[name] = aligned_empty(data.shape, np.uint8)
                block[name][...] = data
    pool = state_pool(T) if from_states else None

    def put(name: str, index: int) -> None:
        if pool is None:
            parts = [payloads[index % 2][name]]
        else:
            parts = [pool[(index * T + j) % (2 * T)][name].reshape(-1).view(np.uint8) for j in range(T)]
        parts.append(checksum(parts))  # the store's own: crc32c chained over the parts
        key = f"{base}/raw/{name}/c/{index}"
        if fs is not None:
            fs.pipe_file(key, joined(parts))
            return
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            size = direct_bytes(parts) if direct else 0
            if size and write_direct(fd, parts, size):
                return
            written = os.writev(fd, parts)  # 27 buffers at most: one call writes a regular file whole
            if written != sum(len(memoryview(p).cast("B")) for p in parts):
                raise OSError(f"short write of {key}: {written} bytes")
        finally:
            os.close(fd)

    chunks = -(-states // T)
    if fs is None:
        for name in SHAPES:
            os.makedirs(f"{base}/raw/{name}/c", exist_ok=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(lambda job: put(*job), [(n, i) for i in range(chunks) for n in SHAPES]))
    return time.perf_counter() - start


def plain_zarr(root: Root, states: int, T: int) -> float:
    import zarr

    from trajscope.store.layout import codecs_for, fill_value_for

    data = two_blocks(T)
    serializer, compressors = codecs_for("none")
    location = f"{root.location}/plain-{uuid.uuid4().hex[:6]}.zarr"
    store = zarr.storage.FsspecStore.from_url(location) if root.kind == "memory" else zarr.storage.LocalStore(location)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    arrays = {n: group.create_array(n, shape=(states, *s), chunks=(T, *s), dtype=DTYPES[n], serializer=serializer,
                                    compressors=compressors, filters=None, fill_value=fill_value_for(DTYPES[n]))
              for n, s in SHAPES.items()}
    start = time.perf_counter()
    for lo in range(0, states, T):
        hi = min(lo + T, states)
        for name, array in arrays.items():
            array[lo:hi] = data[(lo // T) % 2][name][: hi - lo]
    return time.perf_counter() - start


def _writer(root: Root, states: int, write_threads: int | None = None, io: str = "buffered"):
    from trajscope.producer.two_layer import variables as two_layer_variables
    from trajscope.store import RunWriter, StoreRoot

    writer = RunWriter.create(
        StoreRoot(root.location), f"r{uuid.uuid4().hex[:6]}", variables=two_layer_variables(),
        sizes={"neuron": H, "feature": D, "sample": N}, capacity=states,
        static={"X": np.zeros((N, D), np.float32), "y": np.ones(N, np.int8)}, attrs={},
    )
    writer.set_write_options(threads=write_threads, io=io)
    return writer


def store_path(root: Root, states: int, T: int, write_threads: int | None = None) -> float:
    writer = _writer(root, states, write_threads)
    assert writer.chunk_steps == T
    data = two_blocks(T)
    start = time.perf_counter()
    for lo in range(0, states, T):
        hi = min(lo + T, states)
        writer.write_block(lo, {n: a[: hi - lo] for n, a in data[(lo // T) % 2].items()})
        writer.commit_if_due()
    writer.commit(states)
    seconds = time.perf_counter() - start
    writer.finish("complete")
    return seconds


def store_path_from_states(root: Root, states: int, T: int, write_threads: int | None = None) -> float:
    """The store write path fed what the by-reference recorder hands it, without the recorder: each block's ``W``
    as :class:`~trajscope.store.chunkio.StateRows` of the per-state arrays of :func:`state_pool`, the small
    variables stacked, every block submitted at once (no chunk buffers to wait for)."""
    from trajscope.store.chunkio import StateRows

    writer = _writer(root, states, write_threads)
    pool = state_pool(T)
    start = time.perf_counter()
    for lo in range(0, states, T):
        rows = [pool[i % (2 * T)] for i in range(lo, min(lo + T, states))]
        values = {name: np.stack([row[name] for row in rows]) for name in SHAPES if name != "W"}
        writer.write_block(lo, {**values, "W": StateRows([row["W"] for row in rows])})
        writer.commit_if_due()
    writer.commit(states)
    seconds = time.perf_counter() - start
    writer.finish("complete")
    return seconds


def recorder(root: Root, states: int, T: int, process: bool = False, by_reference: bool = True,
             write_threads: int | None = None, buffers: int | None = None, io: str = "buffered",
             device: str = "cpu", loop_submits: bool = False) -> float:
    """The recorder fed ``states`` states, writing with ``io`` (``direct``: a local root only); ``device``:
    where the fed states are (``cuda``: device tensors, copied to the pinned chunk buffers as a GPU run's are;
    ``loop_submits``: ``record.writer: loop``)."""
    import torch

    from trajscope.producer.recorder import Recorder
    from trajscope.store.writer_process import WriterProcess

    if (process or io == "direct") and root.kind == "memory":
        return float("nan")  # a writer process and direct I/O write local roots only
    handle = WriterProcess.start() if process else None
    writer = _writer(root, states, write_threads, io)
    if handle is not None:
        time.sleep(1.0)  # untimed: the interpreter's start-up (produce overlaps it with the dataset build)
    shapes = {n: SHAPES[n] for n in ("W", "v", "loss", "output")}
    dtypes = {n: getattr(torch, DTYPES[n]) for n in shapes}
    on = torch.device(device)
    pool = [{n: torch.from_numpy(state[n]).to(on) for n in shapes} for state in state_pool(T)]
    columns = {"step": np.arange(states), "t": np.arange(states) * 0.01}
    if on.type == "cuda":
        torch.cuda.synchronize(on)
    start = time.perf_counter()
    options = {} if buffers is None else {"buffers": buffers}  # (a revision before fec39c2 takes no None)
    if loop_submits:
        options["loop_submits"] = True
    rec = Recorder(writer, shapes, dtypes, on, columns=columns, process=handle,
                   by_reference=by_reference and handle is None and on.type == "cpu", **options)
    for i in range(states):
        rec.record(**pool[i % len(pool)])
    rec.close()
    seconds = time.perf_counter() - start
    writer.finish("complete")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="reference", choices=list(CONFIGS),
                        help="the states: reference (313 kB of W), mnist-like (157 kB), wide (6.3 MB)")
    parser.add_argument("--quick", action="store_true", help="96 MB per measurement, one repeat (< 1 min)")
    parser.add_argument("--mb", type=float, default=512.0, help="MB of states per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="threads of the raw parallel write")
    parser.add_argument("--write-threads", type=int, default=None,
                        help="the store's write threads (default: its own choice for the root)")
    parser.add_argument("--buffers", type=int, default=None,
                        help="the recorders' chunk buffers (default: their own choice, write threads + 1, at least 3)")
    parser.add_argument("--dir", default=os.environ.get("TRAJSCOPE_BENCH_DIR", "."), help="the local-dir root's parent")
    parser.add_argument("--roots", default="local,tmpfs,memory")
    parser.add_argument("--device", default=None,
                        help="add two rows: the recorder fed states on this device (cuda: a GPU run's path, device "
                             "tensors into pinned chunk buffers), with the writer thread and with record.writer loop")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write", type=Path, default=None, help="update this BENCHMARKS.md section")
    args = parser.parse_args()
    use_config(args.config)
    if args.quick:
        args.mb, args.repeats = 96.0, 1
    states = max(int(args.mb * 1e6 // STATE_BYTES), 1)
    T = chunk_steps()
    kinds = [k for k in args.roots.split(",") if k != "tmpfs" or os.path.isdir("/dev/shm")]
    from trajscope.producer.staging import default_buffers
    from trajscope.store.hotpath import default_write_threads

    wt, nb = args.write_threads, args.buffers
    if nb is not None and nb < 2:
        parser.error(f"--buffers {nb}: a recorder needs at least 2 chunk buffers")

    def paths(n: int) -> dict:
        """Each path moving ``n`` states."""
        return {"raw parallel": lambda r: raw_parallel(r, n, T, args.threads),
                "raw parallel, from the states": lambda r: raw_parallel(r, n, T, args.threads, from_states=True),
                "raw parallel, direct I/O": lambda r: raw_parallel(r, n, T, args.threads, direct=True),
                "plain zarr": lambda r: plain_zarr(r, n, T),
                "store write path": lambda r: store_path(r, n, T, wt),
                "store write path, from the states": lambda r: store_path_from_states(r, n, T, wt),
                "recorder": lambda r: recorder(r, n, T, write_threads=wt, buffers=nb),
                "recorder, copying": lambda r: recorder(r, n, T, by_reference=False, write_threads=wt, buffers=nb),
                "recorder, direct I/O": lambda r: recorder(r, n, T, by_reference=False, io="direct",
                                                           write_threads=wt, buffers=nb),
                "recorder, writer process": lambda r: recorder(r, n, T, process=True, write_threads=wt, buffers=nb),
                **({} if args.device is None else {
                    DEVICE_ROW: lambda r: recorder(r, n, T, write_threads=wt, buffers=nb, device=args.device),
                    DEVICE_LOOP_ROW: lambda r: recorder(r, n, T, write_threads=wt, buffers=nb, device=args.device,
                                                        loop_submits=True)})}

    methods = paths(states)
    seconds: dict[tuple[str, str], list[float]] = {}
    warm = paths(2 * T)
    for kind in kinds:  # untimed: imports, first allocations, thread pools
        for method in warm.values():
            root = Root(kind, args.dir)
            try:
                method(root)
            finally:
                root.close()
    names = list(methods)
    for repeat in range(args.repeats):
        for kind in kinds:
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate the order
                root = Root(kind, args.dir)
                try:
                    os.sync()  # every method starts with no dirty pages to write back (untimed)
                    seconds.setdefault((kind, name), []).append(methods[name](root))
                finally:
                    root.close()
    mbs = {key: states * STATE_BYTES / 1e6 / statistics.median(values) for key, values in seconds.items()}
    default = "recorder"  # record.writer's default: thread
    raw, raw_states = "raw parallel", "raw parallel, from the states"

    def over(kind: str, name: str, base: str) -> float:
        """Median over the repeats of (seconds of ``base`` / seconds of ``name``), both of one repeat."""
        return statistics.median(b / x for b, x in zip(seconds[(kind, base)], seconds[(kind, name)]))

    ratios = {base: {kind: {name: over(kind, name, base) for name in methods} for kind in kinds}
              for base in (raw, raw_states, "raw parallel, direct I/O")}

    def local(base: str, name: str) -> float | None:
        value = ratios[base].get("local", {}).get(name)
        return None if value is None or math.isnan(value) else round(value, 3)

    result = {
        "config": args.config, "states": states, "state_bytes": STATE_BYTES, "chunk_steps": T, "repeats": args.repeats,
        "cpus": os.cpu_count(), "write_threads": {k: wt or default_write_threads(k != "memory") for k in kinds},
        "buffers": {k: nb or default_buffers(wt or default_write_threads(k != "memory")) for k in kinds},  # W: 1 file a block
        "direct_write_threads": wt or default_write_threads(True, "direct"),
        "direct_buffers": nb or default_buffers(wt or default_write_threads(True, "direct")),
        "mb_per_s": {kind: {name: None if math.isnan(mbs[(kind, name)]) else round(mbs[(kind, name)], 1)
                            for name in methods} for kind in kinds},
        "over_raw": {kind: {n: None if math.isnan(r) else round(r, 3) for n, r in by.items()}
                     for kind, by in ratios[raw].items()},
        "over_raw_from_states": {kind: {n: None if math.isnan(r) else round(r, 3) for n, r in by.items()}
                                 for kind, by in ratios[raw_states].items()},
        "recorder_ratio_range": {kind: [round(min(b / x for b, x in zip(seconds[(kind, raw)], seconds[(kind, default)])), 3),
                                        round(max(b / x for b, x in zip(seconds[(kind, raw)], seconds[(kind, default)])), 3)]
                                 for kind in kinds},
        "recorder_over_raw": local(raw, default),
        "recorder_over_raw_from_states": local(raw_states, default),
        "recorder_copying_over_raw": local(raw, "recorder, copying"),
        "recorder_process_over_raw": local(raw, "recorder, writer process"),
        "recorder_direct_over_raw_direct": local("raw parallel, direct I/O", "recorder, direct I/O"),
        "store_over_raw": local(raw, "store write path"),
        "store_from_states_over_raw_from_states": local(raw_states, "store write path, from the states"),
        "device": args.device,
        "recorder_device_over_raw": local(raw, DEVICE_ROW) if args.device else None,
        "recorder_device_loop_over_raw": local(raw, DEVICE_LOOP_ROW) if args.device else None,
    }
    roots = "/".join(kinds)
    lines = ["| path | " + " | ".join(f"MB/s {k}" for k in kinds) + f" | × raw ({roots}) | × raw from the states ({roots}) |",
             "|---|" + "---:|" * (len(kinds) + 2)]
    for name in methods:
        cells = " | ".join("n/a" if math.isnan(mbs[(k, name)]) else f"{mbs[(k, name)]:,.0f}" for k in kinds)
        columns = [("/".join(f"{ratios[base][k][name]:.2f}" for k in kinds)).replace("nan", "n/a")
                   for base in (raw, raw_states)]
        lines.append(f"| {name} | {cells} | {columns[0]} | {columns[1]} |")
    table = "\n".join(lines)
    if args.json:
        print(json.dumps(result))
    else:
        print(table)
        print(f"\n{states} {args.config} states of {STATE_BYTES / 1e3:,.0f} kB, chunks of {T} states, median of {args.repeats}, "
              f"store write threads {result['write_threads']}, recorder buffers {result['buffers']} (direct I/O: "
              f"{result['direct_write_threads']} threads, {result['direct_buffers']} buffers); recorder (default writer: thread) on the local dir: "
              f"{result['recorder_over_raw']} × raw parallel, {result['recorder_over_raw_from_states']} × raw "
              f"parallel from the states; recorder, direct I/O: {result['recorder_direct_over_raw_direct']} × raw "
              f"parallel, direct I/O; single repeats of the recorder over raw parallel ranged "
              f"{result['recorder_ratio_range']}" + (
                  "" if not args.device else f"; recorder fed {args.device} states on the local dir: "
                  f"{result['recorder_device_over_raw']} × raw parallel (the loop handing over: "
                  f"{result['recorder_device_loop_over_raw']})"))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from record_overhead import replace_section

        config = "" if args.config == "reference" else f" --config {args.config}"
        command = f"python bench/record_ceiling.py{config} --mb {args.mb:g} --repeats {args.repeats}" + (
            f" --write-threads {wt}" if wt else "") + (f" --buffers {nb}" if nb else "") + (
            f" --device {args.device}" if args.device else "")
        heading = "## Recording ceiling" + ("" if args.config == "reference" else f" ({args.config} states)")
        section = (
            f"{heading}\n\n`{command}` — the {args.config} states (h={H}, D={D}, n={N}, "
            f"{STATE_BYTES / 1e3:,.0f} kB a state, {states} states, chunks of {T}) with no training, "
            f"{os.cpu_count()} cores, measured {time.strftime('%Y-%m-%d')}; MB/s of states, median of "
            f"{args.repeats} interleaved runs, the store's write threads {result['write_threads']}, the recorders' "
            f"chunk buffers {result['buffers']}; every path "
            f"moves the same {2 * T} distinct states; the ratios are medians of per-repeat ratios against the raw "
            f"parallel rates of the same root and repeat.\n\n{table}\n\nrecorder (default writer: {default}) on the "
            f"local dir: **{result['recorder_over_raw']} × raw parallel** (goal ≥ 0.8), "
            f"{result['recorder_over_raw_from_states']} × raw parallel from the states; with the writer process "
            f"{result['recorder_process_over_raw']} × raw parallel; with direct I/O (the CPU producer's default on "
            f"a disk) {result['recorder_direct_over_raw_direct']} × raw parallel with direct I/O.\n"
        )
        replace_section(args.write, heading, section)


if __name__ == "__main__":
    main()
