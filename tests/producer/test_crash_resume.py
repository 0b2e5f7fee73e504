"""Killed, interrupted and failing producers: committed data survive, resume is bit-identical."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from trajscope import open_run
from trajscope.producer import produce, resume
from trajscope.store import RunLocked, RunWriter, StoreRoot
from tests import cli_fork

VARIABLES = ("W", "v", "loss", "output", "step", "t")


def slow_config(small_config, **sections):
    """A run long enough (several seconds) to be stopped mid-way, with small chunks (many commits)."""
    base = small_config(
        data={"n": 60, "dim": 12, "mu": 0.1},
        model={"width": 24},
        init={"kind": "gaussian", "scale": 0.01},
        train={"lr": 0.002, "steps": 8000, "batch_size": 20},
        record={"chunk_mib": 0.02},
    )
    for key, value in sections.items():
        base[key] = {**base[key], **value}
    return base


def start_producer(tmp_path, config, name, env):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        ["trajscope", "produce", str(path), "--root", str(tmp_path / "runs"), "--name", name, "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_commits(tmp_path, name, at_least, proc, timeout=60.0):
    meta = tmp_path / "runs" / f"{name}.zarr" / "zarr.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if meta.exists():
            committed = json.loads(meta.read_text())["attributes"].get("committed_steps", 0)
            if committed >= at_least:
                return committed
        time.sleep(0.02)
    raise AssertionError("the producer did not commit in time")


def assert_same_trajectory(a, b):
    assert a.sizes == b.sizes
    for name in VARIABLES:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_config):
    """The uninterrupted run of :func:`slow_config` (computed once for the module)."""
    root = tmp_path_factory.mktemp("ref")
    produce(slow_config(small_config), root=root, name="ref")
    return open_run("ref", root).load()


def test_sigkill_leaves_committed_steps_and_resume_is_bit_identical(tmp_path, small_config, python_env, reference):
    proc = start_producer(tmp_path, slow_config(small_config), "killed", python_env)
    wait_for_commits(tmp_path, "killed", 1500, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ds = open_run("killed", tmp_path / "runs")
    assert ds.attrs["status"] == "running"  # nobody could say otherwise
    committed = ds.attrs["committed_steps"]
    assert 1500 <= committed < 8001 and ds.sizes["step"] == committed
    loaded = ds.load()  # decoding verifies every chunk's crc32c
    for name in ("W", "v", "loss", "output"):
        assert np.isfinite(loaded[name].values).all(), name
    np.testing.assert_array_equal(loaded.step.values, np.arange(committed))
    np.testing.assert_array_equal(loaded.W.values, reference.W.values[:committed])

    result = resume("killed", root=tmp_path / "runs")
    assert result.status == "complete" and result.committed_steps == 8001
    assert_same_trajectory(open_run("killed", tmp_path / "runs").load(), reference)


def test_sigint_ends_as_interrupted_with_everything_committed(tmp_path, small_config, python_env, reference):
    proc = start_producer(tmp_path, slow_config(small_config), "stopped", python_env)
    wait_for_commits(tmp_path, "stopped", 1000, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    ds = open_run("stopped", tmp_path / "runs")
    assert ds.attrs["status"] == "interrupted" and "interrupted" in out
    # (no hint was printed, then one without its --root: found by reviews)
    assert f"continue it: trajscope resume stopped --root {tmp_path / 'runs'}" in out
    committed = ds.attrs["committed_steps"]
    assert ds.attrs["last_step"] == committed - 1
    np.testing.assert_array_equal(ds.W.values, reference.W.values[:committed])
    # the stop flushed a partial chunk; resuming rewrites that chunk whole and continues
    subprocess.run(["trajscope", "resume", "stopped", "--root", str(tmp_path / "runs"), "--quiet"],
                   check=True, env=python_env, capture_output=True, timeout=120)
    finished = open_run("stopped", tmp_path / "runs")
    assert finished.attrs["status"] == "complete"
    assert_same_trajectory(finished.load(), reference)


def test_resume_refuses_complete_and_locked_runs(make_run):
    make_run("done")
    with pytest.raises(Exception, match="complete; nothing to resume"):
        resume("done", root=make_run.root)
    root = StoreRoot(make_run.root)
    attrs = root.read_attrs("done")
    attrs["status"] = "interrupted"
    root.write_attrs("done", attrs)
    held = RunWriter.reopen(root, "done")
    try:
        with pytest.raises(RunLocked):
            resume("done", root=make_run.root)
    finally:
        held.finish("interrupted")


def test_exception_in_training_marks_the_run_failed(tmp_path, small_config, monkeypatch):
    from trajscope.producer import model

    calls = {"n": 0}
    original = model.TwoLayerReLU.gradient

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise FloatingPointError("boom at 25")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model.TwoLayerReLU, "gradient", flaky)
    with pytest.raises(RuntimeError, match="boom at 25"):
        produce(small_config(), root=tmp_path, name="fails")
    ds = open_run("fails", tmp_path)
    assert ds.attrs["status"] == "failed" and "FloatingPointError: boom at 25" in ds.attrs["error"]
    assert ds.sizes["step"] == 25  # states 0..24 were recorded before the failing update
    assert np.isfinite(ds.W.values).all()


def test_writer_failure_marks_the_run_failed(tmp_path, small_config, monkeypatch):
    def broken(self, start, values):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(RunWriter, "write_block", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        produce(small_config(train={"steps": 200}), root=tmp_path, name="nowrite")
    attrs = StoreRoot(tmp_path).read_attrs("nowrite")
    assert attrs["status"] == "failed" and "disk full" in attrs["error"] and attrs["committed_steps"] == 0


def test_back_pressure_never_drops_steps(tmp_path, small_config, monkeypatch):
    original = RunWriter.write_block

    def slow(self, start, values):
        time.sleep(0.01)
        return original(self, start, values)

    monkeypatch.setattr(RunWriter, "write_block", slow)
    produce(small_config(train={"steps": 300}, record={"chunk_mib": 0.0005, "buffers": 2}), root=tmp_path, name="bp")
    ds = open_run("bp", tmp_path)
    assert ds.attrs["chunk_steps"] <= 3  # many more chunks than buffers
    np.testing.assert_array_equal(ds.step.values, np.arange(301))
    assert np.isfinite(ds.W.values).all()


def test_resume_of_a_run_that_died_after_its_final_commit_trains_nothing_more(tmp_path, small_config, monkeypatch):
    """A run that met ``train.stop_loss``, committed every state and died before its final status write: the
    uninterrupted run stops there, so resume finishes it as it is instead of training one more step."""
    produce(small_config(train={"lr": 0.01, "steps": 60}), root=tmp_path, name="full")
    stop = float(open_run("full", tmp_path).loss.values[30])
    config = small_config(train={"lr": 0.01, "steps": 60, "stop_loss": stop})
    produce(config, root=tmp_path, name="ref")
    ref = open_run("ref", tmp_path).load()
    assert ref.sizes["step"] < 61 and float(ref.loss.values[-1]) <= stop

    def dies_before_the_status(self, status, error=None, **extra):
        self.close_writes()
        self.lock.release()  # as a killed process's lock is
        raise SystemError("killed after the final commit")

    monkeypatch.setattr(RunWriter, "finish", dies_before_the_status)
    with pytest.raises(SystemError):
        produce(config, root=tmp_path, name="r")
    monkeypatch.undo()
    attrs = StoreRoot(tmp_path).read_attrs("r")
    assert attrs["status"] == "running" and attrs["committed_steps"] == ref.sizes["step"]
    result = resume("r", root=tmp_path)
    assert result.status == "complete" and result.committed_steps == ref.sizes["step"]
    final = open_run("r", tmp_path).load()
    assert final.attrs["status"] == "complete" and final.sizes == ref.sizes
    for name in VARIABLES:
        np.testing.assert_array_equal(final[name].values, ref[name].values, err_msg=name)


def test_the_waits_of_an_interrupted_run_and_its_resume_add_up(tmp_path, small_config, monkeypatch):
    """A Ctrl-C at the 30th update ends the run ``interrupted`` with its loop's waits stored in the run
    (``recording_waits``); ``resume`` adds its own to them."""
    from trajscope.producer import model
    from trajscope.store.dataset_attrs import run_attr

    calls, original = {"n": 0}, model.TwoLayerReLU.gradient

    def interrupted_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model.TwoLayerReLU, "gradient", interrupted_once)
    first = produce(small_config(train={"steps": 80}), root=tmp_path, name="twice")
    assert first.status == "interrupted"
    before = run_attr(open_run("twice", tmp_path).attrs, "recording_waits")
    assert before["close_seconds"] > 0 and before["seconds"] > 0
    second = resume("twice", root=tmp_path)
    assert second.status == "complete" and second.committed_steps == 81
    after = run_attr(open_run("twice", tmp_path).attrs, "recording_waits")
    # a segment's stored seconds end before its final write, its RunResult's after it
    assert before["seconds"] + second.store_close_seconds < after["seconds"] <= before["seconds"] + second.seconds
    assert after["close_seconds"] == pytest.approx(before["close_seconds"] + second.store_close_seconds, abs=1e-5)
    assert after["store_seconds"] == pytest.approx(before["store_seconds"] + second.store_wait_seconds, abs=1e-5)


def test_a_ctrl_c_while_the_last_chunks_are_written_ends_the_run_interrupted(tmp_path, small_config,
                                                                             interrupt_writer_join):
    """``produce`` treats a Ctrl-C during its recorder's close like one in the loop: the run ends ``interrupted``
    over everything the writer thread committed (not ``running`` with its lock held)."""
    config = small_config(train={"steps": 80})
    produce(config, root=tmp_path, name="ref")
    ref = open_run("ref", tmp_path).load()
    log = interrupt_writer_join()
    try:
        result = produce(config, root=tmp_path, name="r")
    except KeyboardInterrupt:  # (not left to stop the whole test session)
        pytest.fail("the Ctrl-C during close escaped produce instead of ending the run interrupted")
    assert log == ["interrupted", "committed"]
    assert result.status == "interrupted" and result.committed_steps == ref.sizes["step"] == 81
    ds = open_run("r", tmp_path)
    assert ds.attrs["status"] == "interrupted" and ds.attrs["committed_steps"] == 81
    for name in VARIABLES:
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)


def test_a_full_disk_keeps_every_chunk_written_before_it(tmp_path, small_config, monkeypatch):
    """The 4th chunk file of ``W`` fails (no space left) in a run that would commit only at its end: the run
    fails, and the three blocks written before the failure are committed all the same, equal to an
    uninterrupted run's; nothing of the failed block is."""
    import errno

    from trajscope.store.chunkio import LocalSink

    config = small_config(train={"steps": 80}, record={"chunk_mib": 0.002, "commit_seconds": 60})
    produce(config, root=tmp_path, name="ref")
    ref = open_run("ref", tmp_path).load()
    chunk = ref.attrs["chunk_steps"]
    assert 81 > 4 * chunk
    put = LocalSink.put

    def disk_full_at_the_fourth_chunk(self, key, parts):
        if key.startswith("W/c/3/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", disk_full_at_the_fourth_chunk)
    with pytest.raises(RuntimeError, match="No space left"):
        produce(config, root=tmp_path, name="full")
    ds = open_run("full", tmp_path).load()
    assert ds.attrs["status"] == "failed" and ds.attrs["committed_steps"] == 3 * chunk
    for name in VARIABLES:
        np.testing.assert_array_equal(ds[name].values, ref[name].values[: 3 * chunk], err_msg=name)


def test_a_second_ctrl_c_while_closing_leaves_the_run_to_resume(tmp_path, small_config, interrupt_writer_join):
    """Two Ctrl-Cs while the writer thread still commits: ``produce`` raises the interrupt at once and does
    not end the run under the running thread (whose commit would land after a shrink). The thread commits;
    the run is left ``running``, everything committed, and unlocked once the thread has stopped, so that
    ``resume`` in the same process (a notebook's kernel outlives the Ctrl-C) ends it, equal to an
    uninterrupted run."""
    import threading

    config = small_config(train={"steps": 80})
    log = interrupt_writer_join(interrupts=2)
    with pytest.raises(KeyboardInterrupt):
        produce(config, root=tmp_path, name="r")
    for name in ("trajscope-writer", "trajscope-unlock"):
        for thread in [t for t in threading.enumerate() if t.name == name]:
            thread.join(20)
    assert log == ["interrupted", "interrupted", "committed"]
    ds = open_run("r", tmp_path)
    assert ds.attrs["status"] == "running" and ds.attrs["committed_steps"] == 81 and ds.sizes["step"] == 81
    assert resume("r", root=tmp_path).status == "complete"  # not RunLocked by this very process
    produce(config, root=tmp_path, name="whole")
    assert_same_trajectory(open_run("r", tmp_path).load(), open_run("whole", tmp_path).load())


def test_a_failure_before_recording_starts_ends_the_run_and_unlocks_it(tmp_path, small_config, monkeypatch):
    """The recorder cannot be built (as with a device out of memory for its buffers): ``produce`` raises, the
    run ends ``failed`` with the error and is unlocked, so ``resume`` in the same process takes it up (a
    notebook or a sweep worker would otherwise hold it until it exits); once the cause is gone the resumed run
    equals an uninterrupted one."""
    from trajscope.producer.recorder import Recorder

    config = small_config(train={"steps": 40})

    def no_memory(self, *args, **kwargs):
        raise RuntimeError("out of memory for the chunk buffers (made up)")

    monkeypatch.setattr(Recorder, "__init__", no_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        produce(config, root=tmp_path, name="r")
    attrs = open_run("r", tmp_path).attrs
    assert attrs["status"] == "failed" and "out of memory" in attrs["error"] and attrs["committed_steps"] == 0
    with pytest.raises(RuntimeError, match="out of memory"):  # not RunLocked: the lock was released
        resume("r", root=tmp_path)
    monkeypatch.undo()
    assert resume("r", root=tmp_path).status == "complete"
    produce(config, root=tmp_path, name="whole")
    assert_same_trajectory(open_run("r", tmp_path).load(), open_run("whole", tmp_path).load())


def test_a_full_disk_at_the_final_status_is_one_error_and_leaves_the_run_to_resume(tmp_path, small_config,
                                                                                      monkeypatch):
    """Every chunk is written and committed, then the disk fills up before the final document: ``produce``
    raises one :class:`RunFailed` line (not a bare OSError) saying the status could not be stored and what is
    kept; the run stays ``running`` with everything committed, unlocked, and ``resume`` in the same process
    ends it, equal to an uninterrupted run."""
    import errno

    from trajscope.store import writer as writer_module
    from trajscope.store.errors import RunFailed

    config = small_config(train={"steps": 40})
    final = writer_module.final_document_bytes  # (made, then written, as the run ends)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "final_document_bytes", disk_full)
    with pytest.raises(RunFailed) as caught:
        produce(config, root=tmp_path, name="r")
    message = str(caught.value)
    assert "\n" not in message and "ended complete" in message and "No space left" in message
    assert "41 committed states are kept" in message
    assert f"trajscope resume {StoreRoot(tmp_path).run_url('r')}" in message
    ds = open_run("r", tmp_path)
    assert ds.attrs["status"] == "running" and ds.attrs["committed_steps"] == 41
    monkeypatch.setattr(writer_module, "final_document_bytes", final)
    assert resume("r", root=tmp_path).status == "complete"  # not RunLocked: the lock was released
    produce(config, root=tmp_path, name="whole")
    assert_same_trajectory(open_run("r", tmp_path).load(), open_run("whole", tmp_path).load())


def test_a_full_disk_after_the_final_status_says_the_run_ended_and_how_to_finish_the_cut(tmp_path, small_config,
                                                                                           monkeypatch):
    """The final document is stored, then cutting the arrays to the committed states fails: the error says the
    run ended (not that its status is lost) and names ``fsck --repair``, which finishes the cut."""
    import errno

    from trajscope.store import writer as writer_module
    from trajscope.store.errors import RunFailed
    from trajscope.store.fsck import fsck_run

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    config = small_config(train={"steps": 40, "stop_loss": 28.0})  # stops near step 17: arrays of 41 to cut
    monkeypatch.setattr(writer_module, "shrink_arrays", disk_full)
    with pytest.raises(RunFailed) as caught:
        produce(config, root=tmp_path, name="r")
    message = str(caught.value)
    import zarr

    ds = open_run("r", tmp_path)
    committed = ds.attrs["committed_steps"]
    assert ds.attrs["status"] == "complete" and ds.sizes["step"] == committed < 41  # readers cut it already
    assert f"ended complete, but its arrays could not be cut to its {committed} committed states" in message
    assert f"trajscope fsck --repair {StoreRoot(tmp_path).run_url('r')}" in message and "resume" not in message
    assert zarr.open_array(str(tmp_path / "r.zarr" / "W"), mode="r").shape[0] == 41  # not cut on storage
    monkeypatch.undo()
    assert fsck_run(StoreRoot(tmp_path), "r", repair=True).status == "complete"
    assert zarr.open_array(str(tmp_path / "r.zarr" / "W"), mode="r").shape[0] == committed
    produce(config, root=tmp_path, name="whole")
    assert_same_trajectory(open_run("r", tmp_path).load(), open_run("whole", tmp_path).load())


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_full_disk_at_the_last_chunk_keeps_every_chunk_written_before_it(tmp_path, small_config, monkeypatch,
                                                                            writer):
    """The last chunk file of ``W`` fails late, while the run closes (its final commit meets the failure): the
    chunks before it are committed all the same, by the writer thread or the writer process."""
    from trajscope.store import faults

    config = small_config(train={"steps": 80}, record={"chunk_mib": 0.002, "commit_seconds": 60, "writer": writer})
    produce(config, root=tmp_path, name="ref")
    ref = open_run("ref", tmp_path).load()
    chunk = ref.attrs["chunk_steps"]
    last = (ref.sizes["step"] - 1) // chunk
    assert last >= 3
    monkeypatch.setenv(faults.ENV, f"write.renaming:raise:1:W/c/{last}/")  # (the writer process inherits it)
    with pytest.raises(RuntimeError, match="injected fault"):
        produce(config, root=tmp_path, name="full")
    monkeypatch.delenv(faults.ENV)
    ds = open_run("full", tmp_path).load()
    assert ds.attrs["status"] == "failed" and ds.attrs["committed_steps"] == last * chunk
    for name in VARIABLES:
        np.testing.assert_array_equal(ds[name].values, ref[name].values[: last * chunk], err_msg=name)


def test_a_ctrl_c_while_closing_a_run_whose_writing_failed_ends_it_failed(tmp_path, small_config, monkeypatch,
                                                                          interrupt_writer_join):
    """The last chunk's write fails and a Ctrl-C comes while the run closes: the failure is what the run says
    (``failed``, with the error, and produce raises it), not a plain ``interrupted``; the chunks written before
    it are committed."""
    from trajscope.store import faults

    config = small_config(train={"steps": 80}, record={"chunk_mib": 0.002, "commit_seconds": 60})
    produce(config, root=tmp_path, name="ref")
    chunk = open_run("ref", tmp_path).attrs["chunk_steps"]
    last = 80 // chunk
    monkeypatch.setenv(faults.ENV, f"write.renaming:raise:1:W/c/{last}/")
    log = interrupt_writer_join()
    with pytest.raises(RuntimeError, match="injected fault"):
        produce(config, root=tmp_path, name="both")
    assert log[0] == "interrupted"
    attrs = open_run("both", tmp_path).attrs
    assert attrs["status"] == "failed" and "injected fault" in attrs["error"]
    assert attrs["committed_steps"] == last * chunk


def ctrl_c_at_update(monkeypatch, n: int) -> None:
    """The ``n``-th gradient computed from now raises ``KeyboardInterrupt`` (a Ctrl-C in the loop)."""
    from trajscope.producer import model

    calls, original = {"n": 0}, model.TwoLayerReLU.gradient

    def gradient(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model.TwoLayerReLU, "gradient", gradient)


def test_a_resume_on_another_device_warns_and_records_each_segment(tmp_path, small_config, monkeypatch):
    """A run recorded on a GPU and resumed where there is none (``train.device: auto``) goes on, but its states
    from there on cannot be bit-identical to an uninterrupted run: the resume says so, and the run's
    ``resumed`` attribute records each segment's first state, device and torch version."""
    import warnings

    from trajscope.producer.segments import ResumeWarning
    from trajscope.store.dataset_attrs import run_attr

    ctrl_c_at_update(monkeypatch, 30)
    assert produce(small_config(train={"steps": 80}), root=tmp_path, name="moved").status == "interrupted"
    root = StoreRoot(tmp_path)
    attrs = root.read_attrs("moved")
    root.write_attrs("moved", {**attrs, "device": "cuda:0 (NVIDIA H200)"})  # as if recorded on a GPU
    first_state = attrs["committed_steps"]
    monkeypatch.undo()
    ctrl_c_at_update(monkeypatch, 20)
    with pytest.warns(ResumeWarning, match=r"from state \d+ with another device cuda:0 \(NVIDIA H200\) → cpu"):
        assert resume("moved", root=tmp_path).status == "interrupted"
    segments = run_attr(open_run("moved", tmp_path).attrs, "resumed")
    assert [(s["state"], s["device"]) for s in segments] == [(first_state, "cpu")]
    monkeypatch.undo()
    ctrl_c_at_update(monkeypatch, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)  # the same device as the segment before: no warning
        assert resume("moved", root=tmp_path).status == "interrupted"
    segments = run_attr(open_run("moved", tmp_path).attrs, "resumed")
    assert [s["device"] for s in segments] == ["cpu", "cpu"] and segments[1]["state"] > segments[0]["state"]
    assert segments[0]["torch"] == attrs["versions"]["torch"]
    stored = root.read_attrs("moved")  # the last segment made to look recorded on a GPU: the CLI says so
    root.write_attrs("moved", {**stored, "resumed": [*stored["resumed"][:-1], {**stored["resumed"][-1],
                                                                                "device": "cuda:0 (NVIDIA H200)"}]})
    cli = subprocess.run([sys.executable, "-m", "trajscope", "resume", "moved", "--root", str(tmp_path), "--quiet"],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert [line for line in cli.stderr.splitlines() if line.startswith("warning:")] == [
        line for line in cli.stderr.splitlines() if "another device cuda:0 (NVIDIA H200) → cpu" in line], cli.stderr
    assert "another device" in cli.stderr


def interrupted_in_a_chunk(tmp_path, small_config, monkeypatch, name: str) -> tuple[StoreRoot, dict, int]:
    """A run ended ``interrupted`` by a Ctrl-C inside a chunk: its root, its attributes and the index of the
    chunk that holds its last committed state."""
    ctrl_c_at_update(monkeypatch, 30)
    assert produce(small_config(train={"steps": 80}), root=tmp_path, name=name).status == "interrupted"
    monkeypatch.undo()
    root = StoreRoot(tmp_path)
    attrs = root.read_attrs(name)
    return root, attrs, (attrs["committed_steps"] - 1) // attrs["chunk_steps"]


def test_resume_refuses_a_run_whose_last_chunk_is_lost(tmp_path, small_config, monkeypatch):
    """resume reads back the chunk holding the last committed state (the state to go on from, the partial chunk
    it rewrites whole). Lost (removed by hand, lost by the file system), it read as fill values, and the
    rewrite stored them as the run's data, hiding the loss. It is refused now, and nothing is written."""
    import shutil

    from trajscope.store.errors import CorruptData

    root, before, last = interrupted_in_a_chunk(tmp_path, small_config, monkeypatch, "lost")
    shutil.rmtree(tmp_path / "lost.zarr" / "W" / "c" / str(last))
    with pytest.raises(CorruptData, match=rf"W/c/{last}/0/0 .* is missing"):
        resume("lost", root=tmp_path)
    after = root.read_attrs("lost")
    assert after["status"] == "interrupted" and after["committed_steps"] == before["committed_steps"]
    assert not (tmp_path / "lost.zarr" / "W" / "c" / str(last)).exists()  # nothing rewritten over the loss
    cli = cli_fork.run(["resume", "lost", "--root", str(tmp_path), "--quiet"])
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1 and "is missing" in cli.stderr, cli.stderr


def test_resume_refuses_a_run_whose_last_chunk_fails_its_checksum_and_keeps_its_end(tmp_path, small_config,
                                                                                      monkeypatch):
    """Found by a review: a truncated last chunk was found only after the resume had marked the run ``running``
    (its ``interrupted``, final loss and last step erased), with a message naming neither run nor chunk."""
    root, before, last = interrupted_in_a_chunk(tmp_path, small_config, monkeypatch, "torn")
    chunk = tmp_path / "torn.zarr" / "W" / "c" / str(last) / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    cli = cli_fork.run(["resume", "torn", "--root", str(tmp_path), "--quiet"])
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1, cli.stderr
    assert "'torn'" in cli.stderr and f"W/c/{last}/0/0" in cli.stderr, cli.stderr
    after = root.read_attrs("torn")
    assert {k: after.get(k) for k in ("status", "committed_steps", "last_step", "final_loss")} == \
        {k: before.get(k) for k in ("status", "committed_steps", "last_step", "final_loss")}


@pytest.mark.parametrize("lr", [0.01, 1e30])  # a run that converges; one whose loss is not finite
def test_a_run_resumed_at_its_last_state_keeps_its_final_loss(tmp_path, small_config, monkeypatch, lr):
    """Found by a review: a run whose every state was committed, its producer stopped before the final status,
    was resumed without training (nothing left to record) and ended ``complete`` with ``final_loss`` null: a
    diverged run lost its ``not_finite`` and stopped reading as diverged, a converged one lost its loss. It ends
    with the loss of its last committed state, as an uninterrupted run does."""
    import errno

    from trajscope.store import writer as writer_module
    from trajscope.store.errors import RunFailed

    config = small_config(train={"lr": lr, "steps": 40})
    produce(config, root=tmp_path, name="whole")
    final = writer_module.final_document_bytes

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "final_document_bytes", disk_full)
    with pytest.raises(RunFailed):
        produce(config, root=tmp_path, name="r")
    monkeypatch.setattr(writer_module, "final_document_bytes", final)
    result = resume("r", root=tmp_path)
    whole, resumed = (StoreRoot(tmp_path).read_attrs(name) for name in ("whole", "r"))
    assert resumed["status"] == "complete" and resumed["committed_steps"] == whole["committed_steps"]
    assert resumed["final_loss"] == whole["final_loss"] and resumed.get("not_finite") == whole.get("not_finite")
    assert (whole["final_loss"] is None) == (lr > 1)  # (the diverged run's is stored as not_finite)
    assert result.final_loss == pytest.approx(float(open_run("whole", tmp_path).loss.values[-1]), nan_ok=True)
