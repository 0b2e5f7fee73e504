"""BLAS thread control in the analysis kernels: three implementations of ``single_threaded``.

``ctypes`` is the former analysis/_blas.py (f2cbd3d: one OpenBLAS found in /proc/self/maps),
``tpc-limit`` threadpoolctl's own ``limit()`` (bench/_blas_threadpoolctl_limit.py), ``now`` the current
one (threadpoolctl finds every OpenBLAS, their own setters set them). Measures, interleaved in one run:
the cost of one enter/exit, a chunk kernel (Gram + eigvalsh) over 60 chunks, and whether a limit
entered from a worker thread really reaches every BLAS (threadpool_info() inside: 1 thread?).

    git show f2cbd3d:analysis/_blas.py > /tmp/blas_ctypes.py
    python bench/blas_threads.py --ctypes-module /tmp/blas_ctypes.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from trajscope.analysis import _blas as blas_tpc

HERE = Path(__file__).resolve().parent


def load_ctypes_version(path: Path):
    spec = importlib.util.spec_from_file_location("blas_ctypes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def enter_exit_seconds(ctx, n: int = 20000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with ctx():
            pass
    return (time.perf_counter() - start) / n


def kernel_seconds(ctx, blocks: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for W in blocks:
        with ctx():
            G = np.einsum("khd,kgd->khg", W, W)
            np.linalg.eigvalsh(G)
    return time.perf_counter() - start


def limited_from_a_worker_thread(ctx) -> bool:
    """Does a limit entered in a worker thread set every BLAS to 1 (after the main thread set one)?"""
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        def kernel():
            with ctx():
                seen.extend(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

        worker = threading.Thread(target=kernel)
        worker.start()
        worker.join()
    return bool(seen) and set(seen) == {1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ctypes-module", type=Path, required=True,
                        help="the former analysis/_blas.py (git show f2cbd3d:analysis/_blas.py > FILE)")
    args = parser.parse_args()
    variants = {"ctypes": load_ctypes_version(args.ctypes_module).single_threaded,
                "tpc-limit": load_ctypes_version(HERE / "_blas_threadpoolctl_limit.py").single_threaded,
                "now": blas_tpc.single_threaded}
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((64, 50, 40)) for _ in range(60)]
    enter = {k: [] for k in variants}
    kernel = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved: every variant sees the same machine load
        for name, ctx in variants.items():
            enter[name].append(enter_exit_seconds(ctx) * 1e6)
            kernel[name].append(kernel_seconds(ctx, blocks))
    print(f"{'variant':10s} {'enter/exit µs':>14s} {'kernel s':>9s} {'kernel / ctypes':>16s} {'worker limit reaches all BLAS':>30s}")
    base = statistics.median(kernel["ctypes"])
    for name, ctx in variants.items():
        k = statistics.median(kernel[name])
        print(f"{name:10s} {statistics.median(enter[name]):14.1f} {k:9.3f} {k / base:16.2f} "
              f"{str(limited_from_a_worker_thread(ctx)):>30s}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
