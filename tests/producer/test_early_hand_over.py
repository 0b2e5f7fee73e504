"""A slow loop's chunk goes to the store before it is full (``Recorder.flush_seconds``, ``Recorder.flush``): a
live reader sees its states without waiting for the chunk to fill, on every path a chunk takes to the store, and
the run ends with every state as recorded (the chunk written again as it grows)."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trajscope.producer import recorder as recorder_module
from trajscope.producer.recorder import Recorder
from trajscope.producer.two_layer import variables as two_layer_variables
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.store import writer_process

_spec = importlib.util.spec_from_file_location("_recorder_tests", Path(__file__).with_name("test_recorder.py"))
_recorder_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_recorder_tests)

H, DIM, N, CHUNK, STATES = 4, 3, 5, 5, 13
MODES = ["by_reference", "copying", "staged", "staged_loop_submits", "process", "staged_process"]


def _loop_clock(monkeypatch, clock) -> None:
    """The recorder's clock, moved by hand, for a test of the loop's own hand-overs (its record() and flush()): the
    writer thread's hand-over of a paused loop's chunk is left out, or it could take a chunk the test moved the clock
    past before the loop's next call does (``test_a_paused_loops_chunk_is_handed_over_by_the_writer_thread``)."""
    monkeypatch.setattr(recorder_module, "_monotonic", clock)
    monkeypatch.setattr(Recorder, "_hand_over_if_due", lambda self: None)


def _committed(root: StoreRoot, run_id: str, at_least: int) -> int:
    """The run's ``committed_steps`` once it reaches ``at_least`` (what a live reader sees; 10 s at most)."""
    deadline = time.monotonic() + 10
    while (committed := root.read_attrs(run_id)["committed_steps"]) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    return committed


@pytest.mark.parametrize("mode", MODES)
def test_a_chunk_not_yet_full_reaches_a_live_reader_after_flush_seconds(tmp_path, monkeypatch, mode):
    clock = [0.0]
    _loop_clock(monkeypatch, lambda: clock[0])  # the recorder's clock, moved by hand
    root = StoreRoot(tmp_path)
    writer = RunWriter.create(
        root, mode, variables=two_layer_variables(), sizes={"neuron": H, "feature": DIM, "sample": N},
        capacity=STATES, static={"X": np.ones((N, DIM)), "y": np.array([1, -1, 1, -1, 1])}, attrs={"config": {}},
        chunk_bytes=H * DIM * 4 * CHUNK,
    )
    assert writer.chunk_steps == CHUNK
    writer.set_write_options(commit_seconds=0.0)  # (commit what is written at once: the test waits on the reader)
    staged = mode.startswith("staged")
    steps = np.arange(STATES)
    recorder = Recorder(writer, {"W": (H, DIM), "v": (H,), "loss": (), "output": (N,)},
                        {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32},
                        torch.device("cpu"), buffers=2, columns={"step": steps * 2, "t": steps * 0.5},
                        staging=_recorder_tests.DeferredStaging() if staged else None,
                        by_reference=mode == "by_reference", loop_submits=mode == "staged_loop_submits",
                        process=writer_process.WriterProcess.start() if mode.endswith("process") else None,
                        flush_seconds=1.0)
    W, expected = torch.zeros(H, DIM), []

    def record(k: int) -> None:
        nonlocal W
        if mode == "by_reference":
            W = W + (k + 1)  # a new tensor each step, never changed afterwards
        else:
            W.add_(k + 1)  # changed in place after it is recorded, as an optimizer does: the recorder copies
        recorder.record(W=W, v=torch.full((H,), float(k)), loss=k / 10, output=torch.full((N,), float(-k)))
        expected.append(W.numpy().copy())

    try:
        for k in range(3):  # a fast start: nothing is handed over before the chunk is full
            record(k)
        assert recorder.early_hand_overs == 0 and root.read_attrs(mode)["committed_steps"] == 0
        clock[0] = 1.5  # the chunk's oldest state is older than flush_seconds: the next record() hands it over
        record(3)
        assert recorder.early_hand_overs == 1
        assert _committed(root, mode, 4) == 4
        live = open_run(mode, root)
        np.testing.assert_array_equal(live.W.values, np.stack(expected))
        np.testing.assert_array_equal(live.step.values, steps[:4] * 2)
        record(4)  # the chunk is full: handed over whole (its file written again)
        assert _committed(root, mode, 5) == 5  # (written: its buffer is free for the next early hand-over)
        for k in range(5, 8):
            record(k)
        assert recorder.early_hand_overs == 1  # the clock starts again with each chunk
        clock[0] = 2.6
        record(8)
        assert recorder.early_hand_overs == 2 and _committed(root, mode, 9) == 9
        for k in range(9, 12):
            record(k)
        assert recorder.flush() and recorder.early_hand_overs == 3  # a pause ahead: hand the states over now
        assert not recorder.flush()  # nothing new since
        assert _committed(root, mode, 12) == 12
        np.testing.assert_array_equal(open_run(mode, root).W.values, np.stack(expected))
        record(12)
        assert recorder.close() == STATES
    finally:
        if recorder.committed < STATES:
            recorder.close()
    writer.finish("complete")
    ds = open_run(mode, root)
    assert ds.attrs["status"] == "complete"
    np.testing.assert_array_equal(ds.W.values, np.stack(expected))
    np.testing.assert_array_equal(ds.v.values[:, 0], steps.astype(np.float32))
    np.testing.assert_allclose(ds.loss.values, steps / 10)
    np.testing.assert_array_equal(ds.output.values[:, 0], -steps.astype(np.float32))
    np.testing.assert_array_equal(ds.step.values, steps * 2)


def _recorder(tmp_path, mode, *, buffers=3, flush_seconds=1000.0):
    writer = RunWriter.create(
        StoreRoot(tmp_path), "r", variables=two_layer_variables(), sizes={"neuron": H, "feature": DIM, "sample": N},
        capacity=STATES, static={"X": np.ones((N, DIM)), "y": np.array([1, -1, 1, -1, 1])}, attrs={"config": {}},
        chunk_bytes=H * DIM * 4 * CHUNK,
    )
    recorder = Recorder(writer, {"W": (H, DIM), "v": (H,), "loss": (), "output": (N,)},
                        {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32},
                        torch.device("cpu"), buffers=buffers, columns={"step": np.arange(STATES), "t": np.zeros(STATES)},
                        by_reference=mode == "by_reference", flush_seconds=flush_seconds,
                        process=writer_process.WriterProcess.start() if mode == "process" else None)
    return writer, recorder


@pytest.mark.parametrize("mode", ["by_reference", "copying", "process"])
def test_a_paused_loops_chunk_is_handed_over_by_the_writer_thread(tmp_path, monkeypatch, mode):
    """A loop that stops recording (an evaluation, a checkpoint) with a chunk not full: on the CPU the writer thread
    hands it over once due, without a record() or flush() from the loop (left open by the thirty-second session: the
    states waited for the loop's next call, and a kill meanwhile lost them). The loop goes on afterwards in the new
    buffer, and the run holds every state as recorded."""
    clock = [0.0]
    monkeypatch.setattr(recorder_module, "_monotonic", lambda: clock[0])
    writer, recorder = _recorder(tmp_path, mode, flush_seconds=1.0)
    writer.set_write_options(commit_seconds=0.0)
    expected = []

    def record(k: int) -> None:
        W = torch.full((H, DIM), float(k + 1))  # (a new tensor each state: by reference keeps it)
        recorder.record(W=W, v=torch.full((H,), float(k)), loss=k / 10, output=torch.full((N,), float(-k)))
        expected.append(W.numpy().copy())

    try:
        for k in range(3):
            record(k)
        time.sleep(0.3)
        assert recorder.early_hand_overs == 0 and writer.root.read_attrs("r")["committed_steps"] == 0
        clock[0] = 1.5  # due, and the loop is paused: the writer thread's wait ends, and it hands the chunk over
        assert _committed(writer.root, "r", 3) == 3 and recorder.early_hand_overs == 1
        np.testing.assert_array_equal(open_run("r", writer.root).W.values, np.stack(expected))
        time.sleep(0.3)
        assert recorder.early_hand_overs == 1  # (once: nothing new since)
        for k in range(3, STATES):  # the loop goes on where it was, in the buffer that took the chunk's rows
            record(k)
        assert recorder.close() == STATES
    finally:
        if recorder.committed < STATES:
            recorder.close()
    writer.finish("complete")
    ds = open_run("r", writer.root)
    np.testing.assert_array_equal(ds.W.values, np.stack(expected))
    np.testing.assert_array_equal(ds.v.values[:, 0], np.arange(STATES, dtype=np.float32))


@pytest.mark.parametrize("mode", ["by_reference", "copying", "process"])
def test_a_paused_loops_chunk_is_handed_over_on_time_and_once(tmp_path, mode):
    """Found by a review, on the real clock: a chunk that fell due while the writer thread was busy (a slow commit,
    as on an object store) was missed until its next wake, 5 s later; and the loop's first record() after a pause
    handed the chunk over again at once (its due time had passed during the pause), for one new state."""
    writer, recorder = _recorder(tmp_path, mode, buffers=3, flush_seconds=0.1)
    writer.set_write_options(commit_seconds=0.0)
    commit = writer.commit

    def slow_commit(*args, **kwargs):
        time.sleep(0.3)
        return commit(*args, **kwargs)

    writer.commit = slow_commit

    def record(k: int) -> None:
        recorder.record(W=torch.full((H, DIM), float(k)), v=torch.zeros(H), loss=0.0, output=torch.zeros(N))

    try:
        for k in range(CHUNK):  # a full chunk: written and committed (slowly) while the next one begins
            record(k)
        time.sleep(0.05)
        record(CHUNK)
        started = time.monotonic()  # the loop pauses: the state is due 0.1 s on, while a commit keeps the thread
        assert _committed(writer.root, "r", CHUNK + 1) == CHUNK + 1
        assert time.monotonic() - started < 2.5 and recorder.early_hand_overs == 1
        time.sleep(0.5)  # (a pause past another flush_seconds: nothing new, nothing handed over)
        record(CHUNK + 1)  # the first state after it is due 0.1 s from now, not at once
        assert recorder.early_hand_overs == 1
        assert _committed(writer.root, "r", CHUNK + 2) == CHUNK + 2 and recorder.early_hand_overs == 2
        assert recorder.close() == CHUNK + 2
    finally:
        if recorder.committed < CHUNK + 2:
            recorder.close()


def test_flush_seconds_zero_hands_over_full_chunks_only(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(recorder_module, "_monotonic", lambda: clock[0])
    writer, recorder = _recorder(tmp_path, "copying", buffers=2, flush_seconds=0)
    for k in range(7):
        clock[0] += 100
        recorder.record(W=torch.full((H, DIM), float(k)), v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    assert recorder.early_hand_overs == 0
    assert recorder.close() == 7 and recorder.early_hand_overs == 0
    with pytest.raises(ValueError, match="flush_seconds"):
        Recorder(writer, {"W": (H, DIM)}, {"W": torch.float32}, torch.device("cpu"), flush_seconds=-1)


@pytest.mark.parametrize("mode", ["by_reference", "copying"])
def test_a_ctrl_c_handing_a_chunk_over_keeps_what_its_early_hand_over_gave_the_store(tmp_path, monkeypatch, mode):
    """A Ctrl-C while the rest of a chunk goes to the store cuts there, not at the chunk's start: the rows an early
    hand-over of the chunk gave the store before are in every file of it, and ``close`` commits them (found by a
    review: they were lost). Nothing is committed before ``close`` here (``commit_seconds`` 60)."""
    clock = [0.0]
    _loop_clock(monkeypatch, lambda: clock[0])
    root = StoreRoot(tmp_path)
    writer, recorder = _recorder(tmp_path, mode, buffers=2, flush_seconds=1.0)
    writer.set_write_options(commit_seconds=60.0)
    original, calls = writer.write_block, []

    def interrupted_second_time(start, values):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(start, values)

    writer.write_block = interrupted_second_time
    Ws = [torch.full((H, DIM), float(k)) for k in range(CHUNK)]
    for k in range(3):
        recorder.record(W=Ws[k], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    clock[0] = 5.0
    recorder.record(W=Ws[3], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))  # handed over early: 4 rows
    assert recorder.early_hand_overs == 1 and calls == [0]
    with pytest.raises(KeyboardInterrupt):
        recorder.record(W=Ws[4], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))  # the full chunk: interrupted
    assert recorder.cut == 4
    with pytest.raises(RuntimeError, match="Ctrl-C"):
        recorder.record(W=Ws[0], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    assert recorder.close() == 4
    writer.finish("interrupted")
    ds = open_run("r", root)
    assert ds.attrs["committed_steps"] == 4
    np.testing.assert_array_equal(ds.W.values, torch.stack(Ws[:4]).numpy())


@pytest.mark.parametrize("mode", ["by_reference", "copying"])
def test_a_ctrl_c_inside_an_early_hand_over_leaves_the_rows_to_close(tmp_path, monkeypatch, mode):
    """A Ctrl-C that lands in an early hand-over after recording moved to the new buffer, before the old one
    reached the store, is caught by the loop: ``close`` hands the new buffer's rows over. That buffer's count
    was its last chunk's (3 here, as many rows as now), so ``close`` took the rows for handed over already and
    lost them (a review)."""
    raise_next = [False]
    hand_off = Recorder._hand_off

    def interrupted_hand_off(self, *args):  # (the Ctrl-C lands as the hand-over of the old buffer begins)
        if raise_next[0]:
            raise_next[0] = False
            raise KeyboardInterrupt
        return hand_off(self, *args)

    _loop_clock(monkeypatch, lambda: 0.0)
    monkeypatch.setattr(Recorder, "_hand_off", interrupted_hand_off)
    writer, recorder = _recorder(tmp_path, mode)
    Ws = [torch.full((H, DIM), float(k)) for k in range(8)]

    def record(k):
        recorder.record(W=Ws[k], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))

    for k in range(3):
        record(k)
    assert recorder.flush()  # chunk 0's 3 rows go from buffer 0 (its count now 3); recording goes on in buffer 1
    for k in range(3, 8):  # chunk 0 full (buffer 1); chunk 1 begins in buffer 2
        record(k)
    deadline = time.monotonic() + 10
    while recorder._free.qsize() < 1 and time.monotonic() < deadline:  # buffer 0 written, free again
        time.sleep(0.01)
    raise_next[0] = True
    with pytest.raises(KeyboardInterrupt):
        recorder.flush()  # moves to buffer 0, then the Ctrl-C: chunk 1's 3 rows never reach the store from buffer 2
    assert recorder.cut is None
    assert recorder.close() == 8
    writer.finish("complete")
    np.testing.assert_array_equal(open_run("r", StoreRoot(tmp_path)).W.values, torch.stack(Ws).numpy())


@pytest.mark.parametrize("mode", ["by_reference", "copying"])
def test_a_ctrl_c_before_a_full_chunk_reaches_the_store_cuts_there_and_close_returns(tmp_path, mode):
    """A Ctrl-C after the full chunk stopped being the one filled and before its submit is under way set no cut:
    a loop that caught it recorded on, and the commit at ``close`` waited for ever for the chunk never written
    (a review). It cuts at the chunk now: recording on is refused, and ``close`` commits what came before."""
    writer, recorder = _recorder(tmp_path, mode)
    original = recorder._submit_on_loop
    calls = []

    def interrupted_before_the_submit(index):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(index)

    recorder._submit_on_loop = interrupted_before_the_submit
    Ws = [torch.full((H, DIM), float(k)) for k in range(CHUNK * 2)]
    for k in range(CHUNK):
        recorder.record(W=Ws[k], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    for k in range(CHUNK, 2 * CHUNK - 1):
        recorder.record(W=Ws[k], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    with pytest.raises(KeyboardInterrupt):
        recorder.record(W=Ws[-1], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    assert recorder.cut == CHUNK
    with pytest.raises(RuntimeError, match="Ctrl-C"):
        recorder.record(W=Ws[0], v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    closed = []
    closer = threading.Thread(target=lambda: closed.append(recorder.close()), daemon=True)
    closer.start()
    closer.join(20)
    assert closed == [CHUNK]
    writer.finish("interrupted")
    np.testing.assert_array_equal(open_run("r", StoreRoot(tmp_path)).W.values, torch.stack(Ws[:CHUNK]).numpy())


def test_a_ctrl_c_while_close_waits_for_the_writer_thread_returns_only_once_it_has_stopped(tmp_path):
    """Found by a review: a ``Thread.join()`` cut by a Ctrl-C marks the thread stopped in CPython 3.11 while it runs
    on, so ``close()`` raised at once with ``stopped`` True and ``committed`` stale: the run was ended over 0 states
    while the thread still committed (``last_step 0`` beside ``committed_steps 86``). The Ctrl-C is raised once the
    thread has committed everything and ended."""
    import signal

    writer, recorder = _recorder(tmp_path, "copying")
    commit = writer.commit

    def slow_commit(*args, **kwargs):
        time.sleep(1.0)
        return commit(*args, **kwargs)

    writer.commit = slow_commit
    for k in range(7):
        recorder.record(W=torch.full((H, DIM), float(k)), v=torch.zeros(H), loss=0.0, output=torch.zeros(N))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            recorder.close()  # (its final commit takes a second: the Ctrl-C lands in the wait for the thread)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert recorder.stopped and recorder.committed == 7 == writer.root.read_attrs("r")["committed_steps"]
    recorder._thread.join(5)  # (its last lines after it said so)
    assert not recorder._thread.is_alive()
