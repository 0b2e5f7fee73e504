"""Recording overhead: steps/s of training with trajscope recording every step, against the same loop
without recording (the bare loop, measured in the same run) and against two hand-written baselines
(``np.save`` / ``torch.save`` of each step).

Configs (``--config``), full-batch GD, float32, synthetic data:
``reference`` h = 100, D = 784, n = 1000 (313 kB a state); ``mnist-like`` h = 50, D = 784, n = 10000
(157 kB); ``wide`` h = 2000, D = 784, n = 10000 (6.3 MB). ``--device cpu|cuda``.
The variants are run interleaved ``--repeats`` times (the order rotates between repeats); each ratio is
the median over the repeats of the variant's time over the baseline's time *in the same repeat* (min and
max of those ratios beside it), so a slow drift of a shared machine cancels; each run starts after an untimed ``sync``, so none pays for the write-back of
an earlier run's files (the kernel writes a run's pages back about 30 s after they were written, i.e.
during whichever run comes later; that write-back is a cost of every variant that writes, trajscope's
and the hand-written baselines' alike, and is not in these figures). Ratios are against the bare loop measured in the same run; the CPU-time
ratio (CPU time of the process, all threads, and of its writer process) is the steadier figure on a machine shared with other work. "durability fsync"
is trajscope with ``record.durability: fsync`` (chunks, directories and attributes fsynced); "writer thread" /
"writer process" / "loop hands chunks over" force ``record.writer`` (the default, "every step", is ``auto``: the
thread; before the seventeenth session a writer process for a GPU run of small states, BENCHMARKS.md "GPU
table"; ``loop``: on a GPU the training loop submits each copied chunk to the store, on the CPU the thread). "buffered I/O"
/ "direct I/O" force ``record.io`` (the default, ``auto``, writes a CPU run's chunks on a disk with direct I/O, the
states copied into page-aligned chunk buffers, and a GPU run's buffered; buffered, the CPU recorder keeps the
states by reference).

``--variants`` runs only some variants (besides the baseline, always run), so more repeats fit in the same
time: ``every,buffered,direct,thread,process,loop,fsync,dropped,npsave,torchsave`` (default: all). The "95% CI" column is a
bootstrap interval of the median time ratio (10 000 resamples of the repeats, percentile method, seed 0):
with a goal inside the run-to-run noise, it says whether the repeats support meeting it. The "per-step ratio"
is the same ratio over the middle 80% of each run's steps (its time per step there, over the baseline's in the
same repeat; a ``produce`` run's from its progress reports): it leaves out what a run pays once (creating and
closing the run, the first touch of the chunk buffers, most of a writer process's start-up), so it is what
recording costs a long run, and the whole-run ratio less this one is about the weight of that fixed cost in a run
of ``--steps``. (On a GPU each progress report reads the loss: a host sync about four times a second, as the
CLI's progress display does.)

    python bench/record_overhead.py [--config reference] [--device cpu] [--steps 2000] [--repeats 3]
                                    [--variants every,dropped,npsave] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trajscope.producer import load_config, produce
from trajscope.producer.data import build_dataset
from trajscope.producer.model import TwoLayerReLU, initialize
from trajscope.producer.train import cpu_threads, gradient_step, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_ceiling import CONFIGS  # noqa: E402 - ``--config`` name -> (h, n); D = 784 for all

REFERENCE = {
    "name": "bench",
    "data": {"kind": "synthetic", "n": 1000, "dim": 784, "mu": 0.05},
    "model": {"width": 100},
    "init": {"kind": "gaussian", "scale": 1e-3},
    "loss": {"kind": "exp", "reduction": "mean"},
    "train": {"lr": 0.05, "steps": 2000},
}
#: ``--variants`` key -> variant (the baseline always runs)
VARIANT_KEYS = {"every": "trajscope, every step", "buffered": "trajscope, buffered I/O",
                "direct": "trajscope, direct I/O", "thread": "trajscope, writer thread",
                "process": "trajscope, writer process", "loop": "trajscope, loop hands chunks over",
                "fsync": "trajscope, durability fsync",
                "dropped": "trajscope recorder, writes dropped", "npsave": "np.save every step",
                "torchsave": "torch.save every step"}


@dataclass
class Measured:
    """One timed run: its ``seconds`` (whole run), ``per_step`` (seconds a step over the middle of the run, see
    :func:`steady_window`) and, for a trajscope run, the shares of its time its loop waited (store, device)."""

    seconds: float
    per_step: float
    waited: tuple[float, float] | None = None


#: runs shorter than this have no per-step figure (their middle 80% is a handful of steps)
STEADY_MIN_STEPS = 10


def steady_window(steps: int) -> tuple[int, int]:
    """The steps whose times give a run's steady rate: from ``steps // 10`` to ``steps - steps // 10``
    (``(-1, -1)``, no window, under :data:`STEADY_MIN_STEPS` steps).

    The middle 80% of a run leaves out what a run pays once (creating the run, the chunk buffers' first
    touch, the writer's start-up; the last chunks' writes and commit, closing), so the ratio of two runs' rates
    over it is the per-step cost of recording alone; the whole-run ratio adds the fixed cost."""
    if steps < STEADY_MIN_STEPS:
        return -1, -1
    return steps // 10, steps - steps // 10


def plain_loop(cfg, save=None) -> Measured:
    """The producer's training math with no recorder; ``save(step, W, v, loss, out)`` if given.

    Timed from the dataset build on, like :func:`trajscope_run` (which also creates and closes the run).
    """
    first, last = steady_window(cfg.train.steps)
    marks = {}
    start = time.perf_counter()
    X, y, _ = build_dataset(cfg)
    torch.set_num_threads(cpu_threads(cfg))
    torch.set_flush_denormal(cfg.train.flush_denormal)
    device = resolve_device(cfg.train.device)
    model = TwoLayerReLU(torch.from_numpy(X.astype(np.float32)).to(device),
                         torch.from_numpy(y.astype(np.float32)).to(device), cfg.loss)
    state = initialize(cfg.init, cfg.model.width, X.shape[1], train_v=True, seed=cfg.seed, dtype=torch.float32)
    state = type(state)(W=state.W.to(device), v=state.v.to(device))
    for step in range(cfg.train.steps + 1):
        if step == first or step == last:
            if device.type == "cuda":  # the device's pace, not the host's queueing (a produce run's report syncs)
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()
        pre, out = model.forward(state)
        loss = model.loss_value(out)
        if save is not None:
            save(step, state.W, state.v, loss, out)
        if step < cfg.train.steps:
            state = gradient_step(model, state, cfg, step, pre, out)
    float(loss)
    torch.set_flush_denormal(False)
    seconds = time.perf_counter() - start
    return Measured(seconds, (marks[last] - marks[first]) / (last - first) if last > first else float("nan"))


def np_save_loop(cfg, directory: Path) -> Measured:
    def save(step, W, v, loss, out):
        np.save(directory / f"W_{step}.npy", W.cpu().numpy())
        np.save(directory / f"v_{step}.npy", v.cpu().numpy())
        np.save(directory / f"out_{step}.npy", out.cpu().numpy())
        np.save(directory / f"loss_{step}.npy", loss.cpu().numpy())

    return plain_loop(cfg, save)


def torch_save_loop(cfg, directory: Path) -> Measured:
    def save(step, W, v, loss, out):
        torch.save({"W": W, "v": v, "loss": loss, "output": out}, directory / f"state_{step}.pt")

    return plain_loop(cfg, save)


class DiscardingWriter:
    """Stands in for the store: takes whole chunks and drops them (isolates the recorder's own cost)."""

    block_threads = 1  # the configs' W: one chunk file a block, far larger than the others

    def __init__(self, chunk_steps: int, io: str):
        from trajscope.store.hotpath import default_write_threads

        self.chunk_steps = chunk_steps
        self.write_pool_size = default_write_threads(True, io)  # the recorder keeps the buffers a local run would

    def write_block(self, start, values):
        return None  # done at once

    def commit(self, committed_steps=None):
        pass

    def heartbeat_due(self) -> bool:
        return False


def recorder_only_loop(cfg, chunk_steps: int, directory: Path) -> Measured:
    """The plain loop feeding a real :class:`Recorder` (buffers, writer thread) whose writes are dropped."""
    from trajscope.producer.recorder import Recorder
    from trajscope.producer.write_path import write_io
    from trajscope.store import StoreRoot

    h, dim, n = cfg.model.width, cfg.data.dim, cfg.data.n
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
    device = resolve_device(cfg.train.device)
    io = write_io(cfg.record.io, StoreRoot(directory), device, cfg.record.compressor)
    recorder = Recorder(DiscardingWriter(chunk_steps, io), shapes, dtypes, device, buffers=cfg.record.buffers,
                        by_reference=device.type == "cpu" and io == "buffered")  # as the producer records
    measured = plain_loop(cfg, lambda step, W, v, loss, out: recorder.record(W=W, v=v, loss=loss, output=out))
    start = time.perf_counter()
    recorder.close()
    measured.seconds += time.perf_counter() - start
    return measured


def trajscope_run(cfg, directory: Path) -> Measured:
    """A ``produce`` run: its seconds, its seconds a step over :func:`steady_window` (from the progress reports,
    about four a second, the first and last inside the window), and the shares of its time its loop waited for
    free chunk buffers: behind the store (the chunk in host memory, still being written), and behind the device
    (a GPU loop ahead of it)."""
    first, last = steady_window(cfg.train.steps)
    reports: list[tuple[int, float]] = []

    def note(report: dict) -> None:
        if not report.get("done"):  # (the last report comes after the run's close)
            reports.append((report["step"], time.perf_counter()))

    start = time.perf_counter()
    result = produce(cfg, root=directory, name="bench", progress=note)
    seconds = time.perf_counter() - start
    inside = [r for r in reports if first <= r[0] <= last]
    per_step = ((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) if len(inside) >= 2
                and inside[-1][0] > inside[0][0] else float("nan"))  # a run too short for two reports in it
    return Measured(seconds, per_step, (result.store_wait_seconds / seconds, result.device_wait_seconds / seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compressor", default="none", choices=["none", "zstd"])
    parser.add_argument("--config", default="reference", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-baselines", action="store_true", help="skip np.save / torch.save")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, besides the baseline: {','.join(VARIANT_KEYS)} (default: all)")
    parser.add_argument("--write", type=Path, default=None, help="update this BENCHMARKS.md section")
    args = parser.parse_args()
    h, n = CONFIGS[args.config]
    cfg = load_config(REFERENCE, [f"train.steps={args.steps}", f"record.compressor={args.compressor}",
                                  f"model.width={h}", f"data.n={n}", f"train.device={args.device}"])
    fsync_cfg = load_config(cfg, ["record.durability=fsync"])
    thread_cfg = load_config(cfg, ["record.writer=thread"])
    buffered_cfg = load_config(cfg, ["record.io=buffered"])
    direct_cfg = load_config(cfg, ["record.io=direct"])
    process_cfg = load_config(cfg, ["record.writer=process"])
    loop_cfg = load_config(cfg, ["record.writer=loop"])
    from trajscope.store.layout import chunk_plan

    chunk_steps = chunk_plan({"W": (h, cfg.data.dim), "v": (h,), "loss": (), "output": (n,)},
                             {"W": "float32", "v": "float32", "loss": "float64", "output": "float32"},
                             args.steps + 1, int(cfg.record.chunk_mib * 2**20)).chunk_steps
    variants = {
        "no recording (baseline)": lambda d: plain_loop(cfg),
        "trajscope, every step": lambda d: trajscope_run(cfg, d),
        "trajscope, buffered I/O": lambda d: trajscope_run(buffered_cfg, d),
        "trajscope, direct I/O": lambda d: trajscope_run(direct_cfg, d),
        "trajscope, writer thread": lambda d: trajscope_run(thread_cfg, d),
        "trajscope, writer process": lambda d: trajscope_run(process_cfg, d),
        "trajscope, loop hands chunks over": lambda d: trajscope_run(loop_cfg, d),
        "trajscope, durability fsync": lambda d: trajscope_run(fsync_cfg, d),
        "trajscope recorder, writes dropped": lambda d: recorder_only_loop(cfg, chunk_steps, d),
    }
    if not args.no_baselines:
        variants["np.save every step"] = lambda d: np_save_loop(cfg, d)
        variants["torch.save every step"] = lambda d: torch_save_loop(cfg, d)
    if args.variants is not None:
        keys = [k.strip() for k in args.variants.split(",") if k.strip()]
        unknown = [k for k in keys if k not in VARIANT_KEYS]
        if unknown or not keys:
            parser.error(f"--variants {args.variants}: use some of {','.join(VARIANT_KEYS)}")
        chosen = {VARIANT_KEYS[k] for k in keys} | {"no recording (baseline)"}
        variants = {name: run for name, run in variants.items() if name in chosen}
    times: dict[str, list[float]] = {name: [] for name in variants}
    per_step: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    waits: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}  # trajscope's: shares waited
    names = list(variants)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:  # rotate the order
            run = variants[name]
            with tempfile.TemporaryDirectory(dir=os.environ.get("TRAJSCOPE_BENCH_DIR")) as tmp:
                os.sync()  # untimed: no run pays for the write-back of an earlier run's dirty pages
                cpu_start = cpu_seconds()
                measured = run(Path(tmp))
                cpu[name].append(cpu_seconds() - cpu_start)
                if measured.waited is not None:
                    waits[name].append(measured.waited)
                times[name].append(measured.seconds)
                per_step[name].append(measured.per_step)
    baseline = "no recording (baseline)"
    state_kb = (h * cfg.data.dim + h + n) * 4 / 1000
    rows = []
    for name, values in times.items():
        # each repeat's time over the baseline's in the same repeat: a slow drift of the machine cancels
        ratios = [t / b for t, b in zip(values, times[baseline])]
        cpu_ratios = [c / b for c, b in zip(cpu[name], cpu[baseline])]
        steady = [s / b for s, b in zip(per_step[name], per_step[baseline])
                  if math.isfinite(s) and math.isfinite(b) and b > 0]
        steady_text = "—"
        if steady:
            low, high = median_interval(steady)
            counted = "" if len(steady) == args.repeats else f", {len(steady)} of {args.repeats} repeats"
            steady_text = f"{statistics.median(steady):.3f} ({low:.3f}–{high:.3f}{counted})"
        waited = (f"{statistics.median(w[0] for w in waits[name]):.1%} / "
                  f"{statistics.median(w[1] for w in waits[name]):.1%}") if waits[name] else "—"
        rows.append((name, (args.steps + 1) / statistics.median(values), statistics.median(ratios), min(ratios),
                     max(ratios), median_interval(ratios), steady_text, statistics.median(cpu_ratios), waited))
    header = (f"| variant | steps/s (median of {args.repeats}) | time ratio vs baseline | 95% CI | min ratio | "
              "max ratio | per-step ratio, middle 80% of steps (95% CI) | CPU-time ratio vs baseline | "
              "loop waited: store / device |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {sps:,.0f} | {ratio:.3f} | {ci[0]:.3f}–{ci[1]:.3f} | {lo:.3f} | {hi:.3f} | {st} | "
              f"{c:.3f} | {w} |" for n, sps, ratio, lo, hi, ci, st, c, w in rows]
    table = "\n".join(lines)
    print(table)
    print(f"\none recorded state: {state_kb:.0f} kB (W, v, output, loss); {args.steps + 1} states a run")
    if args.write:
        command = f"python bench/record_overhead.py --steps {args.steps} --repeats {args.repeats}"
        if args.variants is not None:
            command += f" --variants {args.variants}"
        if args.compressor != "none":
            command += f" --compressor {args.compressor}"
        if args.config != "reference" or args.device != "cpu":
            command += f" --config {args.config} --device {args.device}"
        extras = [x for x in (args.compressor if args.compressor != "none" else "",
                              args.config if args.config != "reference" else "",
                              args.device if args.device != "cpu" else "") if x]
        heading = "## Recording overhead" + (f" ({', '.join(extras)})" if extras else "")
        hardware = (torch.cuda.get_device_name() if args.device == "cuda"
                    else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
        section = (
            f"{heading}\n\n`{command}` — h={h}, D={cfg.data.dim}, n={n}, full-batch GD, float32, {hardware}, "
            f"torch {torch.__version__}, Python {sys.version.split()[0]}, measured {time.strftime('%Y-%m-%d')}."
            f"\n\n{table}\n\n"
            "Goal: trajscope's ratio ≤ 1.05 on the CPU. \"writes dropped\" runs the same recorder (chunk buffers, "
            "writer thread) but discards each chunk instead of writing it: the difference to the baseline is "
            "the cost of copying every state out of the training loop; the rest of trajscope's ratio is the "
            "store (encoding, crc32c, file writes, commits) and creating/closing the run. The per-step ratio is the "
            "same ratio over the middle 80% of each run's steps, without what a run pays once. \"loop waited: "
            "store / device\" are the median shares of a run's time its loop waited for a free chunk buffer, after "
            "its chunk had reached host memory (the store behind) and before (a GPU loop ahead of its device).\n"
        )
        replace_section(args.write, heading, section)


def median_interval(ratios: list[float], resamples: int = 10_000, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the median of ``ratios``: the ``(1 ± level) / 2`` quantiles of the medians of
    ``resamples`` resamples with replacement (percentile method, seed 0)."""
    values = np.asarray(ratios, dtype=float)
    draws = np.random.default_rng(0).choice(values, size=(resamples, len(values)), replace=True)
    low, high = np.quantile(np.median(draws, axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (a writer process counts too)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the ``heading`` section of a Markdown file."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures are ratios against a baseline measured in the same run.\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip() + "\n" + (text[end:] if end != -1 else "")
    path.write_text(text)


if __name__ == "__main__":
    main()
