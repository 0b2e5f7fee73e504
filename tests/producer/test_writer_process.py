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
import zarr

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


def assert_same_chunk_files(run: Path, reference: Path) -> None:
    """Every chunk file of every time-varying variable of ``reference`` exists in ``run`` with the same bytes."""
    for name in ("W", "v", "loss", "output", "step", "t"):
        keys = sorted(p.relative_to(reference) for p in (reference / name).rglob("*") if p.is_file())
        assert keys, name
        for key in keys:
            assert (run / key).read_bytes() == (reference / key).read_bytes(), key


def test_process_and_thread_record_the_same_bytes(tmp_path, small_config):
    for writer in ("thread", "process"):
        produce(small_config(train={"steps": 120}, record={"writer": writer, "commit_seconds": 0}),
                root=tmp_path, name=writer)
    by_thread, by_process = open_run("thread", tmp_path).load(), open_run("process", tmp_path).load()
    assert by_process.attrs["status"] == "complete" and by_process.attrs["committed_steps"] == 121
    assert by_process.attrs["chunk_steps"] < 20  # several chunks, so several hand-offs and buffer reuses
    assert_same_trajectory(by_process, by_thread)
    assert_same_chunk_files(tmp_path / "process.zarr", tmp_path / "thread.zarr")


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


# Ctrl-C; a closed terminal's SIGHUP (found by a review: it killed the writer process, the run ended failed)
@pytest.mark.parametrize("signame", ["SIGINT", "SIGHUP"])
def test_ctrl_c_to_the_process_group_interrupts_with_everything_committed(tmp_path, small_config, python_env,
                                                                           reference_process, signame):
    import os
    import subprocess

    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(slow_config(small_config, record=PROCESS)))
    proc = subprocess.Popen(["trajscope", "produce", str(path), "--root", str(tmp_path / "runs"), "--name", "c",
                             "--quiet"], env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's job
    wait_for_commits(tmp_path, "c", 1000, proc)
    os.killpg(proc.pid, getattr(signal, signame))  # what Ctrl-C does: the trainer and its writer process get it
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


_recorder_tests = importlib.util.spec_from_file_location("_recorder_tests",
                                                         Path(__file__).with_name("test_recorder.py"))
_staging = importlib.util.module_from_spec(_recorder_tests)
_recorder_tests.loader.exec_module(_staging)


def _record_staged(root, name, states, process, capacity=None, staging=None, start=0, writer=None,
                   trainer_commits=None):
    """Record ``states`` made-up states through an emulated GPU staging (separate host buffers filled later
    by another thread, as the copy to pinned memory is); returns the recorder (not closed), the writer, the
    recorded ``W`` and the staging."""
    import torch

    from trajscope.producer.recorder import Recorder
    from trajscope.producer.two_layer import variables as two_layer_variables

    h, dim, n = 4, 3, 5
    writer = writer or RunWriter.create(
        root, name, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=capacity or states, static={"X": np.ones((n, dim)), "y": np.array([1, -1, 1, -1, 1])},
        attrs={"config": {}},  # (reopening a run without a schema checks its producer config is there)
        chunk_bytes=h * dim * 4 * 5,
    )
    preload = writer.read_states((start // 5) * 5, start) if start % 5 else None
    if trainer_commits is not None:  # every commit the trainer's own writer makes, from the start
        commit = writer.commit
        writer.commit = lambda *a, **k: (trainer_commits.append(a), commit(*a, **k))
    staging = staging or _staging.DeferredStaging()
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
    columns = {"step": np.arange(capacity or states) * 3, "t": np.arange(capacity or states) * 0.5}
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2, staging=staging, columns=columns,
                        process=writer_process.WriterProcess.start() if process else None, start_index=start,
                        preload=preload)
    expected = []
    W = torch.zeros(h, dim) + sum(range(start))
    for k in range(start, states):
        W = W + k  # a new tensor each step, as in training
        recorder.record(W=W, v=torch.arange(h, dtype=torch.float32) * k, loss=torch.tensor(k / 10, dtype=torch.float64),
                        output=torch.full((n,), float(-k)))
        expected.append(W.clone())
    return recorder, writer, torch.stack(expected).numpy(), staging


def test_a_gpu_like_staging_hands_its_chunks_to_the_writer_process(tmp_path):
    """On a GPU with a writer process, the writer thread waits for each chunk's copy to the host, copies it
    into the slot's shared buffers and hands the slot to the process, which writes and commits: the same
    bytes as the writer thread writes, every chunk (two buffers, so each is reused several times)."""
    root, states = StoreRoot(tmp_path), 53
    for name in ("thread", "process"):
        trainer_commits = []
        recorder, writer, expected, staging = _record_staged(root, name, states, process=name == "process",
                                                             trainer_commits=trainer_commits)
        assert recorder.close() == states
        assert (not trainer_commits) == (name == "process")  # with a process, it alone commits
        writer.finish("complete")
        assert staging.copies == 11  # ten whole chunks and the final partial one
        ds = open_run(name, root)
        assert ds.attrs["committed_steps"] == states and ds.attrs["status"] == "complete"
        np.testing.assert_array_equal(ds.W.values, expected)
        np.testing.assert_array_equal(ds.step.values, np.arange(states) * 3)
        np.testing.assert_allclose(ds.loss.values, np.arange(states) / 10)
        np.testing.assert_array_equal(ds.output.values[:, 0], -np.arange(states))
    assert_same_chunk_files(tmp_path / "process.zarr", tmp_path / "thread.zarr")


def test_killing_the_writer_process_waits_for_its_receiver_before_closing_the_socket(tmp_path):
    """``kill()`` returns only once the receiver thread has seen the end of the socket and stopped: a socket
    closed under a receiver still running could hand its descriptor's number to a file opened meanwhile. The
    receiver is made slow (its error callback takes 0.5 s) so that a ``kill()`` closing at once is caught."""
    import time

    root = StoreRoot(tmp_path)
    recorder, writer, _, _ = _record_staged(root, "killed", 10, process=True, capacity=2000)
    process = recorder._process
    report = process._on_error

    def slow_report(exc):
        time.sleep(0.5)
        report(exc)

    process._on_error = slow_report
    process.kill()
    assert process._closed.is_set()  # the receiver has returned
    assert process._conn.closed and process._sock.fileno() == -1
    with pytest.raises(RuntimeError):
        recorder.close()
    writer.finish("failed", "killed", last_step=0)


def test_a_child_made_by_fork_does_not_keep_the_writer_process_alive():
    """A child forked by the trainer (a DataLoader's workers) closes its copies of the writer process's socket,
    so the writer process still sees the end of it as soon as the trainer's side closes (a killed trainer), not
    when the last such child exits: until then it kept the run locked."""
    import os
    import time

    process = writer_process.WriterProcess.start()
    child = os.fork()
    if child == 0:  # the child: lives on for 60 s, doing nothing with the socket
        time.sleep(60)
        os._exit(0)
    try:
        process._conn.close()  # the trainer's side goes away (the writer process has not been given a run)
        process._sock.close()
        process.proc.wait(timeout=30)  # it would wait for the child's 60 s if the child held a copy
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_a_dead_writer_process_behind_a_staging_stops_the_recorder(tmp_path):
    """The writer process dies mid-run: the next chunk's hand-off fails (the writer thread's send, or the
    receiver's end-of-file) and record() raises within a few chunks; nothing is committed past what the
    process committed."""
    root = StoreRoot(tmp_path)
    recorder, writer, _, _ = _record_staged(root, "orphan", 10, process=True, capacity=2000)
    recorder._process.proc.kill()
    recorder._process.proc.wait()
    import torch

    with pytest.raises(RuntimeError, match=r"writer process \(pid \d+\) exited unexpectedly"):
        for k in range(1000):
            recorder.record(W=torch.zeros(4, 3), v=torch.zeros(4), loss=torch.tensor(0.0, dtype=torch.float64),
                            output=torch.zeros(5))
    with pytest.raises(RuntimeError):
        recorder.close()
    on_storage = writer.reload_committed()  # what the process committed before it died
    assert recorder.committed == on_storage <= 10
    writer.finish("failed", "writer process died", last_step=0)
    assert open_run("orphan", root).attrs["committed_steps"] == on_storage
    assert zarr.open_array(str(tmp_path / "orphan.zarr" / "W"), mode="r").shape[0] == on_storage


def test_the_writer_process_is_only_started_when_asked_for_on_a_local_root(tmp_path):
    """``record.writer: auto`` (the default) and ``thread`` keep the writer thread on every device and root (on
    an H200 the thread recorded faster than the process, BENCHMARKS.md "GPU table"); an explicit ``process``
    applies on a CPU or CUDA device and a local root, and falls back to the thread elsewhere."""
    import torch

    from trajscope.producer.config import RecordConfig
    from trajscope.producer.write_path import start_writer_process

    assert RecordConfig().writer == "auto"
    local, remote = StoreRoot(tmp_path), StoreRoot("memory://writer-rule")
    cases = [("auto", local, "cuda", False), ("auto", local, "cpu", False), ("auto", remote, "cuda", False),
             ("thread", local, "cuda", False), ("process", local, "cpu", True), ("process", local, "cuda", True),
             ("process", remote, "cpu", False), ("process", local, "mps", False)]
    for choice, root, device, started in cases:
        process = start_writer_process(choice, root, torch.device(device))
        try:
            assert (process is not None) == started, (choice, root.location, device)
        finally:
            if process is not None:
                process.kill()


def test_a_failed_copy_while_closing_keeps_what_the_writer_process_committed(tmp_path):
    """The copy of the last partial chunk raises when the recorder closes (on a GPU: a device error is
    raised again by every later CUDA call). The writer process still commits the chunks it was handed, the
    recorder takes its ``committed_steps``, and finishing the run as failed keeps them: it neither shrinks
    the run to the recorder's stale count nor races the process's own commits."""

    class FailingLast(_staging.DeferredStaging):
        def start_copy(self, slot):
            if slot.count < 5:  # the final, partial chunk
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            super().start_copy(slot)

    root = StoreRoot(tmp_path)
    recorder, writer, expected, _ = _record_staged(root, "cut", 53, process=True, staging=FailingLast())
    with pytest.raises(RuntimeError, match="illegal memory access"):
        recorder.close()
    assert recorder.committed == 50  # ten whole chunks, handed off before the failure
    assert recorder._process.proc.poll() is not None  # the process is gone, nothing more to race
    writer.finish("failed", "CUDA error", last_step=49)
    ds = open_run("cut", root)
    assert ds.attrs["status"] == "failed" and ds.attrs["committed_steps"] == 50
    assert zarr.open_array(str(tmp_path / "cut.zarr" / "W"), mode="r").shape[0] == 50  # not shrunk on storage
    np.testing.assert_array_equal(ds.W.values, expected[:50])


def _cut_short(tmp_path, process, staging=None):
    """A run of 23 states of a 4-neuron network in chunks of 5, its recorder (two buffers), and ``record(k)``, which
    records the state whose every ``W`` entry is ``k``, until the Ctrl-C that the test makes land at the third
    chunk's hand-over; after it, another state is refused. Returns ``(root, writer, recorder)``."""
    import torch

    from trajscope.producer.recorder import Recorder
    from trajscope.producer.two_layer import variables as two_layer_variables

    h, dim, n, states = 4, 3, 5, 23
    root = StoreRoot(tmp_path)
    writer = RunWriter.create(
        root, "cut", variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=states, static={"X": np.ones((n, dim)), "y": np.array([1, -1, 1, -1, 1])},
        attrs={"config": {}}, chunk_bytes=h * dim * 4 * 5)
    recorder = Recorder(writer, {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)},
                        {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32},
                        torch.device("cpu"), buffers=2, columns={"step": np.arange(states), "t": np.arange(states) * 0.5},
                        staging=staging, process=process)

    def record(k):
        recorder.record(W=torch.full((h, dim), float(k)), v=torch.zeros(h), loss=torch.tensor(0.0, dtype=torch.float64),
                        output=torch.zeros(n))

    with pytest.raises(KeyboardInterrupt):
        for k in range(states):
            record(k)
    with pytest.raises(RuntimeError, match="a Ctrl-C interrupted handing states 10"):
        record(15)
    return root, writer, recorder


def _assert_interrupted_over(root, writer, recorder, kept):
    assert recorder.close() == kept
    writer.finish("interrupted")
    ds = open_run("cut", root)
    assert ds.attrs["status"] == "interrupted" and ds.attrs["committed_steps"] == kept
    np.testing.assert_array_equal(ds.W.values[:, 0, 0], np.arange(kept, dtype=np.float32))


@pytest.mark.parametrize("process", [False, True], ids=["writer thread", "writer process"])
def test_a_ctrl_c_while_a_chunk_goes_to_the_staging_ends_the_run_over_the_chunks_before(tmp_path, process):
    """A Ctrl-C lands while the third chunk is being handed to the staging (on a GPU: its copy to pinned
    memory being queued): that chunk never reaches the writer, so the recorder refuses to record on, and
    closing it commits the two chunks before, as an interrupted run (with a writer process it used to
    report the missing states as a failed run)."""

    class CutAtTheThirdChunk(_staging.DeferredStaging):
        def start_copy(self, slot):
            if slot.start == 10:
                raise KeyboardInterrupt
            super().start_copy(slot)

    process = writer_process.WriterProcess.start() if process else None
    _assert_interrupted_over(*_cut_short(tmp_path, process, CutAtTheThirdChunk()), kept=10)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_ctrl_c_while_a_full_chunk_goes_to_the_writer_process_cuts_there(tmp_path, when):
    """A Ctrl-C lands while the loop hands the full chunk at 10 to the writer process (buffers in shared memory,
    the CPU), ``before`` or ``after`` the message reaches it. The chunk had stopped being the one filled, so
    ``close`` no longer hands it over: the recorder refuses to record on, and closing it ends the run over what
    the process committed, 10 or 15 states, as an interrupted run. (The CI's Ctrl-C to a trainer's process group
    once landed there: the run ended failed, "the writer process committed 1206 of the 1224 states recorded".)"""
    process = writer_process.WriterProcess.start()
    submit = process.submit

    def submit_cut_at_10(slot, start, count):
        if start == 10 and when == "after":
            submit(slot, start, count)
        if start == 10:
            raise KeyboardInterrupt
        submit(slot, start, count)

    process.submit = submit_cut_at_10
    _assert_interrupted_over(*_cut_short(tmp_path, process), kept=10 if when == "before" else 15)


def _open_descriptors() -> set[str]:
    import os

    return set(os.listdir("/proc/self/fd"))


def test_a_recorder_that_cannot_be_built_leaves_no_writer_process_or_descriptor(tmp_path, monkeypatch):
    """Building the chunk buffers fails (as a device out of memory would) after the shared memory exists:
    the writer process is stopped and no descriptor of it, or of the shared memory, stays open."""
    import torch

    from trajscope.producer.recorder import Recorder
    from trajscope.producer.two_layer import variables as two_layer_variables

    writer = RunWriter.create(
        StoreRoot(tmp_path), "r", variables=two_layer_variables(), sizes={"neuron": 4, "feature": 3, "sample": 5},
        capacity=20, static={"X": np.ones((5, 3)), "y": np.array([1, -1, 1, -1, 1])}, attrs={"config": {}},
        chunk_bytes=4 * 3 * 4 * 5)
    before = _open_descriptors()
    process = writer_process.WriterProcess.start()
    assert _open_descriptors() > before

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("out of memory for the chunk buffers (made up)")

    monkeypatch.setattr(Recorder, "_make_slot", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory") as caught:
        Recorder(writer, {"W": (4, 3), "v": (4,), "loss": (), "output": (5,)},
                 {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32},
                 torch.device("cpu"), buffers=2, process=process)
    assert caught.tb is not None  # (the failed recorder stays alive in its frames, as in a notebook's last traceback)
    assert process.proc.poll() is not None
    assert _open_descriptors() <= before  # the shared memory's descriptor and its mapping's are closed too
    writer.finish("failed", "no buffers")


def test_a_writer_process_that_cannot_start_leaves_no_descriptor(monkeypatch):
    """``Popen`` fails (no memory to fork, say): the error is raised and both ends of the socket are closed."""
    import errno

    def no_fork(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    before = _open_descriptors()
    monkeypatch.setattr(writer_process.subprocess, "Popen", no_fork)
    with pytest.raises(OSError, match="Cannot allocate memory") as caught:
        writer_process.WriterProcess.start()
    assert caught.tb is not None  # (its frames, and their locals, are still alive: nothing is closed by collection)
    assert _open_descriptors() <= before


def test_resuming_inside_a_chunk_through_a_staging_and_a_writer_process(tmp_path):
    """A run cut after 7 states (chunk 5: the second chunk half written) resumes with a writer process
    behind a staging: the committed rows of the cut chunk are preloaded into the device buffer, copied
    to the host with the new ones and written whole; the run equals one recorded without a cut."""
    root, states = StoreRoot(tmp_path), 23
    first, writer, head, _ = _record_staged(root, "cut", 7, process=False, capacity=states)
    assert first.close() == 7
    writer.finish("interrupted")
    writer = RunWriter.reopen(root, "cut")
    recorder, writer, tail, _ = _record_staged(root, "cut", states, process=True, start=7, writer=writer)
    assert recorder.close() == states
    writer.finish("complete")
    whole, whole_writer, expected, _ = _record_staged(root, "whole", states, process=False)
    whole.close()
    whole_writer.finish("complete")
    np.testing.assert_array_equal(np.concatenate([head, tail]), expected)  # the made-up states continue
    cut, reference = open_run("cut", root).load(), open_run("whole", root).load()
    assert cut.attrs["committed_steps"] == states
    for variable in ("W", "v", "loss", "output", "step", "t"):
        np.testing.assert_array_equal(cut[variable].values, reference[variable].values)


def test_a_failed_chunk_write_in_the_writer_process_keeps_the_blocks_written_before_it(tmp_path, small_config,
                                                                                        monkeypatch):
    """The 4th chunk file of ``W`` fails in the writer process, in a run that would commit only at its end: the
    blocks written before the failure are committed all the same (the process drains, then commits them),
    equal to the thread's run; nothing of the failed block is."""
    config = small_config(train={"steps": 200}, record={"writer": "process", "commit_seconds": 60,
                                                        "chunk_mib": 0.002})
    monkeypatch.setenv(faults.ENV, "write.renaming:raise:1:W/c/3/")  # inherited by the writer process
    with pytest.raises(RuntimeError, match="injected fault at write.renaming"):
        produce(config, root=tmp_path, name="broken")
    monkeypatch.delenv(faults.ENV)
    ds = open_run("broken", tmp_path).load()
    committed, chunk = ds.attrs["committed_steps"], ds.attrs["chunk_steps"]
    assert ds.attrs["status"] == "failed" and committed == 3 * chunk
    produce(small_config(train={"steps": 200}, record={"writer": "thread", "chunk_mib": 0.002}), root=tmp_path,
            name="whole")
    whole = open_run("whole", tmp_path).load()
    for name in ("W", "v", "loss", "output", "step", "t"):
        np.testing.assert_array_equal(ds[name].values, whole[name].values[:committed], err_msg=name)


@pytest.mark.parametrize("interrupts", [1, 2])
def test_a_ctrl_c_while_the_writer_process_closes(tmp_path, small_config, monkeypatch, interrupts):
    """Ctrl-C while ``produce`` waits for the writer process's final commit. One: the commit is waited for all
    the same, then the run ends ``interrupted`` over everything the process committed (never over a stale
    count, which would shrink the arrays below the committed states). Two: the second kills the process at
    once, and the run still ends ``interrupted`` (a process killed on purpose is no failure of the writer)
    over what it had committed. Either way what is committed equals an uninterrupted run."""
    config = small_config(train={"steps": 80},
                          record={"writer": "process", "commit_seconds": 60 if interrupts == 1 else 0})
    produce(small_config(train={"steps": 80}, record={"writer": "thread"}), root=tmp_path, name="ref")
    ref = open_run("ref", tmp_path).load()
    close, calls = writer_process.WriterProcess.close, []

    def interrupted_close(self, *args, **kwargs):
        calls.append(self.proc.pid)
        if len(calls) <= interrupts:
            raise KeyboardInterrupt  # as a Ctrl-C while waiting for the process would
        return close(self, *args, **kwargs)

    monkeypatch.setattr(writer_process.WriterProcess, "close", interrupted_close)
    try:
        result = produce(config, root=tmp_path, name="r")
    except KeyboardInterrupt:  # (not left to stop the whole test session)
        pytest.fail("a Ctrl-C while closing escaped produce instead of ending the run interrupted")
    assert len(calls) == 2 and result.status == "interrupted"
    assert result.committed_steps == 81 if interrupts == 1 else result.committed_steps <= 81
    ds = open_run("r", tmp_path).load()
    assert ds.attrs["status"] == "interrupted" and ds.attrs["committed_steps"] == result.committed_steps
    for name in ("W", "v", "loss", "output", "step", "t"):
        np.testing.assert_array_equal(ds[name].values, ref[name].values[: result.committed_steps], err_msg=name)


def test_a_ctrl_c_while_the_staging_thread_ends_still_closes_the_writer_process(tmp_path, interrupt_writer_join):
    """GPU-like staging with a writer process: a Ctrl-C while waiting for the writer thread is raised only
    after the thread has handed every chunk over and the process has committed them and exited."""
    root, states = StoreRoot(tmp_path), 23
    recorder, writer, expected, _ = _record_staged(root, "cut", states, process=True)
    log = interrupt_writer_join()
    with pytest.raises(KeyboardInterrupt):
        recorder.close()
    assert log[0] == "interrupted" and recorder.stopped and recorder.committed == states
    writer.finish("interrupted")
    ds = open_run("cut", root)
    assert ds.attrs["committed_steps"] == states
    np.testing.assert_array_equal(ds.W.values, expected)
