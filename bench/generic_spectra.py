"""Generic spectra (``param_singular_values``, ``spectral_norms``, ``param_stable_ranks``) with one BLAS thread per
dask kernel (now) against the kernel left to OpenBLAS's own threads (before), in one run.

Usage::

    python bench/generic_spectra.py [--states 100] [--rows 400] [--cols 128] [--chunk 20] [--repeats 3]

A review found the generic SVD kernel ran with every OpenBLAS thread inside each of dask's threads: on this
2-core machine 10-90x slower than with one (the two-layer kernels were already single-threaded,
``analysis/_blas.py``). The dataset is in memory (random ``W`` of ``--states`` states of ``rows x cols``,
float32, dask chunks of ``--chunk`` states), so only the computation is timed. The two variants alternate;
the table shows the median seconds of each over ``--repeats`` and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import xarray as xr

import trajscope  # noqa: F401  (registers ds.traj)
from trajscope.analysis import generic

QUANTITIES = ("param_singular_values", "spectral_norms", "param_stable_ranks")


def dataset(states: int, rows: int, cols: int, chunk: int) -> xr.Dataset:
    rng = np.random.default_rng(0)
    W = rng.normal(size=(states, rows, cols)).astype(np.float32)
    v = rng.normal(size=(states, rows)).astype(np.float32)
    ds = xr.Dataset({"W": (("step", "neuron", "feature"), W), "v": (("step", "neuron"), v)},
                    coords={"step": np.arange(states)})
    return ds.chunk({"step": chunk})


def timed(ds: xr.Dataset, name: str) -> float:
    began = time.perf_counter()
    getattr(ds.traj, name)(parameter="W").compute()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=100)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--cols", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ds = dataset(args.states, args.rows, args.cols, args.chunk)
    one_thread = generic._singular_values_block
    variants = {"one BLAS thread (now)": one_thread, "OpenBLAS threads (before)": one_thread.__wrapped__}
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in QUANTITIES:
            for variant in order:
                generic._singular_values_block = variants[variant]
                try:
                    times.setdefault((name, variant), []).append(timed(ds, name))
                finally:
                    generic._singular_values_block = one_thread
    print(f"W of {args.states} states of {args.rows}x{args.cols} float32, chunks of {args.chunk}; "
          f"median of {args.repeats} (s)")
    print("| quantity | one BLAS thread (now) | OpenBLAS threads (before) | before / now |")
    print("|---|---:|---:|---:|")
    for name in QUANTITIES:
        now, before = (statistics.median(times[(name, v)]) for v in variants)
        print(f"| {name} | {now:.2f} | {before:.2f} | {before / now:.1f}× |")


if __name__ == "__main__":
    main()
