"""Where the recording overhead comes from: the store's writing work beside the training loop, in a
thread of the same process, in a separate process, or in a writer process fed from a thread of the loop's
process (what the recorder does with ``record.writer: process`` on a GPU: a copy per variable into
shared memory and one message per block, the process writing and committing).

Beside the training loop, a writer writes whole chunks of the reference shapes through
:class:`~trajscope.store.RunWriter` at the rate a recorder would (one chunk per ``chunk_steps`` steps),
committing as the recorder does. Ratios are the loop's time against the loop alone, medians of
``--repeats`` interleaved runs (min and max of the per-repeat ratios beside them).

``--loop``:

- ``reference`` (default): the reference config of ``record_overhead.py`` on this CPU, no recording;
  the writer paces one chunk per ``chunk_steps`` steps of the loop's own step time, measured in two untimed
  runs first (the faster; its time includes the dataset build, under 1%) (``--pace-us`` to set it; until 2026-11-29 a constant 3.1 ms, the step of the machines of the
  earlier sessions, which on a faster machine wrote below the loop's rate);
- ``launch-bound``: a proxy for a GPU's training loop. On a GPU the reference step is a few dozen small
  kernel launches (3772 steps/s, 265 µs a step, on the issue's H200): Python and dispatch, each op
  releasing and taking back the interpreter lock, with the arithmetic on the device. Here the same
  two-layer code runs on tiny tensors (h=16, D=32, n=64), so each op is a short dispatch under the same
  lock, and the writer writes the *reference* chunks at ``--pace-us`` (default 265) per step, the rate a
  recorder on that GPU must write (1.2 GB/s). What it measures is the share of the loop the store's Python
  takes when it runs in the loop's process (the writer thread), when it does not (a writer process), and
  when only the hand-off to a writer process does. What it leaves out: the loop's own ``record()`` call
  per step (on a GPU one ``_foreach_copy_`` launch), and the device and its copies.

``--pin`` (Linux, 2 cores or more) runs the loop on the first core and the writer on the last one, as on
a machine with cores to spare (a GPU machine): the loop then shares only the interpreter lock, the caches
and the memory bus with the writer, not a core.

    python bench/writer_isolation.py [--loop reference|launch-bound] [--steps N] [--repeats 3]
                                     [--pace-us 265] [--pin] [--dir /dev/shm] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_ceiling as rc  # noqa: E402
import record_overhead as ro  # noqa: E402

#: the reference state (W, v, output, loss, step, t) and the store's chunk length for it (record_ceiling's)
STATE_BYTES = rc.STATE_BYTES
CHUNK_STEPS = rc.chunk_steps()
#: the launch-bound proxy's training problem: the reference code on tiny tensors
TINY = dict(ro.REFERENCE, data={"kind": "synthetic", "n": 64, "dim": 32, "mu": 0.05}, model={"width": 16})


#: states a writer's run can hold (a launch-bound run hands over about 20 000)
CAPACITY = 1_000_000
#: blocks the writer keeps in flight at most (the recorder's default chunk buffers on 4 write threads, less
#: the one being filled): behind its pace it writes as fast as it can, it does not queue without bound
IN_FLIGHT = 4


def _reference_writer(directory: str):
    """A new run of the reference shapes in ``directory``, and one block of made-up states for it (those of
    ``record_ceiling.py``)."""
    writer = rc._writer(SimpleNamespace(location=directory), CAPACITY)
    return writer, rc.blocks(CHUNK_STEPS)


def _paced(stop, step_seconds: float, blocks, hand_over) -> int:
    """Call ``hand_over(index)`` once per ``CHUNK_STEPS`` steps of ``step_seconds`` until ``stop`` is set
    (counting the blocks in ``blocks``, a shared counter); returns the blocks handed over."""
    index = 0
    while not stop.is_set():
        started = time.perf_counter()
        hand_over(index)
        if blocks is not None:
            with blocks.get_lock():
                blocks.value += 1
        index += 1
        time.sleep(max(0.0, CHUNK_STEPS * step_seconds - (time.perf_counter() - started)))
    return index


def write_chunks(stop, directory: str, step_seconds: float, cpu: int | None = None,
                 blocks=None) -> None:
    """Write reference-sized chunks at one chunk per ``chunk_steps`` steps of ``step_seconds`` until ``stop``
    is set (on core ``cpu`` only, if given; the store's write threads, started from here, inherit it),
    at most :data:`IN_FLIGHT` blocks in flight, committing as the recorder does; ``blocks`` (a shared
    counter) counts the blocks handed over."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    writer, block = _reference_writer(directory)
    handles = []

    def hand_over(index: int) -> None:
        if len(handles) >= IN_FLIGHT:
            handles.pop(0).wait()
        handles.append(writer.write_block(index * CHUNK_STEPS, block))
        writer.commit_if_due()  # as the recorder commits: at most every record.commit_seconds

    count = _paced(stop, step_seconds, blocks, hand_over)
    writer.commit(count * CHUNK_STEPS)
    writer.finish("complete")


def feed_writer_process(stop, directory: str, step_seconds: float, cpu: int | None = None,
                        blocks=None) -> None:
    """What the recorder's writer thread does for a writer process on a GPU, from a thread of the loop's
    process: per block, a free slot of the shared chunk buffers, one ``np.copyto`` per variable into it
    (the copy from the pinned buffer), one message; a :class:`~trajscope.store.writer_process.WriterProcess`
    writes and commits, and its receiver thread here takes the ``free`` and ``committed`` messages."""
    if cpu is not None:  # this thread, and the receiver thread and the process it starts
        os.sched_setaffinity(0, {cpu})
    from trajscope.store.writer_process import SharedChunks, WriterProcess

    process = WriterProcess.start()
    writer, block = _reference_writer(directory)
    variables = [n for n in block if n not in ("step", "t")]
    shared = SharedChunks({n: block[n].shape[1:] for n in variables}, {n: str(block[n].dtype) for n in variables},
                          CHUNK_STEPS, IN_FLIGHT)
    free: queue.Queue[int] = queue.Queue()
    for slot in range(IN_FLIGHT):  # as many blocks in flight as the other variants
        free.put(slot)
    errors: list[BaseException] = []
    process.open(writer, shared, {"step": np.arange(CAPACITY), "t": np.arange(CAPACITY) * 1.0},
                 on_free=free.put, on_commit=lambda committed: None, on_error=errors.append)

    def hand_over(index: int) -> None:
        while True:  # a free slot, but notice a dead writer process (as the recorder does)
            if errors:
                raise errors[0]
            try:
                slot = free.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        for name, view in shared.views(slot).items():
            np.copyto(view, block[name])
        process.submit(slot, index * CHUNK_STEPS, CHUNK_STEPS)

    try:
        _paced(stop, step_seconds, blocks, hand_over)
    finally:
        process.close()
    writer.reload_committed()
    writer.finish("complete")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["reference", "launch-bound"], default="reference")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (1000; launch-bound 40000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pace-us", type=float, default=None,
                        help="µs per step of the writer's pace (launch-bound: 265, the H200's reference step; "
                             "reference: the loop's own step, measured first)")
    parser.add_argument("--pin", action="store_true", help="the loop on the first core, the writer on the last")
    parser.add_argument("--dir", default=None, help="where the writer's runs go (default: the system's temp dir)")
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    launch_bound = args.loop == "launch-bound"
    steps = args.steps or (40_000 if launch_bound else 1000)
    cfg = ro.load_config(TINY if launch_bound else ro.REFERENCE, [f"train.steps={steps}"])
    writer_cpu = None
    if args.pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            parser.error("--pin needs at least 2 cores")
        os.sched_setaffinity(0, {cores[0]})  # this thread (the loop); the writer's threads go to the last core
        writer_cpu = cores[-1]
    ro.plain_loop(ro.load_config(TINY if launch_bound else ro.REFERENCE, ["train.steps=200"]))  # untimed warm-up
    if args.pace_us is not None:
        pace = args.pace_us * 1e-6
    elif launch_bound:
        pace = 265e-6
    else:  # untimed: the loop's own step (the faster of two runs, whose time includes the dataset build), so
        pace = min(ro.plain_loop(cfg).seconds for _ in range(2)) / (steps + 1)  # the writer keeps a recorder's rate
    names = ["training alone (baseline)", "writer in a thread", "writer in a process",
             "writer process fed from a thread"]
    targets = {names[1]: write_chunks, names[2]: write_chunks, names[3]: feed_writer_process}
    times: dict[str, list[float]] = {name: [] for name in names}
    written: dict[str, list[float]] = {name: [] for name in names[1:]}  # GB/s handed to the store during the loop
    spawn = mp.get_context("spawn")
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate the order
            if name == names[0]:
                times[name].append(ro.plain_loop(cfg).seconds)
                continue
            with tempfile.TemporaryDirectory(dir=args.dir) as directory:
                blocks = spawn.Value("q", 0)
                job = (directory, pace, writer_cpu, blocks)
                if name != "writer in a process":  # a thread of the loop's process
                    stop = threading.Event()
                    worker = threading.Thread(target=targets[name], args=(stop, *job))
                else:
                    stop = spawn.Event()
                    worker = spawn.Process(target=targets[name], args=(stop, *job))
                worker.start()
                time.sleep(2.0)  # let the writer start (imports, run creation)
                before = blocks.value
                times[name].append(ro.plain_loop(cfg).seconds)
                written[name].append((blocks.value - before) * CHUNK_STEPS * STATE_BYTES / times[name][-1] / 1e9)
                stop.set()
                worker.join()
    base = times[names[0]]
    lines = [f"| variant | time ratio vs baseline (median of {args.repeats}) | min | max | GB/s written meanwhile |",
             "|---|---:|---:|---:|---:|"]
    for name in names:
        ratios = [x / b for x, b in zip(times[name], base)]
        rate_cell = f"{statistics.median(written[name]):.2f}" if name in written else "—"
        lines.append(f"| {name} | {statistics.median(ratios):.3f} | {min(ratios):.3f} | {max(ratios):.3f} "
                     f"| {rate_cell} |")
    table = "\n".join(lines)
    step_us = statistics.median(base) / (steps + 1) * 1e6
    rate = STATE_BYTES / pace / 1e9  # bytes of a reference state per step of the writer's pace
    print(table)
    print(f"\n{args.loop} loop, {steps} steps of {step_us:.0f} µs alone; the writer paced at {pace * 1e6:.0f} µs "
          f"a step ({rate:.2f} GB/s of reference states; the last column: what it handed over while the loop ran, "
          f"less where it could not keep that pace){', pinned' if args.pin else ''}")
    if args.write:
        command = (f"python bench/writer_isolation.py --loop {args.loop} --steps {steps} --repeats {args.repeats}"
                   + (f" --pace-us {args.pace_us:g}" if args.pace_us is not None else "") + (" --pin" if args.pin else "")
                   + (f" --dir {args.dir}" if args.dir else ""))
        heading = "## Writer isolation" + (" (launch-bound loop)" if launch_bound else "")
        section = (
            f"{heading}\n\n`{command}` — the {args.loop} training loop with the store's chunk writing (reference "
            f"shapes, {rate:.2f} GB/s) beside it, in a thread, in a separate process, or in a writer process fed "
            f"from a thread; measured "
            f"{time.strftime('%Y-%m-%d')}.\n\n{table}\n"
        )
        ro.replace_section(args.write, heading, section)


if __name__ == "__main__":
    main()
