"""Direct I/O (``O_DIRECT``) against buffered writes of chunk-sized files, one thread, no training.

Writes ``--files`` files of 8 MiB into ``--dir`` (default: a new directory under the current one, on the
disk a local store root would use) four ways, ``--repeats`` times each, alternated, after an untimed
``sync``: buffered from one contiguous buffer; ``O_DIRECT`` from one page-aligned buffer; buffered from
26 separate per-state arrays of 313,600 bytes (the reference config's ``W``) plus a 4-byte checksum, with
one ``writev``; ``O_DIRECT`` of the same parts gathered through a page-aligned 1 MiB bounce buffer (the last
unaligned bytes buffered). Prints MB/s and the CPU seconds (user + system) of each write pass.

This is the comparison behind BENCHMARKS.md, "Recording overhead", "Direct I/O" (tenth session: the bounce
buffer was not adopted). Since the thirteenth session the store writes with direct I/O itself
(``store/chunkio.py: LocalSink``, ``record.io``), from the recorder's page-aligned chunk buffers, without a
bounce buffer; ``bench/record_overhead.py`` and ``bench/record_ceiling.py`` measure that path.

    python bench/direct_io.py [--files 80] [--repeats 3] [--dir PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import resource
import shutil
import tempfile
import time

import numpy as np

ALIGN = 4096
CHUNK = 8 << 20


def _address(view) -> int:
    return np.frombuffer(view, np.uint8).__array_interface__["data"][0]


def _write_buffered(path: str, parts) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.writev(fd, parts)
    finally:
        os.close(fd)


def _write_direct(path: str, parts, bounce: memoryview) -> None:
    """``parts`` through the aligned ``bounce`` buffer with O_DIRECT; the unaligned tail buffered."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        base, size, fill = _address(bounce), len(bounce), 0
        for part in parts:
            view = memoryview(part).cast("B")
            source, position = _address(view), 0
            while position < len(view):
                take = min(len(view) - position, size - fill)
                ctypes.memmove(base + fill, source + position, take)
                fill, position = fill + take, position + take
                if fill == size:
                    os.write(fd, bounce)
                    fill = 0
        aligned = fill // ALIGN * ALIGN
        if aligned:
            os.write(fd, bounce[:aligned])
        if fill > aligned:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            os.write(fd, bounce[aligned:fill])
    finally:
        os.close(fd)


def _write_direct_aligned(path: str, buffer) -> None:
    """A page-aligned buffer of whole blocks, written as it is with O_DIRECT."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        os.write(fd, buffer)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="direct-io-", dir=args.dir or os.getcwd())
    contiguous = mmap.mmap(-1, CHUNK)  # page-aligned
    contiguous.write(os.urandom(CHUNK))
    rows = [np.random.default_rng(i).normal(size=(100, 784)).astype(np.float32) for i in range(26)]
    parts = [*rows, b"crc!"]
    bounce = memoryview(mmap.mmap(-1, 1 << 20))
    ways = {
        "buffered, one contiguous buffer": (lambda p: _write_buffered(p, [contiguous]), CHUNK),
        "O_DIRECT, one aligned buffer": (lambda p: _write_direct_aligned(p, contiguous), CHUNK),
        "buffered, 26 per-state arrays (writev)": (lambda p: _write_buffered(p, parts), sum(r.nbytes for r in rows) + 4),
        "O_DIRECT, same arrays via a 1 MiB bounce buffer": (lambda p: _write_direct(p, parts, bounce),
                                                            sum(r.nbytes for r in rows) + 4),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    try:
        for _ in range(args.repeats):
            for name, (write, size) in ways.items():
                os.sync()
                before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                for i in range(args.files):
                    write(os.path.join(work, f"f{i}"))
                seconds = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                results[name].append((args.files * size / seconds / 1e6, cpu))
                for i in range(args.files):
                    os.unlink(os.path.join(work, f"f{i}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| write ({args.files} files of 8 MiB, one thread) | MB/s per repeat | CPU s per repeat |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {' / '.join(f'{r:,.0f}' for r, _ in values)} | {' / '.join(f'{c:.2f}' for _, c in values)} |")


if __name__ == "__main__":
    main()
