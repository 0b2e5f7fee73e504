"""Cost of recording a user's model with ModuleRecorder against the same loop without it (CPU).

    python bench/module_overhead.py [--steps 200] [--repeats 3] [--width 256] [--threads N] [--dir DIR]

An MLP 784-W-W-10 trained by minibatch SGD (batch 256) on random data; each repeat runs three loops in a
rotating order: the bare loop, the recorded loop (every parameter recorded at every step into a new run
under ``--dir``, default a temporary directory of ``TMPDIR``), and the recorded loop with its chunk files
not written (the store's sink drops them: the recorder's copies, the checksums and the store's Python work
without the file system). Before each loop, untimed, ``os.sync()`` writes back the dirty pages of the
loops before it, and a recorded run is deleted after its loop: a loop that writes more than the kernel
keeps dirty (``vm.dirty_background_ratio``, e.g. a long ``--steps``) pays for the write-back of its own
files, as a long training run does. The table reports the medians of each loop's time and process CPU
time, and the median and range of its ratios to the bare loop of the same repeat (a median of ratios, not
the ratio of the median times: a repeat where the machine is slow is slow for all three loops).
``--threads N`` sets torch's intra-op threads for all loops (default: torch's own, one per core). Each
recorded loop includes creating and closing its run.
Also: the import time of ``trajscope.store`` against ``trajscope.analysis`` (fresh interpreters).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

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


@contextmanager
def files_dropped():
    """Chunk files are encoded but not written (the local sink's ``put`` does nothing) inside the block."""
    from trajscope.store.chunkio import LocalSink

    put = LocalSink.put
    LocalSink.put = lambda self, key, parts: None
    try:
        yield
    finally:
        LocalSink.put = put


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
    p.add_argument("--dir", default=None, help="where the runs are recorded (default: a temporary directory of TMPDIR)")
    args = p.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        p.error(f"--dir {args.dir}: not a directory; give an existing directory to record the runs under")
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

    names = ["bare loop", "recorded every step", "recorded, chunk files not written"]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    state_mib = sum(p.numel() * 4 for p in mlp().parameters()) / 2**20
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        for i in range(args.repeats):
            for name in names[i % 3:] + names[: i % 3]:  # rotate the order
                os.sync()  # untimed: no loop pays for writing back another's dirty pages
                cpu_start = time.process_time()
                if name == "bare loop":
                    seconds[name].append(loop(mlp(), x, y, args.steps))
                else:
                    with files_dropped() if name != "recorded every step" else contextlib.nullcontext():
                        rec = trajscope.ModuleRecorder(mlp(), root=root, name=f"r{i}-{names.index(name)}")
                        run_dir = rec.root.run_url(rec.run_id)
                        seconds[name].append(loop(rec.module, x, y, args.steps, rec))
                cpu[name].append(time.process_time() - cpu_start)
                if name != "bare loop":
                    shutil.rmtree(run_dir)  # untimed
    bare = seconds["bare loop"]
    store_s, analysis_s = import_seconds("trajscope.store"), import_seconds("trajscope.analysis")
    print(f"MLP 784-{args.width}-{args.width}-10, {state_mib:.2f} MiB per state, {args.steps} steps, "
          f"median of {args.repeats}, {torch.get_num_threads()} torch threads, runs under {os.path.dirname(root)}")
    print("| loop | time | CPU time | time / bare (median; range over repeats) |\n|---|---|---|---:|")
    for name in names:
        t = statistics.median(seconds[name])
        ratios = [r / b for r, b in zip(seconds[name], bare)]
        ratio = statistics.median(ratios)
        rate = f", {state_mib * args.steps / t:.0f} MiB/s" if name != "bare loop" else ""
        print(f"| {name} | {t:.2f} s ({args.steps / t:.0f} steps/s{rate}) | {statistics.median(cpu[name]):.2f} s | "
              f"{'**' if name == 'recorded every step' else ''}{ratio:.3f}{'**' if name == 'recorded every step' else ''} "
              f"({min(ratios):.2f}–{max(ratios):.2f}) |")
    print(f"\nimport trajscope.store / import trajscope.analysis: {store_s:.2f} s / {analysis_s:.2f} s "
          f"= {store_s / analysis_s:.2f}")


if __name__ == "__main__":
    main()
