"""Shared fixtures: small real runs produced into temporary store roots."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


def small_config(**sections) -> dict:
    """A tiny run config (seconds on a CPU); ``sections`` update the defaults section by section."""
    config = {
        "name": "tiny",
        "seed": 3,
        "data": {"kind": "synthetic", "n": 30, "dim": 6, "mu": 0.2},
        "model": {"width": 8},
        "init": {"kind": "balanced", "scale": 0.05},
        "loss": {"kind": "exp", "reduction": "sum"},
        "train": {"lr": 0.01, "steps": 40},
        "record": {"chunk_mib": 0.001},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config


@pytest.fixture(name="small_config", scope="session")
def small_config_fixture():
    """The :func:`small_config` factory, for tests that build configs themselves."""
    return small_config


@pytest.fixture
def make_run(tmp_path):
    """``make_run(name, **sections)`` produces a tiny run under ``tmp_path/runs`` and returns its dataset."""
    from trajscope import open_run
    from trajscope.producer import produce

    root = tmp_path / "runs"

    def _make(name: str = "tiny", **sections):
        produce(small_config(**sections), root=root, name=name)
        return open_run(name, root=root)

    _make.root = root
    return _make


@pytest.fixture
def python_env() -> dict:
    """Environment for subprocesses (the package is installed in editable mode)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


@pytest.fixture
def interrupt_writer_join(monkeypatch):
    """``interrupt_writer_join()`` makes the first wait for a recorder's writer thread raise
    ``KeyboardInterrupt`` while that thread still commits (its final commit is delayed 0.3 s): a user's
    Ctrl-C during ``close``, without a real signal (``interrupts=2``: the second wait too, a second Ctrl-C).
    Returns the log that ``"interrupted"`` and ``"committed"`` fill."""
    import time

    from trajscope.producer.recorder import Recorder

    def arm(commit_delay: float = 0.3, interrupts: int = 1) -> list[str]:
        log: list[str] = []
        wait, commit_all = Recorder._wait_for_writer, Recorder._commit_all

        def interrupted_wait(self):
            if log.count("interrupted") < interrupts:
                log.append("interrupted")
                raise KeyboardInterrupt
            return wait(self)

        def slow_commit_all(self):
            time.sleep(commit_delay)
            commit_all(self)
            log.append("committed")

        monkeypatch.setattr(Recorder, "_wait_for_writer", interrupted_wait)
        monkeypatch.setattr(Recorder, "_commit_all", slow_commit_all)
        return log

    return arm


def pytest_terminal_summary(terminalreporter):
    """How the tests' ``trajscope`` commands ran (``tests/cli_fork.py``): forked from the warm interpreter, or fresh,
    and why (a command that should have been forked and was not shows up here, and in the suite's time)."""
    from tests import cli_fork

    if cli_fork.counts:
        terminalreporter.write_line("trajscope commands: " + ", ".join(
            f"{count} {how}" for how, count in cli_fork.counts.most_common()))
