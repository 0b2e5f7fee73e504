"""Training progress on stderr, for a terminal and for a log file.

Both displays are rich :class:`~rich.progress.Progress` objects fed by the training loop's progress
callback (``{"step", "steps", "loss", "committed", "elapsed"}``, at most every 0.25 s):

* stderr is a terminal: a live bar (steps, steps/s, loss, committed states, elapsed, ETA) whose
  columns fit an 80-column terminal without cutting the times.
* stderr is a file or a pipe (``2> run.log``, a batch job): rich does not redraw there, so the same
  columns, without the bar, are printed as one plain line every ``interval`` seconds
  (``$TRAJSCOPE_PROGRESS_SECONDS``, default 10), plus a first and a last line.
"""

from __future__ import annotations

import collections
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from trajscope.errors import UserError

INTERVAL_ENV = "TRAJSCOPE_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0
#: steps/s is the rate over about the last this many seconds of training (found by a review: the average since the
#: start hid a slowdown late in a long run: 4701 steps/s shown where the last 10 s ran 1307)
RATE_WINDOW_SECONDS = 10.0


def _columns(*, bar: bool, label: bool) -> list:
    """Steps, steps/s, loss, committed states, elapsed, ETA; the times never shrink (``min_width``)."""
    times = {"table_column": Column(no_wrap=True, min_width=7)}
    columns = [
        TextColumn(("step " if label else "") + "{task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[rate]:.0f} steps/s"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("committed {task.fields[committed]}"),
        TimeElapsedColumn(**times),
        TextColumn("ETA"),
        TimeRemainingColumn(**times),
    ]
    return ([BarColumn(bar_width=None)] if bar else []) + columns


class ProgressDisplay:
    """Progress callback of :func:`trajscope.producer.produce`; see the module docstring."""

    def __init__(self, console: Console, *, interval: float | None = None):
        self.console = console
        self.live = console.is_terminal
        if interval is None:
            text = os.environ.get(INTERVAL_ENV, str(DEFAULT_INTERVAL))
            try:
                interval = float(text)
            except ValueError:
                raise UserError(f"{INTERVAL_ENV}={text!r} is not a number of seconds: set it to e.g. 30") from None
        self.interval = interval
        # on a terminal narrower than 100 columns the bar would squeeze the numbers: leave it out
        columns = _columns(bar=self.live and console.width >= 100, label=not self.live or console.width >= 100)
        self.progress = Progress(*columns, console=console, transient=False, expand=False,
                                 auto_refresh=self.live, disable=False)
        self.task: Any = None
        self._recent: collections.deque[tuple[int, float]] = collections.deque()  # (step, elapsed) of the window
        self._printed_at: float | None = None

    def __enter__(self) -> "ProgressDisplay":
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, info: dict[str, Any]) -> None:
        if self.task is None:
            self.task = self.progress.add_task("training", total=info["steps"], completed=info["step"],
                                               rate=0.0, loss="-", committed=0)
        self._recent.append((info["step"], info["elapsed"]))
        while len(self._recent) > 2 and info["elapsed"] - self._recent[1][1] >= RATE_WINDOW_SECONDS:
            self._recent.popleft()  # (the oldest kept is the last at least a window old)
        (first_step, _), seconds = self._recent[0], info["elapsed"] - self._recent[0][1]
        loss = "-" if info["loss"] is None else f"{info['loss']:.4g}"
        self.progress.update(self.task, completed=info["step"],
                             rate=(info["step"] - first_step) / seconds if seconds > 0 else 0.0,
                             loss=loss, committed=info["committed"])
        if not self.live:
            now = time.monotonic()
            if self._printed_at is None or now - self._printed_at >= self.interval or info.get("done"):
                self._printed_at = now
                self.console.print(self.progress.make_tasks_table(self.progress.tasks), width=200, crop=False,
                                   soft_wrap=True)
                self.console.file.flush()


@contextmanager
def progress_display(file: Any = None, *, interval: float | None = None) -> Iterator[ProgressDisplay]:
    """A :class:`ProgressDisplay` writing to ``file`` (default stderr): live bar or periodic log lines."""
    console = Console(file=file or sys.stderr, stderr=file is None)
    with ProgressDisplay(console, interval=interval) as display:
        yield display


def quiet_what_a_cut_leaves() -> None:
    """After a Ctrl-C: zarr's reads or writes cut short leave asyncio tasks pending and coroutines never awaited,
    whose messages at exit ("Task was destroyed but it is pending!") say nothing to a user of the command's one
    line (found by reviews)."""
    import logging

    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
