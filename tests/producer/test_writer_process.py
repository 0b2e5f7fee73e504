"""The writer process (``record.writer: process``): same bytes as the thread, crash-safe, errors surface.

Real subprocesses throughout: the trainer is a ``trajscope produce`` process, its writer a second
interpreter fed through shared memory; SIGKILL is a real SIGKILL.
"""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import numpy as np
import pytest

from trajscope import open_run
from trajscope.producer import produce, resume
from trajscope.store import RunLocked, RunWriter, StoreRoot, faults
from trajscope.store import writer_process

_spec = importlib.util.spec_from_file_location("_crash_helpers", Path(__file__).with_name("test_crash_resume.py"))
_crash = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash)
assert_same_trajectory, slow_config = _crash.assert_same_trajectory, _crash.slow_config
start_producer, wait_for_commits = _crash.start_producer, _crash.wait_for_commits

pytestmark = pytest.mark.skipif(not writer_process.available(), reason="needs memfd_create and fd passing (Linux)")

PROCESS = {"writer": "process"}


def test_process_and_thread_record_the_same_bytes(tmp_path, small_config):
    for writer in ("thread", "process"):
        produce(small_config(train={"steps": 120}, record={"writer": writer, "commit_seconds": 0}),
                root=tmp_path, name=writer)
    by_thread, by_process = open_run("thread", tmp_path).load(), open_run("process", tmp_path).load()
    assert by_process.attrs["status"] == "complete" and by_process.attrs["committed_steps"] == 121
    assert by_process.attrs["chunk_steps"] < 20  # several chunks, so several hand-offs and buffer reuses
    assert_same_trajectory(by_process, by_thread)
    for name in ("W", "v", "loss", "output", "step", "t"):  # the chunk files themselves, byte for byte
        keys = sorted(p.relative_to(tmp_path / "thread.zarr") for p in (tmp_path / "thread.zarr" / name).rglob("*")
                      if p.is_file())
        assert keys, name
        for key in keys:
            assert (tmp_path / "process.zarr" / key).read_bytes() == (tmp_path / "thread.zarr" / key).read_bytes(), key


def test_sigkill_of_the_trainer_leaves_a_resumable_run(tmp_path, small_config, python_env, reference_process):
    proc = start_producer(tmp_path, slow_config(small_config, record=PROCESS), "killed", python_env)
    wait_for_commits(tmp_path, "killed", 1500, proc)
    root = StoreRoot(tmp_path / "runs")
    with pytest.raises(RunLocked, match=f"pid {proc.pid} "):  # the trainer's pid names the lock's holder
        RunWriter.reopen(root, "killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ds = open_run("killed", tmp_path / "runs")
    committed = ds.attrs["committed_steps"]
    assert ds.attrs["status"] == "running" and 1500 <= committed < 8001 and ds.sizes["step"] == committed
    loaded = ds.load()  # every committed chunk decodes (crc32c)
    np.testing.assert_array_equal(loaded.W.values, reference_process.W.values[:committed])
    # the orphaned writer process saw end-of-file and exited: the lock is free (resume would be refused
    # after a few seconds otherwise) and the run resumes bit-identically
    result = resume("killed", root=tmp_path / "runs")
    assert result.status == "complete" and result.committed_steps == 8001
    assert_same_trajectory(open_run("killed", tmp_path / "runs").load(), reference_process)


@pytest.fixture(scope="module")
def reference_process(tmp_path_factory, small_config):
    """The uninterrupted run of :func:`slow_config`, recorded by the thread (the process must match it)."""
    root = tmp_path_factory.mktemp("ref")
    produce(slow_config(small_config, record={"writer": "thread"}), root=root, name="ref")
    return open_run("ref", root).load()


def test_an_error_in_the_writer_process_fails_the_run_with_one_line(tmp_path, small_config, monkeypatch):
    config = small_config(train={"steps": 200}, record={"writer": "process", "commit_seconds": 0})
    monkeypatch.setenv(faults.ENV, "commit.attrs:raise:3")  # inherited by the writer process
    with pytest.raises(RuntimeError) as caught:
        produce(config, root=tmp_path, name="broken")
    message = str(caught.value)
    assert "writer process failed: InjectedFault: injected fault at commit.attrs" in message and "\n" not in message
    monkeypatch.delenv(faults.ENV)
    ds = open_run("broken", tmp_path)
    assert ds.attrs["status"] == "failed" and "injected fault at commit.attrs" in ds.attrs["error"]
    committed = ds.attrs["committed_steps"]
    assert committed >= 2 * ds.attrs["chunk_steps"] and ds.sizes["step"] == committed
    resume("broken", root=tmp_path)
    produce(small_config(train={"steps": 200}, record={"writer": "thread"}), root=tmp_path, name="whole")
    assert_same_trajectory(open_run("broken", tmp_path).load(), open_run("whole", tmp_path).load())


def test_a_dead_writer_process_stops_the_trainer(tmp_path, small_config, monkeypatch):
    started = []
    original = writer_process.WriterProcess.start

    def start():
        started.append(original())
        return started[-1]

    monkeypatch.setattr(writer_process.WriterProcess, "start", staticmethod(start))
    seen = []

    def progress(info):
        if not seen and info.get("committed", 0) >= 50:
            seen.append(info["committed"])
            started[0].proc.send_signal(signal.SIGKILL)

    config = slow_config(small_config, record=PROCESS)
    with pytest.raises(RuntimeError, match=r"writer process \(pid \d+\) exited unexpectedly; exit code -9"):
        produce(config, root=tmp_path, name="orphan", progress=progress)
    ds = open_run("orphan", tmp_path)
    assert ds.attrs["status"] == "failed" and ds.attrs["committed_steps"] >= seen[0]


@pytest.mark.parametrize("point", ["write.chunk", "commit.attrs"])
def test_a_kill_fault_in_the_writer_process_stops_the_producer(point, tmp_path, small_config, python_env,
                                                                reference_process):
    env = {**python_env, faults.ENV: f"{point}:kill:3"}
    proc = start_producer(tmp_path, slow_config(small_config, record=PROCESS), "r", env)
    proc.communicate(timeout=300)
    assert proc.returncode == -9  # the writer process took its trainer with it, as a crash would
    ds = open_run("r", tmp_path / "runs")
    committed = ds.attrs["committed_steps"]
    np.testing.assert_array_equal(ds.load().W.values, reference_process.W.values[:committed])
    resume("r", root=tmp_path / "runs")
    assert_same_trajectory(open_run("r", tmp_path / "runs").load(), reference_process)


def test_ctrl_c_to_the_process_group_interrupts_with_everything_committed(tmp_path, small_config, python_env,
                                                                           reference_process):
    import os
    import subprocess

    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(slow_config(small_config, record=PROCESS)))
    proc = subprocess.Popen(["trajscope", "produce", str(path), "--root", str(tmp_path / "runs"), "--name", "c",
                             "--quiet"], env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's job
    wait_for_commits(tmp_path, "c", 1000, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the trainer and its writer process both get it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ds = open_run("c", tmp_path / "runs")
    assert ds.attrs["status"] == "interrupted" and ds.attrs["last_step"] == ds.attrs["committed_steps"] - 1
    np.testing.assert_array_equal(ds.W.values, reference_process.W.values[: ds.attrs["committed_steps"]])


def test_a_close_the_writer_process_never_confirms_fails_the_run(tmp_path, small_config, monkeypatch):
    """Without the writer process's final word the states handed off last may not be on disk: the run
    ends ``failed`` (resumable), never ``complete``."""
    original = writer_process.WriterProcess.close

    def close_without_final(self, timeout=600.0):
        original(self, timeout)
        return -1

    monkeypatch.setattr(writer_process.WriterProcess, "close", close_without_final)
    with pytest.raises(RuntimeError, match="never confirmed its final commit"):
        produce(slow_config(small_config, record=PROCESS), root=tmp_path, name="unsaid")
    assert open_run("unsaid", tmp_path).attrs["status"] == "failed"
