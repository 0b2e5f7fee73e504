"""A user's training script for the crash test: ``python killable.py ROOT NAME STEPS HOLD [resume]``.

Records an MLP with ModuleRecorder; after step HOLD it prints ``HOLD <committed>`` and sleeps (to be
SIGKILLed). With ``resume`` it continues the run from its last committed state to STEPS.
With ``KILLABLE_SLOW=1`` in the environment it is a slow loop instead (a sleep after each step) with the
default chunks (1024 states: none fills) and ``flush_seconds=0.2``.
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from models import MLP, data, train  # noqa: E402

import trajscope  # noqa: E402


def main(root: str, name: str, steps: int, hold: int, resume: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MLP()
    x, y = data()
    slow = os.environ.get("KILLABLE_SLOW") == "1"
    options = {"flush_seconds": 0.2} if slow else {"chunk_mib": 0.004}
    with trajscope.ModuleRecorder(model, root=root, name=name, resume=resume, **options) as rec:
        if slow:
            record = rec.record
            rec.record = lambda **extra: (record(**extra), time.sleep(0.05))[0]
        if resume:
            rec.last_state()  # the model restarts from the last committed state
            start = rec.step
        else:
            rec.record()
            start = 1
        train(model, x, y, steps, rec, start=start, stop_after=hold if hold > 0 else None)
        if hold > 0:
            # slow: the loop pauses here (as for an evaluation) with its last states not handed over; the writer
            # thread hands them over once due, so every state recorded before the pause is committed
            deadline = time.monotonic() + 30  # (a recorder that never commits: the test fails, not hangs)
            while rec.committed_steps < (hold + 1 if slow else hold // 2) and time.monotonic() < deadline:
                time.sleep(0.01)
            print("HOLD", rec.committed_steps, flush=True)
            time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), len(sys.argv) > 5)
