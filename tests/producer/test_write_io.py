"""``record.io``: CPU runs on a disk write their chunks with direct I/O by default, and record exactly what
buffered writes record; a SIGKILL in the middle leaves a run that resumes bit-identically.

States here are 64 kB of ``W`` in chunks of 4 (256 kB files): large enough for direct I/O
(``DIRECT_MIN_BYTES``). Whether the page cache was left out is asked of the kernel (``mincore``).
"""

from __future__ import annotations

import importlib.util
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trajscope import open_run
from trajscope.producer import produce, resume
from trajscope.producer import write_path as write_path_module
from trajscope.producer.write_path import write_io
from trajscope.store import StoreRoot, writer_process
from trajscope.store.chunkio import DIRECT_MIN_BYTES

_here = Path(__file__).parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_crash = _load("_crash_helpers_io", _here / "test_crash_resume.py")
_direct = _load("_direct_helpers", _here.parent / "store" / "test_direct_io.py")
assert_same_trajectory, start_producer, wait_for_commits = (_crash.assert_same_trajectory, _crash.start_producer,
                                                            _crash.wait_for_commits)
resident_pages, on_a_disk = _direct.resident_pages, _direct.on_a_disk

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "O_DIRECT"), reason="needs O_DIRECT (Linux)")


def large_config(small_config, steps: int = 60, **record):
    return small_config(data={"n": 60, "dim": 256, "mu": 0.1}, model={"width": 64},
                        init={"kind": "gaussian", "scale": 0.01},
                        train={"lr": 0.002, "steps": steps, "batch_size": 20},
                        record={"chunk_mib": 0.25, "commit_seconds": 0, **record})


def w_chunks(run: Path) -> list[Path]:
    """The chunk files of ``W``, in time order."""
    return sorted((p for p in (run / "W" / "c").rglob("*") if p.is_file()), key=lambda p: int(p.parts[-3]))


def test_cpu_runs_write_directly_by_default_and_record_the_same_bytes(tmp_path, small_config):
    runs = {"auto": {}, "buffered": {"io": "buffered"}, "direct": {"io": "direct"},
            "fsync": {"io": "direct", "durability": "fsync"}}  # direct writes, then fsync: the same bytes
    if writer_process.available():
        runs["process"] = {"io": "direct", "writer": "process"}
    for name, record in runs.items():
        produce(large_config(small_config, **record), root=tmp_path, name=name)
    chunks = {name: w_chunks(tmp_path / f"{name}.zarr") for name in runs}
    assert len(chunks["buffered"]) == 16  # 61 states in chunks of 4: 15 whole ones, then 1 state
    if on_a_disk(tmp_path):  # before anything reads the files back
        for name in ("auto", "direct", "fsync", "process"):
            for path in chunks.get(name, [])[:-1]:  # (the last chunk, padded with the fill value, is a new array)
                resident, _ = resident_pages(path)
                assert resident <= 1, (name, path.name, resident)  # at most the buffered tail's page
        assert all(resident_pages(p)[0] == resident_pages(p)[1] for p in chunks["buffered"])
    reference = open_run("buffered", tmp_path).load()
    assert reference.attrs["chunk_steps"] == 4 and reference.W[0].nbytes * 4 >= DIRECT_MIN_BYTES
    assert open_run("fsync", tmp_path).attrs["durability"] == "fsync"
    for name in runs:
        ds = open_run(name, tmp_path).load()
        assert ds.attrs["status"] == "complete" and ds.attrs["committed_steps"] == 61
        assert_same_trajectory(ds, reference)
        for ours, theirs in zip(chunks[name], chunks["buffered"], strict=True):
            assert ours.read_bytes() == theirs.read_bytes(), (name, ours.name)
    # and the steps are true GD steps of the loss the run records (W(k+1) - W(k) against -lr ∇L from numpy)
    X, y = reference.X.values.astype(np.float64), reference.y.values.astype(np.float64)
    W, v = reference.W.values[10].astype(np.float64), reference.v.values[10].astype(np.float64)
    rows = np.random.default_rng([3, 10]).choice(60, size=20, replace=False)
    pre = X[rows] @ W.T
    slope = -np.exp(-y[rows] * (np.maximum(pre, 0) @ v))  # d/dz exp(-z)
    g = (60 / 20) * y[rows] * slope
    grad_W = v[:, None] * (((pre > 0) * g[:, None]).T @ X[rows])
    expected = -0.002 * grad_W  # float32 steps: the difference of two W's carries their rounding, ~1e-5 of it
    np.testing.assert_allclose(reference.W.values[11] - reference.W.values[10], expected, rtol=2e-3,
                               atol=1e-4 * np.abs(expected).max())


def test_auto_is_direct_only_for_cpu_training_on_a_disk(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    expected = "direct" if on_a_disk(tmp_path) else "buffered"
    assert write_io("auto", StoreRoot(tmp_path), cpu) == expected
    assert write_io("auto", StoreRoot(tmp_path), torch.device("cuda")) == "buffered"
    assert write_io("auto", StoreRoot("memory://runs"), cpu) == "buffered"
    if Path("/dev/shm").is_dir():
        assert write_io("auto", StoreRoot("/dev/shm/trajscope-test"), cpu) == "buffered"
    assert write_io("buffered", StoreRoot(tmp_path), cpu) == "buffered"
    # a network or FUSE filesystem (none is mounted here: its name is what the mount table would say)
    monkeypatch.setattr(write_path_module, "filesystem_type", lambda path: "nfs4")
    assert write_io("auto", StoreRoot(tmp_path), cpu) == "buffered"
    monkeypatch.setattr(write_path_module, "filesystem_type", lambda path: "xfs")
    assert write_io("auto", StoreRoot(tmp_path), cpu) == "direct"
    monkeypatch.setattr(write_path_module, "filesystem_type", lambda path: "btrfs")  # direct turned buffered there
    assert write_io("auto", StoreRoot(tmp_path), cpu) == "buffered"
    assert write_io("direct", StoreRoot(tmp_path), torch.device("cuda")) == "direct"
    assert write_io("auto", StoreRoot(tmp_path), cpu, "zstd") == "buffered"  # a compressed chunk is never aligned


def test_a_bad_io_value_is_one_line(tmp_path, small_config):
    from trajscope.errors import UserError

    with pytest.raises(UserError, match=r"record\.io"):
        produce(small_config(record={"io": "fast"}), root=tmp_path, name="bad")


def test_sigkill_during_direct_writes_leaves_a_run_that_resumes_bit_identically(tmp_path, small_config, python_env):
    config = large_config(small_config, steps=3000, io="direct")  # (direct even where auto would not be)
    produce(config, root=tmp_path / "ref", name="ref")
    reference = open_run("ref", tmp_path / "ref").load()
    proc = start_producer(tmp_path, config, "killed", python_env)
    wait_for_commits(tmp_path, "killed", 600, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ds = open_run("killed", tmp_path / "runs")
    committed = ds.attrs["committed_steps"]
    assert ds.attrs["status"] == "running" and 600 <= committed < 3001
    np.testing.assert_array_equal(ds.W.values, reference.W.values[:committed])  # decoding checks every crc32c
    result = resume("killed", root=tmp_path / "runs")
    assert result.status == "complete" and result.committed_steps == 3001
    assert_same_trajectory(open_run("killed", tmp_path / "runs").load(), reference)


def test_a_live_reader_of_a_direct_written_run_sees_only_whole_committed_states(tmp_path, small_config, python_env):
    """While a producer writes with direct I/O, readers opening the run again and again see ``committed_steps``
    states, each equal to the uninterrupted run's (every chunk read whole: its crc32c is checked on decoding)."""
    config = large_config(small_config, steps=3000, io="direct")
    produce(config, root=tmp_path / "ref", name="ref")
    reference = open_run("ref", tmp_path / "ref")
    proc = start_producer(tmp_path, config, "live", python_env)
    seen, read, deadline = set(), set(), time.monotonic() + 120  # read: the W chunks a look read back
    try:
        wait_for_commits(tmp_path, "live", 1, proc)
        while time.monotonic() < deadline:
            gone = proc.poll() is not None  # (before the look: a look after the producer ended is the last)
            ds = open_run("live", tmp_path / "runs")
            committed = ds.attrs["committed_steps"]
            assert ds.sizes["step"] == committed
            if committed and committed not in seen:
                seen.add(committed)
                tail = slice(max(0, committed - 9), committed)  # the newest states, across a chunk boundary
                read |= set(range(tail.start // 4, (committed - 1) // 4 + 1))
                np.testing.assert_array_equal(ds.W[tail].values, reference.W[tail].values)
                np.testing.assert_array_equal(ds.v[tail].values, reference.v[tail].values)
            if gone:
                break
            time.sleep(0.01)  # (the producer needs the cores more than this loop)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert len(seen) >= 3 and max(seen) == 3001, sorted(seen)
    if on_a_disk(tmp_path):  # and the chunks no look read back were written directly: none in the page cache
        unread = [p for i, p in enumerate(w_chunks(tmp_path / "runs" / "live.zarr")[:-1]) if i not in read]
        assert len(unread) > 100 and all(resident_pages(p)[0] <= 1 for p in unread)
