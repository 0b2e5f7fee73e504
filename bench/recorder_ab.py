"""Two versions of the recorder side by side, in one process: this checkout's against a git revision's.

``producer/recorder.py`` of ``--base`` (default ``ac819d1``, the recorder whose writer thread took every
chunk) is loaded from git as a module and swapped in for ``Recorder`` in turn with this checkout's, run
after run, interleaved with the raw baseline of the same repeat. ``--file store/hotpath.py`` swaps the
store's write path (``HotPath``) instead, ``--file store/chunkio.py`` its local chunk files (``LocalSink``):

- ``--what ceiling``: the recorder of ``bench/record_ceiling.py`` (reference states, no training) on one
  root (``--root tmpfs``), each over the raw parallel write of the same repeat;
- ``--what overhead``: ``produce`` of the reference config (``bench/record_overhead.py``), each over the
  bare training loop of the same repeat.

Whole-bench runs an hour apart differ by more than one change to the recorder; side by side they do not.
Prints the median and range of the per-repeat ratios.

``--device cuda`` (overhead) trains and records on the GPU. ``--base-file F`` takes the base recorder from a
file instead of git, for a machine with the working tree but no repository (``bash bench/gpu_check.sh wheels``
saves the GPU A/B's base into ``.whl/recorder_base.py``).

    python bench/recorder_ab.py [--what ceiling|overhead] [--file producer/recorder.py|store/hotpath.py|store/chunkio.py]
                                [--base ac819d1 | --base-file F] [--repeats 15] [--mb 1024] [--steps 2000]
                                [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


#: the files whose base version can be swapped in: the class each defines, and the modules that hold it by name
SWAPPABLE = {"producer/recorder.py": ("Recorder", ("trajscope.producer.recorder", "trajscope.producer.train")),
             "store/hotpath.py": ("HotPath", ("trajscope.store.hotpath", "trajscope.store.writer")),
             "store/chunkio.py": ("LocalSink", ("trajscope.store.chunkio", "trajscope.store.writer"))}


def module_at(file: str, revision: str, source_file: str | None = None):
    """The module ``file`` as it was at ``revision`` (or as ``source_file`` holds it)."""
    if source_file is not None:
        source = Path(source_file).read_text()
    else:
        source = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{revision}:{file}"],
                                check=True, capture_output=True, text=True).stdout
    name = Path(file).stem + "_base"
    path = Path(tempfile.mkdtemp(prefix="ts-ab-")) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def recorder_at(revision: str, source_file: str | None = None):
    """``Recorder`` of ``producer/recorder.py`` as it was at ``revision`` (or as ``source_file`` holds it)."""
    base = module_at("producer/recorder.py", revision, source_file).Recorder

    accepted = inspect.signature(base).parameters

    def recorder(writer, *args, buffers=None, **kwargs):
        """The base revision's recorder with this checkout's default buffers when none are given (before
        fec39c2 the default was a fixed 3, and ``None`` was no value): both sides keep as many. An option the
        base lacks is left out when it is off (``loop_submits=False``: what the base does anyway)."""
        from trajscope.producer.staging import default_buffers

        if buffers is None:
            buffers = default_buffers(writer.write_pool_size, writer.block_threads)
        kwargs = {k: v for k, v in kwargs.items() if k in accepted or v}
        made = base(writer, *args, buffers=buffers, **kwargs)
        for name in ("waited_seconds", "device_waited_seconds", "closing_seconds"):  # read by a run's result;
            if not hasattr(made, name):  # a revision before them has none
                setattr(made, name, 0.0)
        return made

    return recorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=["ceiling", "overhead"], default="ceiling")
    parser.add_argument("--file", default="producer/recorder.py", choices=sorted(SWAPPABLE),
                        help="the file whose base version is swapped in")
    parser.add_argument("--base", default="ac819d1")
    parser.add_argument("--base-file", default=None, help="the base version's source file (instead of git)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="overhead: where to train")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mb", type=float, default=1024.0, help="ceiling: MB of states per run")
    parser.add_argument("--root", default="tmpfs", choices=["local", "tmpfs", "memory"], help="ceiling: the root")
    parser.add_argument("--steps", type=int, default=2000, help="overhead: steps per run")
    args = parser.parse_args()

    class_name, holders = SWAPPABLE[args.file]
    holders = [importlib.import_module(name) for name in holders]
    current = getattr(holders[0], class_name)
    if args.file == "producer/recorder.py":
        base = recorder_at(args.base, args.base_file)
    else:
        base = getattr(module_at(args.file, args.base, args.base_file), class_name)
    if args.base_file is not None:
        args.base = f"{args.base_file} (base)"

    def using(version, run):
        def swapped(*a):
            for holder in holders:
                setattr(holder, class_name, version)
            try:
                return run(*a)
            finally:
                for holder in holders:
                    setattr(holder, class_name, current)
        return swapped

    if args.what == "ceiling":
        import record_ceiling as rc

        T = rc.chunk_steps()
        states = max(int(args.mb * 1e6 // rc.STATE_BYTES), 1)
        runs = {"raw": lambda root: rc.raw_parallel(root, states, T, 4),
                "this checkout": using(current, lambda root: rc.recorder(root, states, T)),
                args.base: using(base, lambda root: rc.recorder(root, states, T))}

        def once(name):
            root = rc.Root(args.root, os.environ.get("TRAJSCOPE_BENCH_DIR", "."))
            try:
                os.sync()
                return runs[name](root)
            finally:
                root.close()
        for name in runs:  # untimed: imports, first allocations
            once(name)
    else:
        import record_overhead as ro
        from trajscope.producer import load_config

        cfg = load_config(ro.REFERENCE, [f"train.steps={args.steps}", f"train.device={args.device}"])
        runs = {"raw": lambda d: ro.plain_loop(cfg).seconds,
                "this checkout": using(current, lambda d: ro.trajscope_run(cfg, d).seconds),
                args.base: using(base, lambda d: ro.trajscope_run(cfg, d).seconds)}

        def once(name):
            with tempfile.TemporaryDirectory(dir=os.environ.get("TRAJSCOPE_BENCH_DIR")) as tmp:
                os.sync()
                return runs[name](Path(tmp))

    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % 3:] + names[: repeat % 3]:  # rotate the order
            seconds[name].append(once(name))
    baseline = "raw write" if args.what == "ceiling" else "bare loop"
    # ceiling: rate over the raw rate (higher is better); overhead: time over the bare loop's (lower is better)
    print(f"| recorder | {'× raw write (rate)' if args.what == 'ceiling' else 'time × bare loop'} | min | max |")
    print("|---|---:|---:|---:|")
    for name in names[1:]:
        if args.what == "ceiling":
            ratios = [r / x for r, x in zip(seconds["raw"], seconds[name])]
        else:
            ratios = [x / r for r, x in zip(seconds["raw"], seconds[name])]
        print(f"| {name} | {statistics.median(ratios):.3f} | {min(ratios):.3f} | {max(ratios):.3f} |")
    print(f"\n{args.what}, {args.file} swapped, {args.repeats} interleaved repeats, each against the {baseline} "
          "of the same repeat"
          + (f", root {args.root}, {args.mb:g} MB" if args.what == "ceiling"
             else f", {args.steps} steps on {args.device}"))


if __name__ == "__main__":
    main()
