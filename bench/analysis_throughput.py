"""Benchmark: the full analysis summary over a run of ≥ 1 GB of W, against one raw read of that W.

    python bench/analysis_throughput.py [--gb 1.0] [--h 100] [--d 500] [--dir /tmp]

Writes the run through the real store writer (procedural trajectory) into a temporary directory,
then in this process: (1) reads and decodes W once (dask, threaded scheduler, a no-op reduction),
(2) runs ``trajscope.analysis.summary`` on the same run. Prints a table with the ratio and the peak
RSS growth of each phase, and deletes the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "analysis"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of W in GB (10^9 bytes)")
    ap.add_argument("--h", type=int, default=100)
    ap.add_argument("--d", type=int, default=500)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()

    from bigrun import write_big_run

    steps = int(np.ceil(args.gb * 1e9 / (args.h * args.d * 4)))
    root = tempfile.mkdtemp(prefix="trajscope-bench-", dir=args.dir)
    try:
        t0 = time.perf_counter()
        nbytes = write_big_run(root, "bench", steps=steps, h=args.h, D=args.d, n=args.n)
        t_write = time.perf_counter() - t0
        # analysis in a fresh process so the writer's buffers do not mask the peak
        code = (
            "import json, time\n"
            "import trajscope\n"
            "from trajscope.analysis.summary import summary\n"
            f"ds = trajscope.open_run('bench', root={root!r})\n"
            "ds.isel(step=0).W.values\n"
            "def st(key):\n"
            "    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))\n"
            "def reset():\n"
            "    open('/proc/self/clear_refs', 'w').write('5')\n"
            "    return st('VmRSS')\n"
            "rss = lambda: st('VmHWM')\n"
            "base = reset(); t = time.perf_counter()\n"
            "ds.W.data.map_blocks(lambda b: b[:1, :1, :1] * 0, chunks=(1, 1, 1)).sum().compute()\n"
            "t_read = time.perf_counter() - t; after_read = rss(); base2 = reset(); t = time.perf_counter()\n"
            "s = summary(ds)\n"
            "t_sum = time.perf_counter() - t; after_sum = rss()\n"
            "print(json.dumps(dict(t_read=t_read, t_sum=t_sum, base=base, base2=base2, after_read=after_read,"
            " after_sum=after_sum, chunk=ds.W.data.chunksize, states=int(s['n_states']),"
            " stable_rank=float(s['stable_rank_final']))))\n"
        )
        import json
        import subprocess

        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    chunk_mib = np.prod(r["chunk"]) * 4 / 2**20
    print(f"run: W {nbytes / 1e9:.2f} GB = {steps} states x h={args.h} x D={args.d} float32, chunk "
          f"{r['chunk']} ({chunk_mib:.1f} MiB), n={args.n}, written in {t_write:.1f} s; {os.cpu_count()} cores")
    print(f"{'phase':<28}{'seconds':>10}{'GB/s':>8}{'peak RSS growth MiB':>22}")
    print(f"{'read+decode W once':<28}{r['t_read']:>10.2f}{nbytes / 1e9 / r['t_read']:>8.2f}"
          f"{r['after_read'] - r['base']:>22.0f}")
    print(f"{'summary (all quantities)':<28}{r['t_sum']:>10.2f}{nbytes / 1e9 / r['t_sum']:>8.2f}"
          f"{r['after_sum'] - r['base2']:>22.0f}")
    print(f"ratio summary / read: {r['t_sum'] / r['t_read']:.2f}   (goal ≤ 2)")


if __name__ == "__main__":
    main()
