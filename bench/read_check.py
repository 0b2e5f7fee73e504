"""Benchmark: what a check of every chunk read costs a reader (``open_run`` on a local root).

    python bench/read_check.py --root DIR [--repeats 9] [--memory] [--check same-run|checksum]

``--check same-run`` (default) measures the check that the chunk read is the opened run's
(:class:`~trajscope.store.snapshot.LostChunkCheck`). ``--check checksum`` compares who checks each chunk's crc32c:
"no check" is zarr's decoder (the codec in the served metadata, google-crc32c), "check" the reader itself
(``SnapshotStore``: the ``crc32c`` package, naming a chunk that fails), as served now.

``DIR`` holds the run ``bench`` that ``python bench/analysis_throughput.py --gb 0.5 --root DIR --keep``
writes (written there first if absent). Each repeat opens the run afresh and reads every chunk of ``W`` (dask,
threaded scheduler, a no-op per block) and the small per-step variables, alternately with the check as it is
and with it replaced by a no-op, in one process. ``--memory`` copies the run into ``memory://`` first, where
the check is awaited and shared by the reads done together (an object store's path). Prints each repeat, the
medians and their ratio (the figure BENCHMARKS.md records, "Read check").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RUN_ID = "bench"


def read_once(root, run_id: str) -> float:
    import trajscope

    ds = trajscope.open_run(run_id, root=root)
    started = time.perf_counter()
    ds["W"].data.map_blocks(lambda b: np.zeros((1,) * b.ndim), chunks=(1,) * ds["W"].ndim).compute(scheduler="threads")
    for name in ("v", "loss", "output"):
        ds[name].values
    return time.perf_counter() - started


def to_memory(local: str):
    """The run copied into ``memory://`` (file by file)."""
    from trajscope.store import StoreRoot

    target = StoreRoot("memory://read-check")
    source = Path(local) / f"{RUN_ID}.zarr"
    for path in source.rglob("*"):
        if path.is_file():
            key = str(path.relative_to(source))
            target.fs.pipe_file(target.fs._strip_protocol(f"{target.run_url(RUN_ID)}/{key}"), path.read_bytes())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--memory", action="store_true", help="read a copy in memory:// (the awaited check)")
    parser.add_argument("--check", choices=("same-run", "checksum"), default="same-run",
                        help="which check is replaced by a no-op in the 'no check' reads")
    args = parser.parse_args()
    if not (Path(args.root) / f"{RUN_ID}.zarr").exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("analysis_throughput.py")), "--gb", "0.5",
                        "--root", args.root, "--repeat", "1", "--keep"], check=True)
    from trajscope.store import reader
    from trajscope.store.snapshot import LostChunkCheck

    root = to_memory(args.root) if args.memory else args.root
    owner, attr = (LostChunkCheck, "found") if args.check == "same-run" else (reader, "checksummed")
    checked = getattr(owner, attr)

    async def unchecked_found(self, read_done, read_document):
        return None

    def zarr_checks(arrays):  # nothing checked by the reader: the codec stays in the metadata, zarr checks
        return {}

    unchecked = unchecked_found if args.check == "same-run" else zarr_checks
    times: dict[str, list[float]] = {"no check": [], "check": []}
    for repeat in range(args.repeats):
        for name, method in (("no check", unchecked), ("check", checked)):
            setattr(owner, attr, method)
            times[name].append(read_once(root, RUN_ID))
        print(f"repeat {repeat + 1}: no check {times['no check'][-1]:.3f} s, check {times['check'][-1]:.3f} s")
    setattr(owner, attr, checked)
    medians = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(c / n for c, n in zip(times["check"], times["no check"]))
    print(f"{'root':<10} {'check':<9} {'no check s':>11} {'check s':>9} {'check / no check':>17} {'paired':>7}")
    print(f"{'memory://' if args.memory else 'local':<10} {args.check:<9} {medians['no check']:>11.3f} "
          f"{medians['check']:>9.3f} {medians['check'] / medians['no check']:>17.3f} {paired:>7.3f}")
    print("check / no check: the ratio of the medians; paired: the median of each repeat's ratio")


if __name__ == "__main__":
    main()
