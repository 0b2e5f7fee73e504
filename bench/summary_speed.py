"""Benchmark: ``summary`` of small runs computed lazily with dask (as before ``IN_MEMORY_BYTES``) against the run
read into memory first (now, for a run of at most 16 MiB).

    python bench/summary_speed.py [--runs 5] [--steps 100] [--repeats 3]

Records ``--runs`` tiny two-layer runs (h=2, D=2, n=4) into a temporary root, then times ``summary`` of each, both
ways, ``--repeats`` times in alternation (after one warm-up call each). Prints the median seconds a run, their ratio,
and whether the two summaries agree to 1e-12 on every variable.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time

import numpy as np

CONFIG = {"data": {"kind": "synthetic", "n": 4, "dim": 2, "mu": 0.05}, "model": {"width": 2},
          "init": {"kind": "balanced", "scale": 1e-3}, "train": {"lr": 0.01}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from trajscope.producer import produce
    from trajscope.store import open_run

    summary_module = importlib.import_module("trajscope.analysis.summary")
    with tempfile.TemporaryDirectory() as root:
        names, seed = [], 0
        while len(names) < args.runs:  # (a seed whose random data cannot reach mu is refused: the next one)
            seed += 1
            try:
                produce({**CONFIG, "seed": seed, "train": {**CONFIG["train"], "steps": args.steps}}, root=root,
                        name=f"r{seed}")
                names.append(f"r{seed}")
            except Exception:  # noqa: BLE001
                continue
        limits = {"lazy (dask)": 0, "in memory": summary_module.IN_MEMORY_BYTES}
        seconds = {label: [] for label in limits}
        results = {}
        for repeat in range(args.repeats + 1):
            for label, limit in limits.items():
                summary_module.IN_MEMORY_BYTES = limit
                began = time.perf_counter()
                results[label] = [summary_module.summary(open_run(name, root)) for name in names]
                if repeat:  # (the first pass warms imports and caches)
                    seconds[label].append((time.perf_counter() - began) / len(names))
    same = all(np.allclose(a[v].values, b[v].values, rtol=1e-12, atol=0, equal_nan=True)
               for a, b in zip(results["lazy (dask)"], results["in memory"]) for v in a.data_vars)
    print(f"summary of {args.runs} runs of {args.steps + 1} states, median of {args.repeats} repeats")
    print(f"{'way':<14} {'s a run':>8}")
    for label, values in seconds.items():
        print(f"{label:<14} {statistics.median(values):>8.3f}")
    ratio = statistics.median(seconds["in memory"]) / statistics.median(seconds["lazy (dask)"])
    print(f"in memory / lazy: {ratio:.3f}; same numbers: {same}")


if __name__ == "__main__":
    main()
