"""Cost of recording a user's model with ModuleRecorder against the same loop without it (CPU).

    python bench/module_overhead.py [--steps 200] [--repeats 3] [--width 256] [--threads N]

An MLP 784-W-W-10 trained by minibatch SGD (batch 256) on random data; each repeat runs the bare loop
and the recorded loop back to back (every parameter recorded at every step into a temporary local
root), and the table reports their medians and the ratio recorded / bare measured in the same run.
``--threads N`` sets torch's intra-op threads for both loops (default: torch's own, one per core): the
recorder's copies and the store's writes take a core, and torch's parallel ops wait for the slowest of
their threads, so a loop using every core pays for recording more than one that leaves a core free.
Also: the import time of ``trajscope.store`` against ``trajscope.analysis`` (fresh interpreters).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

import trajscope


def loop(model, x, y, steps, rec=None) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if rec is not None:
        rec.record()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (256,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.record(loss=loss)
    if rec is not None:
        rec.close()
    return time.perf_counter() - start


def import_seconds(module: str, repeats: int = 3) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True).stdout) for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = p.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads {args.threads}: give a positive number of threads")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(4096, 784), torch.randint(0, 10, (4096,))

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                             nn.Linear(args.width, 10))

    bare, recorded = [], []
    state_mib = sum(p.numel() * 4 for p in mlp().parameters()) / 2**20
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.repeats):
            bare.append(loop(mlp(), x, y, args.steps))
            rec = trajscope.ModuleRecorder(mlp(), root=root, name=f"r{i}")
            recorded.append(loop(rec.module, x, y, args.steps, rec))
    b, r = statistics.median(bare), statistics.median(recorded)
    store_s, analysis_s = import_seconds("trajscope.store"), import_seconds("trajscope.analysis")
    print(f"MLP 784-{args.width}-{args.width}-10, {state_mib:.2f} MiB per state, {args.steps} steps, "
          f"median of {args.repeats}, {torch.get_num_threads()} torch threads")
    print("| measure | value |\n|---|---|")
    print(f"| bare loop | {b:.2f} s ({args.steps / b:.0f} steps/s) |")
    print(f"| recorded every step | {r:.2f} s ({args.steps / r:.0f} steps/s, {state_mib * args.steps / r:.0f} MiB/s) |")
    print(f"| **recorded / bare** | **{r / b:.3f}** |")
    print(f"| import trajscope.store / import trajscope.analysis | {store_s:.2f} s / {analysis_s:.2f} s "
          f"= {store_s / analysis_s:.2f} |")


if __name__ == "__main__":
    main()
