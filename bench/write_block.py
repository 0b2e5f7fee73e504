"""``RunWriter.write_block`` alone: µs a block, this checkout's write path against a git revision's, side by side.

Each run creates a run of the reference states on a root (tmpfs by default), hands it ``--blocks`` blocks of
one ``W`` chunk each (26 states of 313 kB, with ``v``, ``loss``, ``output``, ``step``, ``t``), waits for each
block's writes, commits every 20 blocks, and takes the median time of the ``write_block`` calls after the
first 10. The call is what the recorder's hand-off pays on the thread that makes it (the training thread on
the CPU, the writer thread on a GPU): splitting the block into chunk files, buffering the small variables'
rows, handing the files to the write pool. Runs of the base's ``store/hotpath.py`` (``HotPath``, loaded from
git as ``bench/recorder_ab.py`` does) alternate with this checkout's.

    python bench/write_block.py [--base eb2f250] [--root tmpfs|local|memory] [--blocks 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_ceiling as rc  # noqa: E402
from recorder_ab import module_at  # noqa: E402


def per_block_us(root: rc.Root, blocks: int) -> float:
    """Median µs of a ``write_block`` call of the reference run (the first 10 calls left out)."""
    T = rc.chunk_steps()
    writer = rc._writer(root, blocks * T)
    assert writer.chunk_steps == T
    block = rc.blocks(T)
    seconds = []
    for b in range(blocks):
        started = time.perf_counter()
        handle = writer.write_block(b * T, block)
        seconds.append(time.perf_counter() - started)
        handle.wait()
        if b % 20 == 19:
            writer.commit()
    writer.commit()
    writer.finish("complete")
    return statistics.median(seconds[10:]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="eb2f250", help="git revision of the base's store/hotpath.py")
    parser.add_argument("--root", default="tmpfs", choices=["local", "tmpfs", "memory"])
    parser.add_argument("--blocks", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import trajscope.store.hotpath as hotpath_module
    import trajscope.store.writer as writer_module

    current, base = writer_module.HotPath, module_at("store/hotpath.py", args.base).HotPath
    versions = {"this checkout": current, args.base: base}
    results: dict[str, list[float]] = {name: [] for name in versions}
    for repeat in range(args.repeats):
        for name in (list(versions) if repeat % 2 == 0 else list(versions)[::-1]):
            writer_module.HotPath = hotpath_module.HotPath = versions[name]
            root = rc.Root(args.root, os.environ.get("TRAJSCOPE_BENCH_DIR", "."))
            try:
                results[name].append(per_block_us(root, args.blocks))
            finally:
                writer_module.HotPath = hotpath_module.HotPath = current
                root.close()
    print(f"| write path | µs a block (median of repeats) | min | max | × {args.base} (median of repeats) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        ratios = [v / b for v, b in zip(values, results[args.base])]
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} | "
              f"{statistics.median(ratios):.3f} |")
    print(f"\n`RunWriter.write_block` of the reference run's blocks ({rc.chunk_steps()} states), root {args.root}, "
          f"{args.blocks} blocks a run, {args.repeats} alternated repeats, the first 10 calls of a run left out")


if __name__ == "__main__":
    main()
