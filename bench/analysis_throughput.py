"""Benchmark: the full analysis summary over a run of ≥ 1 GB of W, against one raw read of that W.

    python bench/analysis_throughput.py [--gb 1.0] [--h 100] [--d 500] [--repeat 5] [--dir /tmp]
    python bench/analysis_throughput.py --root DIR [--keep]     # reuse (or keep) a written run

Writes the run through the real store writer (procedural trajectory) into a temporary directory,
then, in a fresh process on that run, alternates the two phases ``--repeat`` times (read, summary,
read, summary, …, so that load from other processes hits both alike): (1) read and decode W once
(dask, threaded scheduler, a no-op reduction per chunk), (2) ``trajscope.analysis.summary``. Prints
every repeat, the medians, the median of the per-pair ratios, the process CPU time and the peak RSS
growth of each phase (VmHWM, reset before each phase) and how many chunks of W each phase read; deletes the run unless
``--keep`` or ``--root`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "analysis"))

RUN_ID = "bench"

CHILD = """
import json, sys, time
import trajscope
from trajscope.analysis.summary import summary

root, repeat = sys.argv[1], int(sys.argv[2])
ds = trajscope.open_run({run!r}, root=root)
ds.isel(step=0).W.values  # warm imports and the first read

reads = [0]
from zarr.core.array import Array as _ZArray  # count chunk reads of W (getitem on the zarr array)
_orig = _ZArray.__getitem__
def _counting(self, sel):
    if self.shape == ds.W.shape:
        reads[0] += 1
    return _orig(self, sel)
_ZArray.__getitem__ = _counting

def st(key):
    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))
def reset():
    open('/proc/self/clear_refs', 'w').write('5')
    return st('VmRSS')

def read_once():
    return ds.W.data.map_blocks(lambda b: b[:1, :1, :1] * 0, chunks=(1, 1, 1)).sum().compute()

out = []
for i in range(repeat):
    rec = {{}}
    for phase, fn in (("read", read_once), ("summary", lambda: summary(ds))):
        reads[0] = 0
        base = reset(); t = time.perf_counter(); c = time.process_time()
        res = fn()
        rec[phase] = time.perf_counter() - t
        rec[phase + "_cpu"] = time.process_time() - c
        rec[phase + "_rss"] = st('VmHWM') - base
        rec[phase + "_reads"] = reads[0]
        if phase == "summary":
            rec["states"] = int(res["n_states"]); rec["stable_rank"] = float(res["stable_rank_final"])
    out.append(rec)
    print(json.dumps(rec), file=sys.stderr, flush=True)
print(json.dumps(dict(runs=out, chunk=ds.W.data.chunksize, nchunks=ds.W.data.npartitions)))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of W in GB (10^9 bytes)")
    ap.add_argument("--h", type=int, default=100)
    ap.add_argument("--d", type=int, default=500)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved (read, summary) pairs")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--root", help="use the run already written under this root (written there if absent)")
    ap.add_argument("--keep", action="store_true", help="do not delete the run afterwards")
    args = ap.parse_args()

    from bigrun import write_big_run

    steps = int(np.ceil(args.gb * 1e9 / (args.h * args.d * 4)))
    nbytes = steps * args.h * args.d * 4
    root = args.root or tempfile.mkdtemp(prefix="trajscope-bench-", dir=args.dir)
    t_write = float("nan")
    try:
        if not (Path(root) / f"{RUN_ID}.zarr").exists():
            t0 = time.perf_counter()
            nbytes = write_big_run(root, RUN_ID, steps=steps, h=args.h, D=args.d, n=args.n)
            t_write = time.perf_counter() - t0
        # analysis in a fresh process so the writer's buffers do not mask the peak
        proc = subprocess.run([sys.executable, "-c", CHILD.format(run=RUN_ID), root, str(args.repeat)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-4000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if not (args.keep or args.root):
            shutil.rmtree(root, ignore_errors=True)
    runs = r["runs"]
    nbytes = runs[0]["states"] * args.h * args.d * 4
    chunk_mib = np.prod(r["chunk"]) * 4 / 2**20
    print(f"run: W {nbytes / 1e9:.2f} GB = {runs[0]['states']} states x h={args.h} x D={args.d} float32, "
          f"{r['nchunks']} chunks {r['chunk']} ({chunk_mib:.1f} MiB), n={args.n}, written in {t_write:.1f} s; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'repeat':<8}{'read s':>8}{'summary s':>11}{'ratio':>7}{'CPU s read/summary':>20}"
          f"{'RSS MiB read/summary':>22}{'chunk reads read/summary':>26}")
    for i, x in enumerate(runs):
        print(f"{i + 1:<8}{x['read']:>8.2f}{x['summary']:>11.2f}{x['summary'] / x['read']:>7.2f}"
              f"{x['read_cpu']:>11.2f} / {x['summary_cpu']:<6.2f}"
              f"{x['read_rss']:>13.0f} / {x['summary_rss']:<7.0f}{x['read_reads']:>16} / {x['summary_reads']:<6}")
    keys = ("read", "summary", "read_cpu", "summary_cpu", "read_rss", "summary_rss")
    med = {k: statistics.median(x[k] for x in runs) for k in keys}
    ratio = statistics.median(x["summary"] / x["read"] for x in runs)
    print(f"median  {med['read']:>8.2f}{med['summary']:>11.2f}{ratio:>7.2f}"
          f"{med['read_cpu']:>11.2f} / {med['summary_cpu']:<6.2f}"
          f"{med['read_rss']:>13.0f} / {med['summary_rss']:<7.0f}")
    print(f"read {nbytes / 1e9 / med['read']:.2f} GB/s, summary {nbytes / 1e9 / med['summary']:.2f} GB/s; "
          f"median ratio summary / read: {ratio:.2f} (ratio of medians {med['summary'] / med['read']:.2f}; "
          f"goal ≤ 2); peak RSS growth of the summary {max(x['summary_rss'] for x in runs):.0f} MiB "
          f"= {max(x['summary_rss'] for x in runs) / chunk_mib:.1f} chunks")


if __name__ == "__main__":
    main()
