"""Training progress: plain periodic lines in a log, a live bar on an 80-column terminal."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import yaml
from rich.console import Console

from trajscope.cli.progress import ProgressDisplay

LINE = re.compile(r"^step (\d+)/(\d+) (\d+) steps/s loss (\S+) committed (\d+) (\d+:\d\d:\d\d) ETA (\S+)$")


def test_log_gets_plain_lines_at_a_steady_interval(tmp_path, small_config):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(train={"steps": 20000}, record={"every": 50})))
    log = tmp_path / "run.log"
    with open(log, "w") as stderr:
        proc = subprocess.run([sys.executable, "-c", "from trajscope.cli import main; main()", "produce", str(config),
                               "--root", str(tmp_path / "runs"), "--name", "logged"],
                              stderr=stderr, stdout=subprocess.PIPE, text=True, timeout=300,
                              env={**__import__("os").environ, "TRAJSCOPE_PROGRESS_SECONDS": "0.5"})
    assert proc.returncode == 0
    lines = log.read_text().splitlines()
    assert "\r" not in log.read_text() and "\x1b" not in log.read_text()  # no redraws, no colours
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    steps = [int(m.group(1)) for m in parsed]
    assert len(lines) >= 3 and steps == sorted(steps) and steps[-1] == 20000
    last = parsed[-1]
    assert int(last.group(5)) == 20000 // 50 + 1 and last.group(7) == "0:00:00"


def test_interval_is_respected_with_a_fake_clock(monkeypatch):
    import trajscope.cli.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    display = ProgressDisplay(Console(file=out, force_terminal=False), interval=10)
    for i in range(0, 100):  # one callback every 0.25 s for 25 s
        display({"step": i * 10, "steps": 1000, "loss": 1.0 / (i + 1), "committed": i, "elapsed": i * 0.25})
        clock[0] += 0.25
    display({"step": 1000, "steps": 1000, "loss": 0.01, "committed": 100, "elapsed": 25.0, "done": True})
    steps = [int(LINE.match(line).group(1)) for line in out.getvalue().splitlines()]
    assert steps == [0, 400, 800, 1000]  # first call, every 10 s, the last


def test_an_80_column_terminal_shows_whole_times_and_an_eta():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    display = ProgressDisplay(console)
    assert display.live
    display({"step": 0, "steps": 150000, "loss": None, "committed": 0, "elapsed": 0.0})
    display({"step": 12345, "steps": 150000, "loss": 0.012345, "committed": 12001, "elapsed": 5.0})
    console.print(display.progress.get_renderable())
    text = out.getvalue().splitlines()[-1]
    assert len(text) <= 80 and "…" not in text
    assert re.search(r"\d+:\d\d:\d\d ETA (\d+:\d\d:\d\d|-:--:--)$", text.rstrip()), text
    assert "12345/150000" in text and "committed 12001" in text


def test_steps_per_second_is_the_recent_rate():
    """Found by a review: steps/s was the average since the start, so a run slowing down late showed its old rate
    (4701 steps/s where its last 10 s ran 1307). It is the rate over about the last RATE_WINDOW_SECONDS."""
    out = io.StringIO()
    display = ProgressDisplay(Console(file=out, force_terminal=False), interval=0)
    step = 0
    for i in range(401):  # 100 s at 1000 steps/s, then 25 s at 100 steps/s, a callback every 0.25 s
        step += 250
        display({"step": step, "steps": 10**6, "loss": 1.0, "committed": 0, "elapsed": (i + 1) * 0.25})
    for i in range(100):
        step += 25
        display({"step": step, "steps": 10**6, "loss": 1.0, "committed": 0, "elapsed": 100.25 + (i + 1) * 0.25})
    rates = [int(LINE.match(line).group(3)) for line in out.getvalue().splitlines()]
    assert rates[400] == 1000 and rates[-1] == 100  # the window is wholly in the slow part 25 s on
    from trajscope.cli.progress import RATE_WINDOW_SECONDS

    assert RATE_WINDOW_SECONDS <= 25
