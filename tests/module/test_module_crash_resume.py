"""A SIGKILLed user run keeps every committed state readable; ModuleRecorder(resume=True) continues it
to the same trajectory an uninterrupted run records (CPU, plain SGD: deterministic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import trajscope

SCRIPT = Path(__file__).with_name("killable.py")
STEPS, HOLD = 40, 23


def _run(*args: str, check: bool = True, slow: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILLABLE_SLOW": "1" if slow else "0"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=300, check=check)


@pytest.mark.parametrize("slow", [False, True], ids=["chunks-fill", "slow-loop"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, slow):
    """``slow``: a loop whose chunk (1024 states) never fills before the kill: what it committed came from
    chunks handed over early (``flush_seconds``), and the resume rewrites that chunk as it grows. It is killed
    while paused, after recording ``HOLD`` steps: every state it recorded is committed, those after its last
    ``record()``-driven hand-over by the writer thread (no ``flush()``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILLABLE_SLOW": "1" if slow else "0"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "killed", str(STEPS), str(HOLD)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("HOLD"), proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    _run(str(tmp_path), "reference", str(STEPS), "0", slow=slow)
    ref = trajscope.open_run(tmp_path / "reference.zarr")
    assert ref.attrs["committed_steps"] == STEPS + 1

    # after the kill: status still "running", every committed state readable and right
    killed = trajscope.open_run(tmp_path / "killed.zarr")
    committed = killed.attrs["committed_steps"]
    assert killed.attrs["status"] == "running" and HOLD // 2 <= committed <= HOLD + 1
    assert committed == HOLD + 1 or not slow, committed
    chunk_steps = xr.open_zarr(tmp_path / "killed.zarr", consolidated=False)["fc1.weight"].encoding["chunks"][0]
    assert (chunk_steps > STEPS) == slow  # slow: not one chunk was full, yet states were committed
    for name in ("fc1.weight", "fc2.bias", "head.weight", "loss", "step"):
        np.testing.assert_array_equal(killed[name].values, ref[name].values[:committed])
    assert xr.open_zarr(tmp_path / "killed.zarr", consolidated=False)["fc1.weight"].shape[0] >= committed

    _run(str(tmp_path), "killed", str(STEPS), "0", "resume", slow=slow)
    resumed = trajscope.open_run(tmp_path / "killed.zarr")
    assert resumed.attrs["status"] == "complete" and resumed.attrs["committed_steps"] == STEPS + 1
    for name in ref.data_vars:
        np.testing.assert_array_equal(resumed[name].values, ref[name].values, err_msg=name)
