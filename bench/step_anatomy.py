"""Step anatomy: where a recorded step's extra time goes, step by step, against the bare loop of the same repeat.

``record_overhead.py`` says how much slower a ``produce`` run is than the bare loop; this says where, from a
timestamp at every step of both (the middle 80% of the steps, as its per-step ratio). Each repeat runs the bare
loop (the producer's training math, no recorder) and a ``produce`` run of the same config, alternating which
goes first. For the ``produce`` run it splits the step:

- **in ``record()``**: the training thread's time inside :meth:`Recorder.record` (the copy of the state into
  the chunk buffers, the checks, and at every ``chunk_steps``-th state the hand-off of a full chunk to the
  store), and **the rest of the step** (the training math, slower or not beside the recorder);
- **off the CPU**: wall time minus the training thread's CPU time (waiting for the interpreter lock, a kernel
  lock, a free buffer);
- **by what ran beside it**: the steps in which a chunk was handed to the store (``RunWriter.write_block``: on
  the CPU from the training thread, on a GPU from the writer thread), those overlapping a commit
  (``RunWriter.commit``, on the writer thread), those
  overlapping a chunk file write (``LocalSink.put`` / ``FsspecSink.put``, on the write threads), and the
  others, each group's extra time over the bare loop's mean step, per step of the run: the groups add up
  to the run's extra time a step.

Times are the host's: on a GPU a step's host time is its launches (and its waits for the device). With a
writer process (``--set record.writer=process``) the store's events are in the other process and are not
seen here. Both loops pay the same
stamp a step (two clock reads); the recorded one also a wrapper around ``record()`` and the store's methods.
The runs go to a temporary directory (under ``$TRAJSCOPE_BENCH_DIR`` if set, as in ``record_overhead.py``).

    python bench/step_anatomy.py [--config reference] [--device cpu] [--steps 2000] [--repeats 3]
                                 [--set record.io=buffered ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_overhead import REFERENCE, plain_loop, steady_window, trajscope_run  # noqa: E402
from record_ceiling import CONFIGS  # noqa: E402

#: store events recorded: (group, class path, method); a step is counted in the first group that touches it
EVENTS = [("hand-off", "trajscope.store.writer:RunWriter", "write_block"),
          ("commit", "trajscope.store.writer:RunWriter", "commit"),
          ("chunk write", "trajscope.store.chunkio:LocalSink", "put"),
          ("chunk write", "trajscope.store.chunkio:FsspecSink", "put")]
GROUPS = list(dict.fromkeys(group for group, _, _ in EVENTS))


class Timeline:
    """Per-step stamps of the training thread (wall and thread CPU time, ns) and the store's events."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.wall: list[int] = []
        self.cpu: list[int] = []
        self.record_ends: list[int] = []
        self.events: list[tuple[str, int, int]] = []  # (group, start ns, end ns)

    def stamp(self) -> None:
        self.wall.append(time.perf_counter_ns())
        self.cpu.append(time.thread_time_ns())


def instrument(timeline: Timeline) -> None:
    """Wrap ``Recorder.record`` and the store methods of :data:`EVENTS` to log into ``timeline``."""
    import importlib

    from trajscope.producer.recorder import Recorder

    record = Recorder.record

    def timed_record(self, **values):
        timeline.stamp()
        try:
            return record(self, **values)
        finally:
            timeline.record_ends.append(time.perf_counter_ns())

    Recorder.record = timed_record
    for group, path, method in EVENTS:
        module, _, name = path.partition(":")
        cls = getattr(importlib.import_module(module), name)
        original = getattr(cls, method)

        def timed(self, *args, _original=original, _group=group, **kwargs):
            start = time.perf_counter_ns()
            try:
                return _original(self, *args, **kwargs)
            finally:
                timeline.events.append((_group, start, time.perf_counter_ns()))

        setattr(cls, method, timed)


def step_table(bare: Timeline, recorded: Timeline, steps: int) -> dict[str, float]:
    """The figures of one repeat (µs a step, over the steady window)."""
    for loop in (bare, recorded):
        if len(loop.wall) != steps + 1:  # (record.every, train.stop_loss: not one stamp a step)
            raise SystemExit(f"step_anatomy: a loop stamped {len(loop.wall)} of {steps + 1} steps: it times runs that "
                             "record every step to the end (no record.every, no train.stop_loss)")
    first, last = steady_window(steps)
    last -= 1  # (on a GPU the bare loop synchronizes before its step `last`: that interval is left out of both)
    wall_b = np.diff(np.array(bare.wall, dtype=np.int64))[first:last] / 1e3
    stamps = np.array(recorded.wall, dtype=np.int64)
    wall_r = np.diff(stamps)[first:last] / 1e3
    cpu_r = np.diff(np.array(recorded.cpu, dtype=np.int64))[first:last] / 1e3
    inside = (np.array(recorded.record_ends, dtype=np.int64)[:-1] - stamps[:-1])[first:last] / 1e3
    bare_mean = float(wall_b.mean())
    out = {"bare": bare_mean, "recorded": float(wall_r.mean()), "record()": float(inside.mean()),
           "rest": float((wall_r - inside).mean()), "off-CPU": float((wall_r - cpu_r).mean()),
           "record() median": float(np.median(inside))}
    # the steps each group touches (a step is in the first group that touches it, in the order of GROUPS)
    touched = {g: np.zeros(len(stamps) - 1, bool) for g in GROUPS}
    for group, start, end in recorded.events:
        i0 = max(int(np.searchsorted(stamps, start, "right")) - 1, 0)
        i1 = min(int(np.searchsorted(stamps, end, "right")) - 1, len(stamps) - 2)
        if i1 >= i0:
            touched[group][i0 : i1 + 1] = True
    left = np.ones(last - first, bool)
    for group in GROUPS:
        mine = left & touched[group][first:last]
        out[f"{group}: steps"] = float(mine.mean())
        out[f"{group}: excess"] = float((wall_r[mine] - bare_mean).sum() / len(wall_r))
        out[f"{group}: mean step"] = float(wall_r[mine].mean()) if mine.any() else float("nan")
        left &= ~mine
    out["other: steps"] = float(left.mean())
    out["other: excess"] = float((wall_r[left] - bare_mean).sum() / len(wall_r))
    out["other: mean step"] = float(wall_r[left].mean()) if left.any() else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="reference", choices=sorted(CONFIGS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override for the recorded run, e.g. record.io=buffered (repeatable)")
    args = parser.parse_args()
    if args.steps < 20 or args.repeats < 1:
        parser.error("--steps must be at least 20 and --repeats at least 1")
    from trajscope.producer import load_config

    h, n = CONFIGS[args.config]
    cfg = load_config(REFERENCE, [f"train.steps={args.steps}", f"model.width={h}", f"data.n={n}",
                                  f"train.device={args.device}"])
    recorded_cfg = load_config(cfg, args.overrides)
    bare, recorded = Timeline(), Timeline()
    instrument(recorded)
    rows = []
    for repeat in range(args.repeats):
        order = ("bare", "recorded") if repeat % 2 == 0 else ("recorded", "bare")
        for which in order:
            os.sync()  # (no run pays for an earlier one's write-back)
            if which == "bare":
                bare.clear()
                plain_loop(cfg, lambda *state: bare.stamp())
            else:
                recorded.clear()
                with tempfile.TemporaryDirectory(dir=os.environ.get("TRAJSCOPE_BENCH_DIR")) as directory:
                    trajscope_run(recorded_cfg, Path(directory))
        rows.append(step_table(bare, recorded, args.steps))
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    b = med["bare"]
    print(f"step anatomy: config {args.config}, {args.device}, {args.steps} steps, {args.repeats} repeats, "
          f"recorded with {', '.join(args.overrides) or 'the defaults'}; medians over the repeats, the middle 80% of "
          "the steps")
    print()
    print("| part of a step | µs a step | × the bare loop's step |")
    print("|---|---:|---:|")
    print(f"| bare loop: whole step | {b:,.0f} | 1.000 |")
    print(f"| recorded: whole step | {med['recorded']:,.0f} | {med['recorded'] / b:.3f} |")
    print(f"| recorded: in `record()` (median step {med['record() median']:,.0f}) | {med['record()']:,.0f} | "
          f"{med['record()'] / b:.3f} |")
    print(f"| recorded: the rest of the step | {med['rest']:,.0f} | {med['rest'] / b:.3f} |")
    print(f"| recorded: off the CPU (within the above) | {med['off-CPU']:,.0f} | {med['off-CPU'] / b:.3f} |")
    print()
    print("| steps during which... | share of the steps | their mean step, µs | their extra time over the bare "
          "loop's mean step, µs a step of the run |")
    print("|---|---:|---:|---:|")
    for group, label in (("hand-off", "a chunk was handed to the store (`write_block`)"),
                         ("commit", "a commit ran (and no hand-off)"),
                         ("chunk write", "a chunk file was written (and neither of the above)"),
                         ("other", "none of these ran")):
        print(f"| {label} | {med[f'{group}: steps']:.1%} | {med[f'{group}: mean step']:,.0f} | "
              f"{med[f'{group}: excess']:,.0f} |")
    total = sum(med[f"{g}: excess"] for g in (*GROUPS, "other"))
    print(f"| all (the sum of the medians) | 100% | {med['recorded']:,.0f} | {total:,.0f} |")
    print()
    for i, r in enumerate(rows):
        print(f"repeat {i + 1}: × bare {r['recorded'] / r['bare']:.3f}; record() {r['record()']:.0f} µs; rest "
              f"{r['rest'] / r['bare']:.3f} × bare; extra µs a step: hand-off {r['hand-off: excess']:.0f}, commit "
              f"{r['commit: excess']:.0f}, chunk write {r['chunk write: excess']:.0f}, other {r['other: excess']:.0f}")


if __name__ == "__main__":
    main()
