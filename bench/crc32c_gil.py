"""Does a checksum library release the GIL? A Python thread's progress beside a checksum loop.

The store appends a crc32c to every chunk from its write threads while the training thread runs Python.
A library that holds the GIL while it checksums stalls the training thread. Here a pure-Python spin loop
runs for ``--seconds`` alone (baseline), then beside a thread checksumming a 200 MB buffer in a loop, once
with each library: the figure is the spin loop's iterations beside the checksum over its iterations alone
(1.0: the library releases the GIL; near 1/cores or below: it holds it), plus each library's GB/s.

    python bench/crc32c_gil.py [--seconds 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np


def spin(seconds: float) -> int:
    """Iterations of a pure-Python loop in ``seconds`` of wall time."""
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import crc32c
    import google_crc32c

    libraries = {"crc32c (the store's)": lambda b: crc32c.crc32c(b),
                 "google-crc32c (zarr's)": lambda b: google_crc32c.value(b)}
    buffer = np.random.default_rng(0).random(25_000_000).view(np.uint8)  # 200 MB
    rows = []
    for name, checksum in libraries.items():
        ratios = []
        for _ in range(args.repeats):
            alone = spin(args.seconds)
            stop = threading.Event()

            def loop() -> None:
                while not stop.is_set():
                    checksum(buffer)

            worker = threading.Thread(target=loop)
            worker.start()
            beside = spin(args.seconds)
            stop.set()
            worker.join()
            ratios.append(beside / alone)
        start = time.perf_counter()
        checksum(buffer)
        rate = buffer.nbytes / (time.perf_counter() - start) / 1e9
        rows.append((name, statistics.median(ratios), rate))
    print(f"| library | spin loop beside it / alone (median of {args.repeats}) | GB/s |")
    print("|---|---:|---:|")
    for name, ratio, rate in rows:
        print(f"| {name} | {ratio:.2f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
