"""What early hand-overs (``flush_seconds``) buy a live reader of a slow loop, and what they cost in bytes written.

    python bench/early_hand_over.py [--quick] [--steps 100] [--step-seconds 0.1] [--width 64]
                                    [--flush 0,2,0.5] [--pause-every K --pause-seconds P] [--dir DIR] [--json]

A slow training loop (an MLP 784-W-W-10 of ``--width``, one SGD step then a sleep of ``--step-seconds``, as a
model whose step takes that long) is recorded with ``ModuleRecorder`` at each ``flush_seconds`` of ``--flush``
in turn, into a new run under ``--dir`` (default a temporary directory), after a short untimed warm-up run. ``0`` is the baseline: chunks go to
the store only when full (up to 8 MiB of the largest parameter: ``chunk_steps`` states) and at ``close()``.
A reader thread polls the run's ``committed_steps`` every 10 ms, as a dashboard or ``open_run`` would; a
state's *wait* is the time from the ``record()`` that recorded it to the first poll that sees it committed.
Bytes written are counted at the local sink (every chunk file written, rewrites included).

With ``--pause-every K`` the loop also stops recording for ``--pause-seconds`` after every ``K`` steps (an
evaluation, a checkpoint). A ``flush_seconds`` written with an ``L`` (``2L``) is the loop's own hand-overs only:
the recorder's writer thread does not hand a paused loop's chunk over (``Recorder._hand_over_if_due`` left out,
as before the thirty-third session), so the two can be compared in one run.

The table reports, per ``flush_seconds``: the median and largest wait, the MiB written and their ratio to
the baseline's of the same run, the loop's time and its ratio to the baseline's (the copies and hand-overs on
the training thread; the sleeps are in both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import torch
from torch import nn

import trajscope
from trajscope.store import StoreRoot
from trajscope.store.chunkio import LocalSink


class BytesCounted:
    """Counts the bytes of every chunk file the local sink writes, inside the block."""

    def __enter__(self):
        self.bytes, self._original = 0, LocalSink.put
        lock = threading.Lock()

        def put(sink, key, parts):
            with lock:
                self.bytes += sum(memoryview(p).nbytes for p in parts)
            return self._original(sink, key, parts)

        LocalSink.put = put
        return self

    def __exit__(self, *exc):
        LocalSink.put = self._original


def one_run(root: str, name: str, flush: float, steps: int, step_seconds: float, width: int,
            pause_every: int = 0, pause_seconds: float = 0.0, loop_only: bool = False) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    x, y = torch.randn(512, 784), torch.randint(0, 10, (512,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    recorded: list[float] = []
    seen: dict[int, float] = {}
    done = threading.Event()
    store_root = StoreRoot(root)

    def poll() -> None:
        committed = 0
        while not done.is_set():
            try:
                now_committed = int(store_root.read_attrs(name)["committed_steps"])
            except Exception:  # noqa: BLE001 - not created yet
                now_committed = 0
            now = time.monotonic()
            for k in range(committed, now_committed):
                seen.setdefault(k, now)
            committed = max(committed, now_committed)
            time.sleep(0.01)

    reader = threading.Thread(target=poll, daemon=True)
    from trajscope.producer.recorder import Recorder

    by_writer = Recorder._hand_over_if_due
    if loop_only:
        Recorder._hand_over_if_due = lambda self: None
    with BytesCounted() as counted:
        started = time.perf_counter()
        rec = trajscope.ModuleRecorder(model, root=root, name=name, flush_seconds=flush)
        reader.start()
        rec.record()
        recorded.append(time.monotonic())
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(loss=loss)
            recorded.append(time.monotonic())
            time.sleep(step_seconds)
            if pause_every and len(recorded) % pause_every == 0:
                time.sleep(pause_seconds)
        rec.close()
        loop_seconds = time.perf_counter() - started
        time.sleep(0.05)  # the reader's last poll
        done.set()
        reader.join()
    Recorder._hand_over_if_due = by_writer
    waits = [seen[k] - t for k, t in enumerate(recorded) if k in seen]
    return {"flush_seconds": flush, "loop_only": loop_only, "chunk_steps": rec.recorder.chunk, "early_hand_overs": rec.recorder.early_hand_overs,
            "median_wait_s": statistics.median(waits), "max_wait_s": max(waits), "states": len(recorded),
            "seen": len(waits), "mib_written": counted.bytes / 2**20, "loop_s": loop_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 steps")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--flush", default="0,2,0.5", help="flush_seconds to compare, the first the baseline; "
                        "2L: 2 s, the loop's own hand-overs only")
    parser.add_argument("--pause-every", type=int, default=0, help="a pause in recording after every K steps")
    parser.add_argument("--pause-seconds", type=float, default=5.0)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = 40 if args.quick else args.steps
    flushes = [(float(f.rstrip("L")), f.endswith("L")) for f in args.flush.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        one_run(root, "warm-up", flushes[0][0], 5, 0.0, args.width)  # (first-time costs, not reported)
        for i, (flush, loop_only) in enumerate(flushes):
            rows.append(one_run(root, f"r{i}", flush, steps, args.step_seconds, args.width, args.pause_every,
                                args.pause_seconds, loop_only))
    base = rows[0]
    for row in rows:
        row["written_over_baseline"] = row["mib_written"] / base["mib_written"]
        row["loop_over_baseline"] = row["loop_s"] / base["loop_s"]
    if args.json:
        print(json.dumps({"rows": rows, "steps": steps, "step_seconds": args.step_seconds, "width": args.width,
                          "pause_every": args.pause_every, "pause_seconds": args.pause_seconds}))
        return
    print("| flush_seconds | early hand-overs | median wait (s) | max wait (s) | MiB written | × written | loop (s) | × loop |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['flush_seconds']:g}{' (loop only)' if r['loop_only'] else ''} | {r['early_hand_overs']} | {r['median_wait_s']:.2f} | {r['max_wait_s']:.2f} | "
              f"{r['mib_written']:.1f} | {r['written_over_baseline']:.2f} | {r['loop_s']:.2f} | "
              f"{r['loop_over_baseline']:.3f} |")
    pauses = f", a pause of {args.pause_seconds:g} s after every {args.pause_every} steps" if args.pause_every else ""
    print(f"\n{steps} steps of {args.step_seconds} s{pauses}, MLP 784-{args.width}-{args.width}-10, chunk {base['chunk_steps']} "
          f"states; baseline flush_seconds {flushes[0][0]:g}; {sys.platform}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
