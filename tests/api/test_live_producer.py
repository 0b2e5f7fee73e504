"""A run being written by a producer process while a remote reader opens it over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import xarray as xr

from trajscope.store import StoreRoot, describe_run, open_run

CONFIG = """
data: {kind: synthetic, n: 200, dim: 50}
model: {width: 100}
train: {steps: 200000, lr: 0.001, threads: 1}
record: {every: 10}
"""
EVERY = 10  # the producer must outlast the test's reads even on a loaded machine: 200 000 steps, 20 001 states


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def committed(root: StoreRoot) -> int:
    try:
        info = describe_run("live", root, with_size=False)
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return info.committed_steps if info.status == "running" else 0


def test_open_zarr_over_http_while_a_producer_writes(tmp_path, serve):
    config = tmp_path / "slow.yaml"
    config.write_text(CONFIG)
    root = StoreRoot(tmp_path / "runs")
    cmd = [sys.executable, "-c", "from trajscope.cli import main; main()", "produce", str(config),
           "--root", root.location, "--name", "live", "--set", "record.chunk_mib=0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with serve(root) as srv:
            wait_for(lambda: committed(root) > 0, 120, "the producer's first commit")
            seen = []
            for _ in range(3):
                remote = xr.open_zarr(f"{srv.url}/zarr/live", zarr_format=3)
                n = remote.sizes["step"]
                assert remote.attrs["committed_steps"] == n and remote.attrs["status"] == "running"
                remote = remote.drop_attrs().load()
                local = open_run("live", root).isel(step=slice(0, n)).drop_attrs().load()  # may have moved on
                assert local.sizes["step"] == n
                xr.testing.assert_identical(remote, local)
                assert not np.isnan(remote["W"].values).any()  # no unwritten (fill) states in the snapshot
                np.testing.assert_array_equal(remote["step"].values, np.arange(n) * EVERY)
                seen.append(n)
                wait_for(lambda: committed(root) > n, 60, "another commit")
            assert seen == sorted(seen) and seen[0] < seen[-1]
            assert proc.poll() is None, "the producer must still be writing"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert describe_run("live", root).status in ("interrupted", "complete")
