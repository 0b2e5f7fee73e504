"""The recorder pipeline with an asynchronous staging step (the GPU path's logic, emulated on the CPU)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from trajscope.producer.recorder import STACK_BELOW_VALUES, Recorder
from trajscope.producer.staging import HostStaging
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.producer.two_layer import variables as two_layer_variables
from trajscope.store.chunkio import StateRows
from tests.torch_calls import TorchCalls


class DeferredStaging(HostStaging):
    """Like CudaStaging: separate host buffers, filled later by another thread; ``wait`` blocks on it."""

    def __init__(self, delay: float = 0.01):
        self.copies, self.delay = 0, delay

    def host_buffers(self, device):
        return {n: torch.full_like(t, -7) for n, t in device.items()}, None

    def start_copy(self, slot):
        slot.event = threading.Event()
        threading.Thread(target=lambda: (self.before_copy(), self.copy(slot)), daemon=True).start()

    def before_copy(self):
        """What the copying thread waits for before it copies (here: the delay)."""
        time.sleep(self.delay)

    def copy(self, slot):
        for name, tensor in slot.device.items():
            slot.host[name].copy_(tensor)
        self.copies += 1
        slot.event.set()

    def wait(self, slot):
        assert slot.event.wait(10)

    def ready(self, slot):
        return slot.event.is_set()


class GatedStaging(DeferredStaging):
    """Like :class:`DeferredStaging`, but no copy finishes before someone waits for one (``wait``): a recorder
    with ``loop_submits`` never finds a copy done in ``record()``, only when it runs out of buffers."""

    def __init__(self):
        super().__init__(0.0)
        self.gate = threading.Event()

    def before_copy(self):
        assert self.gate.wait(20)

    def wait(self, slot):
        self.gate.set()
        super().wait(slot)


class CopiedStaging(DeferredStaging):
    """Like :class:`DeferredStaging`, but each copy is done by the time ``start_copy`` returns (a GPU whose copies
    finish at once): a recorder with ``loop_submits`` hands a chunk over in the hand-off that stages it."""

    def start_copy(self, slot):
        slot.event = threading.Event()
        self.copy(slot)


@pytest.mark.parametrize("loop_submits", [False, True])
def test_async_staging_keeps_every_state_intact(tmp_path, loop_submits):
    h, dim, n, states = 4, 3, 5, 53
    root = StoreRoot(tmp_path)
    writer = RunWriter.create(
        root, "async", variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=states, static={"X": np.ones((n, dim)), "y": np.array([1, -1, 1, -1, 1])}, attrs={},
        chunk_bytes=h * dim * 4 * 5,
    )
    assert writer.chunk_steps == 5
    staging = DeferredStaging()
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,), "step": (), "t": ()}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32,
              "step": torch.int64, "t": torch.float64}
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2, staging=staging,
                        loop_submits=loop_submits)
    expected = []
    W = torch.zeros(h, dim)
    for k in range(states):
        W = W + k  # a new tensor each step, as in training
        v = torch.arange(h, dtype=torch.float32) * k
        out = torch.full((n,), float(-k))
        recorder.record(W=W, v=v, loss=torch.tensor(k / 10, dtype=torch.float64), output=out, step=k, t=k * 0.5)
        expected.append(W.clone())
    assert recorder.close() == states
    writer.finish("complete")
    assert staging.copies == 11  # ten whole chunks and the final partial one
    ds = open_run("async", root)
    np.testing.assert_array_equal(ds.W.values, torch.stack(expected).numpy())
    np.testing.assert_array_equal(ds.step.values, np.arange(states))
    np.testing.assert_allclose(ds.loss.values, np.arange(states) / 10)
    np.testing.assert_array_equal(ds.output.values[:, 0], -np.arange(states))


def _count_commits(monkeypatch):
    commits = []
    original = RunWriter.commit

    def counting(self, committed_steps=None, **extra):
        original(self, committed_steps, **extra)
        commits.append(self.committed_steps)

    monkeypatch.setattr(RunWriter, "commit", counting)
    return commits


def test_commits_are_batched_by_time(tmp_path, small_config, monkeypatch):
    from trajscope.producer import produce

    commits = _count_commits(monkeypatch)
    config = small_config(train={"steps": 120}, record={"chunk_mib": 0.0005, "commit_seconds": 60})
    produce(config, root=tmp_path, name="batched")
    ds = open_run("batched", tmp_path)
    chunks = -(-121 // ds.attrs["chunk_steps"])
    assert chunks > 20 and commits == [121]  # one commit at the end instead of one per chunk
    np.testing.assert_array_equal(ds.step.values, np.arange(121))
    commits.clear()
    produce({**config, "record": {"chunk_mib": 0.0005, "commit_seconds": 0}}, root=tmp_path, name="eager")
    assert len(commits) > 3 and commits == sorted(commits) and commits[-1] == 121
    eager = open_run("eager", tmp_path)
    for name in ("W", "v", "loss", "output"):
        np.testing.assert_array_equal(eager[name].values, ds[name].values)


def test_durability_level_reaches_the_store(tmp_path, small_config, monkeypatch):
    import os

    from trajscope.producer import produce

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    produce(small_config(), root=tmp_path, name="fast")
    assert calls == []
    produce(small_config(record={"chunk_mib": 0.001, "durability": "fsync"}), root=tmp_path, name="safe")
    assert len(calls) > 10
    assert open_run("safe", tmp_path).traj.config["record"]["durability"] == "fsync"
    np.testing.assert_array_equal(open_run("safe", tmp_path).W.values, open_run("fast", tmp_path).W.values)


class CollectingWriter:
    """Keeps a copy of every block (a writer that writes synchronously, as a stand-in for the store)."""

    def __init__(self, chunk_steps):
        self.chunk_steps, self.blocks, self.committed_steps = chunk_steps, {}, 0

    def write_block(self, start, values):
        self.blocks[start] = {n: np.array(v) for n, v in values.items()}

    def commit(self, committed_steps=None):
        self.committed_steps = committed_steps

    def heartbeat_due(self):
        return False


@pytest.mark.parametrize("path", ["numpy", "foreach"])
def test_one_call_copies_keep_every_value(monkeypatch, path):
    from trajscope.producer import recorder as recorder_module

    if path == "foreach":  # the GPU's multi-tensor copy, exercised on the CPU
        monkeypatch.setattr(recorder_module, "_NUMPY_DTYPES", set())
    writer = CollectingWriter(4)
    shapes = {"W": (3, 2), "v": (3,), "loss": ()}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64}
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2)
    assert recorder._numpy_rows == (path == "numpy")
    expected = []
    for k in range(10):
        W = torch.arange(6, dtype=torch.float32).reshape(3, 2) * k
        v = torch.full((3,), -float(k), requires_grad=True)  # a parameter: copied without its graph
        loss = torch.tensor([k / 3], dtype=torch.float64) if k % 2 else k / 3  # shape (1,) or a number
        recorder.record(W=W, v=v, loss=loss)
        expected.append((W.numpy().copy(), np.full(3, -float(k)), k / 3))
    assert recorder.close() == 10 and writer.committed_steps == 10
    got = {n: np.concatenate([writer.blocks[s][n] for s in sorted(writer.blocks)]) for n in shapes}
    np.testing.assert_array_equal(got["W"], np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(got["v"], np.stack([e[1] for e in expected]))
    np.testing.assert_allclose(got["loss"], [e[2] for e in expected])


def _float64_bits(bits: int) -> torch.Tensor:
    return torch.tensor(np.array([bits], dtype=np.uint64).view(np.float64)[0], dtype=torch.float64)


def test_the_gpus_copy_carries_a_whole_state_in_one_launch_bit_for_bit(monkeypatch):
    """The GPU's rows (torch views; here on the CPU, as in ``test_one_call_copies_keep_every_value``): a state of
    float32 weights, a float64 loss and an int64 counter goes into its rows in one ``torch._foreach_copy_``
    (one kernel launch on a GPU instead of one per dtype): the 8-byte values are viewed as two float32 on both
    sides. Every bit arrives, a NaN's payload, -0.0 and the smallest subnormal too (a detour through a float32
    value would change them). A tensor that does not fit the one copy (not contiguous, another dtype, a
    number) still arrives exactly, in a launch of its own."""
    from trajscope.producer import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "_NUMPY_DTYPES", set())
    writer = CollectingWriter(4)
    shapes = {"W": (3, 2), "v": (3,), "loss": (), "count": ()}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "count": torch.int64}
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2)
    assert not recorder._numpy_rows
    losses = [_float64_bits(0x7FF0_0000_DEAD_BEEF), torch.tensor(-0.0, dtype=torch.float64), _float64_bits(1),
              torch.tensor(1 / 3, dtype=torch.float64), torch.tensor(float("inf"), dtype=torch.float64),
              torch.tensor(1 / 7, dtype=torch.float32), 0.1]
    launches = []
    for k, loss in enumerate(losses):
        W = torch.arange(6, dtype=torch.float32).reshape(3, 2) * (k + 1)
        if k == 3:
            W = W.t().contiguous().t()  # the same values, not contiguous: its own copy
        count = torch.tensor(2**62 + 2 * k + 1, dtype=torch.int64)
        with TorchCalls() as calls:
            recorder.record(W=W, v=torch.full((3,), float(k)), loss=loss, count=count)
        launches.append(calls.names.count("_foreach_copy_") + calls.names.count("fill_"))
        assert "__setitem__" not in calls.names and "copy_" not in calls.names, (k, calls.names)
    assert launches == [1, 1, 1, 2, 1, 2, 2]  # the non-contiguous W, the float32 loss (a cast), the number
    assert recorder.close() == len(losses)
    got = {n: np.concatenate([writer.blocks[s][n] for s in sorted(writer.blocks)]) for n in shapes}
    expected_loss = np.array([np.float64(x.item() if isinstance(x, torch.Tensor) else x) for x in losses])
    expected_loss[0] = np.array([0x7FF0_0000_DEAD_BEEF], dtype=np.uint64).view(np.float64)[0]
    np.testing.assert_array_equal(got["loss"].view(np.uint64), expected_loss.view(np.uint64))
    np.testing.assert_array_equal(got["count"], [2**62 + 2 * k + 1 for k in range(len(losses))])
    np.testing.assert_array_equal(got["W"], [np.arange(6, dtype=np.float32).reshape(3, 2) * (k + 1)
                                             for k in range(len(losses))])
    np.testing.assert_array_equal(got["v"], [np.full(3, float(k), np.float32) for k in range(len(losses))])


def test_lazy_conjugate_and_negative_views_go_in_a_copy_of_their_own_and_grad_mode_survives_an_error(monkeypatch):
    """A conjugate or negative view (torch's lazy ``conj()``, ``.imag`` of one) has no ``.view(dtype)``: such a
    value of a carried variable takes its dtype's own copy and is stored resolved. A ``record()`` that raises
    leaves gradient recording as it found it."""
    from trajscope.producer import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "_NUMPY_DTYPES", set())
    writer = CollectingWriter(2)
    shapes = {"W": (8,), "z": (1,), "loss": ()}
    dtypes = {"W": torch.float32, "z": torch.complex64, "loss": torch.float64}
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2)
    assert recorder._carried == {"W": "as is", "z": "viewed", "loss": "viewed"}
    base = torch.tensor([1 - 2j], dtype=torch.complex128)
    conj, neg = base.to(torch.complex64).conj(), base.conj().imag.reshape(())  # conj bit, neg bit
    assert conj.is_conj() and neg.is_neg()
    recorder.record(W=torch.arange(8.0), z=conj, loss=neg)
    recorder.record(W=torch.arange(8.0) + 1, z=conj.resolve_conj(), loss=neg.resolve_neg())
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            with pytest.raises(ValueError, match=r"W: a state of shape \(3,\)"):
                recorder.record(W=torch.zeros(3), z=conj, loss=neg)  # W's shape cannot go into its row
            assert torch.is_grad_enabled() is grad
    assert recorder.close() == 2
    got = {n: np.concatenate([writer.blocks[s][n] for s in sorted(writer.blocks)]) for n in shapes}
    np.testing.assert_array_equal(got["z"][:, 0], [1 + 2j, 1 + 2j])
    np.testing.assert_array_equal(got["loss"], [2.0, 2.0])
    np.testing.assert_array_equal(got["W"], [np.arange(8.0), np.arange(8.0) + 1])


def test_the_copy_carrier_is_the_largest_variables_dtype_when_its_copy_moves_bits_unchanged():
    from trajscope.producer.staging import copy_carrier

    f32, f64, f16 = torch.float32, torch.float64, torch.float16
    carrier, carried = copy_carrier({"W": (100, 784), "loss": (), "half": (3,), "flag": ()},
                                    {"W": f32, "loss": f64, "half": f16, "flag": torch.bool})
    assert carrier is f32 and carried == {"W": "as is", "loss": "viewed"}  # narrower ones: a launch of their own
    assert copy_carrier({"W": (10,), "loss": ()}, {"W": f64, "loss": f64}) == (f64, {"W": "as is", "loss": "as is"})
    # float16's copy computes in float32 (a NaN's payload may change): it carries nothing, every dtype its launch
    assert copy_carrier({"W": (10,), "loss": ()}, {"W": f16, "loss": f64}) == (None, {})
    assert copy_carrier({"W": (10,), "flag": (1,)}, {"W": torch.uint8, "flag": torch.bool})[1] == {
        "W": "as is", "flag": "viewed"}
    assert copy_carrier({}, {}) == (None, {})


def _record_changing_in_place(recorder, states, h, dim, n):
    """Record ``states`` states whose ``W`` (all ``k + 1`` at state ``k``) is changed in place after each
    record, as an optimizer does: a copy must keep each value; ``v`` is all ``k``."""
    W = torch.zeros(h, dim)
    for k in range(states):
        W.add_(1.0)
        recorder.record(W=W, v=torch.full((h,), float(k)), loss=k / 10, output=torch.zeros(n))


def _small_run(tmp_path, run_id, states, h=4, dim=3, n=5, attrs=None):
    writer = RunWriter.create(
        StoreRoot(tmp_path), run_id, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=states, static={"X": np.ones((n, dim)), "y": np.array([1, -1, 1, -1, 1])}, attrs=attrs or {},
        chunk_bytes=h * dim * 4 * 5,
    )
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
    return writer, shapes, dtypes


def test_by_reference_writes_the_recorded_tensors_own_memory_and_then_lets_them_go(tmp_path):
    import gc
    import weakref

    h, dim, n, states = 200, 40, 5, 23  # a chunk of W (5 states) holds more values than STACK_BELOW_VALUES
    assert 5 * h * dim >= STACK_BELOW_VALUES
    writer, shapes, dtypes = _small_run(tmp_path, "ref", states, h, dim, n)
    handed = []
    original = writer.write_block

    def capture(start, values):
        handed.append(values)
        return original(start, values)

    writer.write_block = capture
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2, by_reference=True,
                        columns={"step": steps, "t": steps * 0.5})
    W, kept, alive, first = torch.zeros(h, dim), [], [], []
    rng = torch.Generator().manual_seed(0)
    vs, outputs = [], []
    for k in range(states):
        W = W + k  # a new tensor each step, never changed afterwards
        kept.append(W.numpy().copy())
        if k < 5:
            first.append(W)
        alive.append(weakref.ref(W))
        # the scalar as a shape-(1,) tensor and as a Python number: both fine
        loss = torch.tensor([k / 10], dtype=torch.float64) if k % 2 else k / 10
        v = torch.randn(h, generator=rng)  # distinct values in every element: an order mix-up shows
        if k % 3 == 1:
            v = v.double()  # another dtype: converted in record(), then stacked with the rest
        elif k % 3 == 2:
            v.requires_grad_(True)  # a parameter: stacked without its graph
        output = torch.randn(n, generator=rng)
        vs.append(v.detach().float().numpy().copy())
        outputs.append(output.numpy().copy())
        recorder.record(W=W, v=v, loss=loss, output=output)
    assert recorder.close() == states
    writer.finish("complete")
    ds = open_run("ref", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.W.values, np.stack(kept))
    np.testing.assert_allclose(ds.loss.values, steps / 10)
    np.testing.assert_array_equal(ds.v.values, np.stack(vs))
    np.testing.assert_array_equal(ds.output.values, np.stack(outputs))
    np.testing.assert_array_equal(ds.step.values, steps)
    # nothing was copied for the writer: the rows handed over are the tensors' memory
    assert len(handed) == 5 and all(len(v["W"]) == 5 for v in handed[:4]) and len(handed[4]["W"]) == 3
    assert all(np.shares_memory(row, tensor.numpy()) for row, tensor in zip(handed[0]["W"].rows, first))
    # the small variables arrive stacked, one array per block (a copy of a few values)
    assert all(isinstance(v[name], np.ndarray) and len(v[name]) == len(v["W"])
               for v in handed for name in ("v", "loss", "output"))
    # ... and the recorder keeps no state once its chunk is written (memory stays bounded)
    handed.clear()  # (the closure above keeps the list itself)
    del W, first
    gc.collect()
    assert not [ref for ref in alive if ref() is not None]


def test_by_reference_resumes_inside_a_chunk_whose_rows_are_written_from_memory(tmp_path):
    """Resuming at 7 in chunks of 5: the committed rows 5, 6 come back as ``preload`` and are written again
    with the new states 7.. from their memory (``StateRows``), next to the new states' own tensors."""
    h, dim, n, states = 200, 40, 5, 13
    writer, shapes, dtypes = _small_run(tmp_path, "resume", states, h, dim, n, attrs={"config": {"name": "resume"}})
    rng = torch.Generator().manual_seed(1)
    values = [{"W": torch.randn(h, dim, generator=rng), "v": torch.randn(h, generator=rng), "loss": k / 7,
               "output": torch.randn(n, generator=rng)} for k in range(states)]
    steps = np.arange(states)
    columns = {"step": steps, "t": steps * 0.5}
    first = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=True, columns=columns)
    for k in range(7):
        first.record(**values[k])
    assert first.close() == 7
    writer.finish("interrupted")

    writer = RunWriter.reopen(StoreRoot(tmp_path), "resume")
    assert writer.committed_steps == 7 and writer.chunk_steps == 5
    preload = writer.read_states(5, 7)
    handed = []
    original = writer.write_block
    writer.write_block = lambda start, block: (handed.append((start, block)), original(start, block))[1]
    second = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=True, columns=columns,
                      start_index=7, preload=preload)
    for k in range(7, states):
        second.record(**values[k])
    assert second.close() == states
    writer.finish("complete")
    assert handed[0][0] == 5 and isinstance(handed[0][1]["W"], StateRows) and len(handed[0][1]["W"]) == 5
    ds = open_run("resume", root=StoreRoot(tmp_path))
    for name in ("W", "v", "output"):
        np.testing.assert_array_equal(ds[name].values, np.stack([v[name].numpy() for v in values]), err_msg=name)
    np.testing.assert_allclose(ds.loss.values, steps / 7)
    np.testing.assert_array_equal(ds.step.values, steps)


def test_by_reference_refuses_what_it_cannot_keep(tmp_path):
    writer, shapes, dtypes = _small_run(tmp_path, "bad", 10)
    with pytest.raises(ValueError, match="CPU tensors"):
        Recorder(writer, shapes, dtypes, torch.device("cuda"), by_reference=True)
    steps = np.arange(10)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=True,
                        columns={"step": steps, "t": steps * 0.5})
    with pytest.raises(ValueError, match=r"missing \['output'\]"):
        recorder.record(W=torch.zeros(4, 3), v=torch.zeros(4), loss=0.0)
    good = {"v": torch.zeros(4), "loss": 0.0, "output": torch.zeros(5)}
    # same number of values, other shape: refused at once, never stored reshaped
    with pytest.raises(ValueError, match=r"W: a state of shape \(3, 4\), the variable's is \(4, 3\)"):
        recorder.record(**{**good, "W": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="loss: 'low' is not a number"):
        recorder.record(**{**good, "W": torch.zeros(4, 3), "loss": "low"})
    with pytest.raises(ValueError, match="loss: a state of shape"):
        recorder.record(**{**good, "W": torch.zeros(4, 3), "loss": torch.zeros(2)})
    assert recorder.index == 0  # nothing refused was recorded
    recorder.record(**{**good, "W": torch.ones(4, 3, dtype=torch.float64)})  # another dtype: converted
    assert recorder.close() == 1
    np.testing.assert_array_equal(open_run("bad", root=StoreRoot(tmp_path)).W.values, np.ones((1, 4, 3)))
    writer.finish("complete")


def test_by_reference_takes_a_training_loops_tensors_as_they_are_and_hands_blocks_over_from_its_thread(tmp_path):
    """States of exact tensors (the quick check in ``record``), some ``W`` requiring grad: written from their
    memory, detached, in order; each full block reaches ``write_block`` from the training thread itself."""
    h, dim, n, states = 200, 40, 5, 17
    writer, shapes, dtypes = _small_run(tmp_path, "exact", states, h, dim, n)
    threads, original = [], writer.write_block
    writer.write_block = lambda start, block: (threads.append(threading.current_thread()), original(start, block))[1]
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=True,
                        columns={"step": steps, "t": steps * 0.5})
    full_checks = []
    full_check = recorder._references
    recorder._references = lambda values: (full_checks.append(1), full_check(values))[1]
    rng = torch.Generator().manual_seed(2)
    states_in = [{"W": torch.randn(h, dim, generator=rng).requires_grad_(k % 4 == 1), "v": torch.randn(h, generator=rng),
                  "loss": torch.tensor(k / 9, dtype=torch.float64), "output": torch.randn(n, generator=rng)}
                 for k in range(states)]
    for k, state in enumerate(states_in):
        if k == 12:  # a Python number for once: the full check converts it (the other states: the quick one)
            state = {**state, "loss": float(state["loss"])}
        recorder.record(**state)
        if k == 4:  # the first block (5 states) was handed over by this call, on this thread
            assert threads == [threading.current_thread()]
    assert recorder.close() == states
    assert full_checks == [1]  # only the state with a Python number took the full check
    writer.finish("complete")
    ds = open_run("exact", root=StoreRoot(tmp_path))
    for name in ("W", "v", "loss", "output"):
        np.testing.assert_array_equal(ds[name].values, np.stack([s[name].detach().numpy() for s in states_in]),
                                      err_msg=name)


def test_copying_on_the_cpu_hands_blocks_over_from_the_training_thread_and_the_gpu_path_from_the_writer(
        tmp_path, monkeypatch):
    """A CPU recorder that copies (``ModuleRecorder``'s) hands each full buffer to the store from the ``record()``
    that fills it; with a staging step that finishes later (the GPU's), the writer thread does, after it. Two
    buffers, slow chunk writes, ``W`` changed in place after each record: a buffer reused before its chunk
    file is written would store later values."""
    from trajscope.store.chunkio import LocalSink

    put = LocalSink.put
    monkeypatch.setattr(LocalSink, "put", lambda self, key, parts: (time.sleep(0.005), put(self, key, parts))[1])
    h, dim, n, states = 4, 3, 5, 53
    for staging, expected in ((None, "training"), (DeferredStaging(), "writer")):
        run_id = f"copy-{expected}"
        writer, shapes, dtypes = _small_run(tmp_path, run_id, states, h, dim, n)
        threads, original = [], writer.write_block
        writer.write_block = lambda start, block: (threads.append(threading.current_thread()), original(start, block))[1]
        steps = np.arange(states)
        recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=staging, buffers=2,
                            columns={"step": steps, "t": steps * 0.5})
        _record_changing_in_place(recorder, states, h, dim, n)
        assert recorder.close() == states
        writer.finish("complete")
        main = threading.current_thread()
        assert threads and all((t is main) == (expected == "training") for t in threads), (expected, threads)
        ds = open_run(run_id, root=StoreRoot(tmp_path))
        np.testing.assert_array_equal(ds.W.values, np.arange(1, states + 1, dtype=np.float32)[:, None, None]
                                      * np.ones((states, h, dim), np.float32))
        np.testing.assert_array_equal(ds.v.values[:, 0], np.arange(states, dtype=np.float32))


def test_numbers_go_into_the_gpus_rows_exactly_as_a_fill_never_an_assignment(tmp_path):
    """The GPU's rows (torch views of device buffers; here CPU stand-ins, since a CPU recorder copies into numpy
    views) take a loss handed over as a Python number, as a number in a CPU tensor of shape (1,), or as a 0-d
    tensor of the row's shape and device, or as a numpy scalar or 0-d array, each stored exactly. The numbers
    go in as ``fill_``'s argument, never by an assignment (``row[i] = x``): on a GPU that copies x from
    pageable memory, which waits for the device (an H200 found it: ``tests/gpu`` runs the loop in sync debug
    mode). A 0-d CPU tensor of the row's shape is
    on the GPU a different device from the row's, and takes the CPU-tensor branch there; only ``tests/gpu``
    reaches that."""
    h, dim, n, states = 4, 3, 5, 15
    writer, shapes, dtypes = _small_run(tmp_path, "numbers", states, h, dim, n)
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=DeferredStaging(0.0), buffers=2,
                        columns={"step": steps, "t": steps * 0.5})
    for slot in recorder._slots:  # the GPU's rows: torch views, not numpy
        slot.rows = [recorder._torch_row(slot.device, i) for i in range(recorder.chunk)]
    recorder._numpy_rows = False
    losses = [k / 7 for k in range(states)]  # not exact in float32: a detour through it would show
    for k, loss in enumerate(losses):
        given = [loss, torch.tensor([loss], dtype=torch.float64), torch.tensor(loss, dtype=torch.float64),
                 np.float64(loss), np.array(loss)][k % 5]
        state = {"W": torch.full((h, dim), float(k)), "v": torch.zeros(h), "output": torch.zeros(n)}
        with TorchCalls() as calls:
            recorder.record(**state, loss=given)
        assert "__setitem__" not in calls.names, (k, calls.names)
        assert ("fill_" in calls.names) == (k % 5 != 2), (k, calls.names)
    assert recorder.close() == states
    writer.finish("complete")
    ds = open_run("numbers", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.loss.values, np.array(losses))
    np.testing.assert_array_equal(ds.W.values[:, 0, 0], np.arange(states, dtype=np.float32))


@pytest.mark.parametrize("rows", ["numpy (the CPU's)", "torch (the GPU's)"])
def test_copying_refuses_a_state_that_lacks_a_variable_or_has_another_shape(tmp_path, rows):
    """The copy paths check what by reference checks (found by a review): a variable left out would keep the
    row a reused chunk buffer held from an earlier chunk (state 12 stored with state 2's ``v``), and a value of
    another size was broadcast into its row (``probs=[0.9]`` stored as ``[0.9, 0.9, 0.9]``). Both are refused
    at once; a one-value tensor into a scalar row still goes in."""
    h, dim, n, states = 4, 3, 5, 15
    writer, shapes, dtypes = _small_run(tmp_path, "checked", states, h, dim, n)
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=DeferredStaging(0.0), buffers=2,
                        columns={"step": steps, "t": steps * 0.5})
    if rows.startswith("torch"):
        for slot in recorder._slots:
            slot.rows = [recorder._torch_row(slot.device, i) for i in range(recorder.chunk)]
        recorder._numpy_rows = False

    def state(k, **changes):
        return {"W": torch.full((h, dim), float(k)), "v": torch.full((h,), float(k)),
                "loss": torch.tensor([k / 7], dtype=torch.float64), "output": torch.full((n,), float(k)), **changes}

    for k in range(12):
        recorder.record(**state(k))
    with pytest.raises(ValueError, match=r"missing \['v'\], unknown \[\]"):
        recorder.record(**{name: value for name, value in state(12).items() if name != "v"})
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        recorder.record(**state(12, extra=torch.zeros(1)))
    for wrong, words in ((torch.full((1,), 12.0), r"v: a state of shape \(1,\), the variable's is \(4,\)"),
                         (np.full(2, 12.0), r"v: a state of shape \(2,\)"),
                         (torch.zeros(2, 2), r"v: a state of shape \(2, 2\)")):
        with pytest.raises(ValueError, match=words):
            recorder.record(**state(12, v=wrong))
    assert recorder.index == 12  # nothing refused was recorded
    recorder.record(**state(12, v=12.0))  # a number fills its row (ModuleRecorder's fill of a missing gradient)
    for k in range(13, states):
        recorder.record(**state(k))
    assert recorder.close() == states
    writer.finish("complete")
    ds = open_run("checked", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.v.values, np.repeat(np.arange(states, dtype=np.float32)[:, None], h, 1))
    np.testing.assert_array_equal(ds.loss.values, np.arange(states) / 7)


@pytest.mark.skipif(not hasattr(__import__("os"), "O_DIRECT"), reason="needs O_DIRECT (Linux)")
def test_direct_writes_from_reused_chunk_buffers_store_every_state_as_it_was_recorded(tmp_path, monkeypatch):
    """Direct I/O (the CPU default on a disk) reads each chunk straight from the recorder's buffer while the loop
    goes on: two buffers, slow writes, ``W`` (64 KiB a state, 256 KiB chunks: written directly) changed in
    place after each record. A buffer refilled before the device had read it would store later values."""
    from trajscope.store.chunkio import DIRECT_MIN_BYTES, LocalSink

    put, sinks = LocalSink.put, []

    def slow_put(self, key, parts):
        sinks.append(self)
        time.sleep(0.005)
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", slow_put)
    h, dim, n, states = 64, 256, 5, 41
    writer, shapes, dtypes = _small_run(tmp_path, "direct", states, h, dim, n)
    writer.set_write_options(io="direct")
    assert writer.chunk_steps == 5 and 5 * h * dim * 4 >= DIRECT_MIN_BYTES
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2,
                        columns={"step": steps, "t": steps * 0.5})
    _record_changing_in_place(recorder, states, h, dim, n)
    assert recorder.close() == states
    writer.finish("complete")
    assert sinks and sinks[0].direct_files >= states // 5 - 1  # (the full chunks but the last went direct)
    ds = open_run("direct", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.W.values[:, 0, 0], np.arange(1, states + 1, dtype=np.float32))
    np.testing.assert_array_equal(ds.W.values, ds.W.values[:, :1, :1] * np.ones((states, h, dim), np.float32))
    np.testing.assert_array_equal(ds.v.values[:, 0], np.arange(states, dtype=np.float32))


@pytest.mark.parametrize("by_reference", [True, False])
def test_recording_after_a_ctrl_c_in_a_hand_off_is_refused_and_close_commits_what_came_before(tmp_path, by_reference):
    """A Ctrl-C while the chunk at 5 is handed over (chunks of 5): a caller that goes on recording (a notebook's
    next cell) gets a clear error, and ``close`` commits states 0-4 (it used to wait forever for chunk 5)."""
    writer, recorder, _, _ = _raising_at_the_second_block(tmp_path, f"cut-{by_reference}", KeyboardInterrupt(),
                                                          by_reference=by_reference)
    state = lambda k: {"W": torch.full((4, 3), float(k)), "v": torch.zeros(4), "loss": k / 10, "output": torch.zeros(5)}
    with pytest.raises(KeyboardInterrupt):
        for k in range(10):
            recorder.record(**state(k))
    assert recorder._error is None and recorder.index == 10  # an interrupt, not a failed write
    with pytest.raises(RuntimeError, match="Ctrl-C interrupted handing states 5.. to the store"):
        recorder.record(**state(10))
    closed = []
    closing = threading.Thread(target=lambda: closed.append(recorder.close()), daemon=True)
    closing.start()
    closing.join(20)
    assert closed == [5] and writer.committed_steps == 5  # every chunk handed over before the interrupt
    writer.finish("interrupted")
    ds = open_run(f"cut-{by_reference}", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.W.values[:, 0, 0], np.arange(5, dtype=np.float32))


def _raising_at_the_second_block(tmp_path, run_id, exc, by_reference=True, loop_submits=False):
    """A CPU recorder of 20 states (chunks of 5; by reference unless told; ``loop_submits``: copying, with a
    GPU-like staging) whose ``write_block`` raises ``exc`` for the block at 5; the writer, the recorder, the
    starts ``write_block`` was called with, and a state."""
    writer, shapes, dtypes = _small_run(tmp_path, run_id, 20)
    original, calls = writer.write_block, []

    def raising(start, block):
        calls.append(start)
        if start == 5:
            raise exc
        return original(start, block)

    writer.write_block = raising
    steps = np.arange(20)
    if loop_submits:
        writer.set_write_options(commit_seconds=60)
        recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=CopiedStaging(), buffers=3,
                            columns={"step": steps, "t": steps * 0.5}, loop_submits=True)
    else:
        recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=by_reference,
                            columns={"step": steps, "t": steps * 0.5})
    return writer, recorder, calls, {"W": torch.ones(4, 3), "v": torch.zeros(4), "loss": 0.5, "output": torch.zeros(5)}


def test_by_reference_reports_a_failed_block_to_the_training_loop(tmp_path):
    writer, recorder, calls, state = _raising_at_the_second_block(tmp_path, "fails", OSError("disk full"))
    for _ in range(9):
        recorder.record(**state)
    with pytest.raises(RuntimeError, match="writing the recorded states failed: disk full"):
        recorder.record(**state)  # the 10th state completes the second block, whose write fails
    with pytest.raises(RuntimeError, match="disk full"):
        recorder.record(**state)  # and the recorder stays failed
    with pytest.raises(RuntimeError, match="disk full"):
        recorder.close()
    # the block written before the failure is committed (by a time-based commit, or at close), the failed one
    # never; the writer thread has stopped
    assert calls == [0, 5] and writer.committed_steps == 5 and not recorder._thread.is_alive()
    writer.close_writes()  # the first block's write may still be finishing
    assert all(slot.refs == [None] * 5 for slot in recorder._slots)  # every state let go
    writer.finish("failed", "disk full")


def test_by_reference_reports_a_chunk_write_that_fails_on_a_write_thread_and_close_stops_the_writer(tmp_path):
    """A chunk file whose write fails on the store's write pool (after ``write_block`` returned): raised at
    the next hand-off or at close, and close stops the writer thread even with a partial chunk left."""
    writer, shapes, dtypes = _small_run(tmp_path, "pool", 20)
    hot = writer._hot()
    put, gate = hot.sink.put, threading.Event()

    def failing_put(key, parts):
        if key.startswith("W/c/1/"):  # the second chunk of W: fails once the test opens the gate
            assert gate.wait(20)
            raise OSError("no space left")
        put(key, parts)

    hot.sink.put = failing_put
    steps = np.arange(20)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=True,
                        columns={"step": steps, "t": steps * 0.5})
    state = {"W": torch.ones(4, 3), "v": torch.zeros(4), "loss": 0.5, "output": torch.zeros(5)}
    for _ in range(12):  # the second chunk (states 5..9) is handed over; 10, 11 start the third
        recorder.record(**state)
    gate.set()  # now its write fails, on a write thread
    deadline = time.monotonic() + 20
    while recorder._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder._error is not None and recorder._current is not None  # a partial chunk is open
    with pytest.raises(RuntimeError, match="no space left"):
        recorder.close()  # handing over the partial chunk raises; the writer thread is stopped all the same
    # the first chunk, written before the failure, is committed; nothing of the failed one
    assert not recorder._thread.is_alive() and writer.committed_steps == 5
    writer.finish("failed", "no space left")
    assert open_run("pool", root=StoreRoot(tmp_path)).sizes["step"] == 5


@pytest.mark.parametrize("mode", ["by reference", "copying", "gpu-like staging"])
def test_by_default_every_write_thread_can_have_a_chunk(tmp_path, monkeypatch, mode):
    """With 4 write threads the default buffers let 4 chunks be written at once (one more buffer is filled
    meanwhile). ``W``'s chunk files are written only when 4 of them are being written together: with the old
    default of 3 buffers at most 2 were, and the run failed here (the barrier broke)."""
    from trajscope.store.chunkio import LocalSink

    put, together = LocalSink.put, threading.Barrier(4, timeout=30)

    def put_four_at_a_time(self, key, parts):
        if key.startswith("W/"):
            together.wait()
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", put_four_at_a_time)
    states = 40  # 8 chunks of 5: twice four at a time
    writer, shapes, dtypes = _small_run(tmp_path, "four", states)
    writer.set_write_options(threads=4)
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), by_reference=mode == "by reference",
                        staging=DeferredStaging() if mode == "gpu-like staging" else None,
                        columns={"step": steps, "t": steps * 0.5})
    assert recorder.buffers == 5
    for k in range(states):
        recorder.record(W=torch.full((4, 3), float(k)), v=torch.zeros(4), loss=k / 10, output=torch.zeros(5))
    assert recorder.close() == states
    writer.finish("complete")
    ds = open_run("four", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.W.values[:, 0, 0], np.arange(states, dtype=np.float32))


def test_default_buffers_follow_the_threads_a_block_keeps_busy(tmp_path):
    """Blocks in flight times the write threads each keeps busy cover the write threads: a state split into
    several chunk files of one size keeps the fewest buffers; a block of one large file (beside small ones)
    gets one buffer per thread plus the one being filled."""
    import zarr

    from trajscope.producer.staging import MIN_BUFFERS, default_buffers
    from trajscope.store.hotpath import block_threads

    assert [default_buffers(t) for t in (1, 2, 3, 4, 8)] == [3, 3, 4, 5, 9]
    assert default_buffers(4, block_threads=2) == 3 and default_buffers(8, block_threads=2) == 5
    assert default_buffers(4, block_threads=4) == MIN_BUFFERS

    def arrays(**specs):  # name -> (shape, chunks), float32, in memory
        group = zarr.group(store=zarr.storage.MemoryStore())
        return {n: group.create_array(n, shape=shape, chunks=chunks, dtype="float32") for n, (shape, chunks) in specs.items()}

    # the wide config: a 25 MB W file and a 160 kB output file a block; small v buffered over 8 blocks
    wide = arrays(W=((40, 2000, 784), (4, 2000, 784)), output=((40, 10000), (4, 10000)), v=((40, 2000), (32, 2000)))
    assert block_threads(wide, 4) == 1
    # mnist-like: W 8.3 MB and output 2.1 MB a block: the small file is done long before the large one
    assert block_threads(arrays(W=((106, 50, 784), (53, 50, 784)), output=((106, 10000), (53, 10000))), 53) == 1
    # a large state split into 4 files of one size (and a remainder file of the same chunk shape)
    assert block_threads(arrays(W=((2, 4000, 1000), (1, 1000, 1000))), 1) == 4
    assert block_threads(arrays(W=((2, 4500, 1000), (1, 1000, 1000))), 1) == 5
    assert block_threads(arrays(v=((64, 10), (32, 10))), 1) == 1  # no variable chunked by the block: 1
    # bytes, not elements: a float64 file beside a float32 file of the same shape is one thread's work
    group = zarr.group(store=zarr.storage.MemoryStore())
    mixed = {"a": group.create_array("a", shape=(8, 1000), chunks=(4, 1000), dtype="float64"),
             "b": group.create_array("b", shape=(8, 1000), chunks=(4, 1000), dtype="float32")}
    assert block_threads(mixed, 4) == 1
    # an empty variable (a zero-size dim) writes no file and does not count as the largest
    assert block_threads(arrays(W=((8, 50, 784), (4, 50, 784)), W2=((8, 50, 784), (4, 50, 784)),
                                e=((8, 0, 100000), (4, 1, 100000))), 4) == 2

    h, dim, n = 4, 3, 5
    for chunk_bytes in (h * dim * 4 * 5, 16):  # 5 states a chunk, W one file; W (48 B) above the chunk size
        run_id = f"files-{chunk_bytes}"
        writer = RunWriter.create(
            StoreRoot(tmp_path), run_id, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
            capacity=20, static={"X": np.ones((n, dim)), "y": np.array([1, -1, 1, -1, 1])}, attrs={},
            chunk_bytes=chunk_bytes)
        writer.set_write_options(threads=4)
        W = writer.arrays["W"]
        files = int(np.prod([-(-s // c) for s, c in zip(W.shape[1:], W.chunks[1:])]))  # W's files a block
        assert (files == 1) == (chunk_bytes > 16) and (chunk_bytes > 16 or files >= 4)
        assert writer.block_threads == files
        recorder = Recorder(writer, {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)},
                            {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32},
                            torch.device("cpu"), by_reference=True, columns={"step": np.arange(20), "t": np.arange(20.0)})
        assert recorder.buffers == (5 if files == 1 else MIN_BUFFERS)
        recorder.close()
        writer.finish("complete")


def test_training_threads_leave_the_writer_one_of_the_cores_this_process_may_use(monkeypatch):
    """``cpu_threads`` counts the cores of the process's affinity (a container's ``--cpuset-cpus``), as the
    store's write threads do, not the machine's."""
    from trajscope.producer.config import load_config
    from trajscope.producer.train import cpu_threads
    from trajscope.store import hotpath

    for cores in (1, 2, 3, 16):
        monkeypatch.setattr(hotpath.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert cpu_threads(load_config({})) == max(1, cores - 1)
    assert cpu_threads(load_config({"train": {"threads": 5}})) == 5  # an explicit number wins


def _slow_w_writes(monkeypatch, seconds):
    """Every ``W`` chunk file takes at least ``seconds`` to write (a slow store)."""
    from trajscope.store.chunkio import LocalSink

    put = LocalSink.put

    def slow_put(self, key, parts):
        if key.startswith("W/"):
            time.sleep(seconds)
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", slow_put)


@pytest.mark.parametrize("by_reference", [True, False])
def test_the_recorder_counts_the_loops_wait_for_a_slow_store(tmp_path, monkeypatch, by_reference):
    """One write thread, 100 ms a ``W`` chunk, 2 buffers, 6 chunks of 5 states: chunk k (k ≥ 2) needs chunk
    k - 2 written first, so the loop waits 4 times, about 400 ms in all, all of it behind the store (on the CPU
    a chunk is in host memory from its hand-off); the last 2 chunks are written while :meth:`close` waits.
    With more buffers than chunks it never waits, and :meth:`close` waits for all 6 writes."""
    _slow_w_writes(monkeypatch, 0.1)
    counts = {}
    for buffers in (2, 7):
        states = 30
        writer, shapes, dtypes = _small_run(tmp_path, f"slow{buffers}", states)
        writer.set_write_options(threads=1)
        steps = np.arange(states)
        recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=buffers, by_reference=by_reference,
                            columns={"step": steps, "t": steps * 0.5})
        started = time.perf_counter()
        for k in range(states):
            recorder.record(W=torch.full((4, 3), float(k)), v=torch.zeros(4), loss=k / 10, output=torch.zeros(5))
        recording = time.perf_counter() - started
        assert recorder.close() == states
        writer.finish("complete")
        counts[buffers] = (recorder.waits, recorder.waited_seconds, recording, recorder.closing_seconds)
        assert recorder.device_waited_seconds == 0.0  # nothing to copy on the CPU
        np.testing.assert_array_equal(open_run(f"slow{buffers}", root=StoreRoot(tmp_path)).W.values[:, 0, 0], steps)
    waits, waited, recording, closing = counts[2]
    assert 3 <= waits <= 4 and 0.25 <= waited <= recording and closing >= 0.1
    waits, waited, recording, closing = counts[7]
    assert waits == 0 and waited == 0.0 and closing >= 0.3  # at least 4 of the 6 writes after the last record()


def test_with_loop_submits_the_loop_hands_copied_chunks_to_the_store_in_order(tmp_path, monkeypatch):
    """``record.writer: loop`` on a GPU-like staging (copies that finish later, on another thread): the training
    thread hands each chunk whose copy is done to the store at its next hand-off, in order, and when it waits
    for a free buffer; the writer thread only what is left at ``close``. Two buffers, slow chunk writes, ``W``
    changed in place after each record: every state reads back as recorded."""
    from trajscope.store.chunkio import LocalSink

    put = LocalSink.put
    monkeypatch.setattr(LocalSink, "put", lambda self, key, parts: (time.sleep(0.003), put(self, key, parts))[1])
    h, dim, n, states = 4, 3, 5, 53
    writer, shapes, dtypes = _small_run(tmp_path, "loop", states, h, dim, n)
    calls, original = [], writer.write_block
    writer.write_block = lambda start, block: (calls.append((start, threading.current_thread())),
                                               original(start, block))[1]
    steps = np.arange(states)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=DeferredStaging(0.002), buffers=2,
                        columns={"step": steps, "t": steps * 0.5}, loop_submits=True)
    _record_changing_in_place(recorder, states, h, dim, n)
    assert recorder.close() == states
    writer.finish("complete")
    assert [start for start, _ in calls] == list(range(0, states, 5))  # every chunk once, in order
    on_loop = [start for start, thread in calls if thread is threading.current_thread()]
    assert len(on_loop) >= len(calls) - 2  # the loop handed over all but what close found staged
    assert all(thread.name == "trajscope-writer" for start, thread in calls if start not in on_loop)
    ds = open_run("loop", root=StoreRoot(tmp_path))
    np.testing.assert_array_equal(ds.W.values[:, 0, 0], np.arange(1, states + 1, dtype=np.float32))
    np.testing.assert_array_equal(ds.v.values[:, 0], np.arange(states, dtype=np.float32))


def test_record_writer_loop_reaches_the_recorder_and_records_what_the_thread_does(tmp_path, small_config, monkeypatch):
    """``record.writer: loop`` asks the recorder for ``loop_submits`` (a GPU's loop hands its chunks over); on the
    CPU, whose loop hands them over already, the run is the thread's, value for value."""
    from trajscope.producer import produce
    from trajscope.producer import train as train_module

    asked, original = [], train_module.Recorder

    class Asking(original):
        def __init__(self, *args, **kwargs):
            asked.append(kwargs.get("loop_submits"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_module, "Recorder", Asking)
    for writer in ("thread", "loop"):
        produce(small_config(record={"writer": writer}), root=tmp_path, name=writer)
    assert asked == [False, True]
    by_loop, by_thread = open_run("loop", tmp_path).load(), open_run("thread", tmp_path).load()
    assert by_loop.attrs["status"] == "complete"
    assert by_loop.attrs["committed_steps"] == by_thread.attrs["committed_steps"]
    for name in ("W", "v", "loss", "output"):
        np.testing.assert_array_equal(by_loop[name].values, by_thread[name].values)


def test_with_loop_submits_a_chunk_the_loop_leaves_staged_is_committed_by_the_writer_thread(tmp_path):
    """A loop that stops recording after a chunk (evaluation, a long gap in the schedule) leaves it staged: the
    writer thread hands it to the store after ``commit_seconds`` and commits it, so a live reader sees it
    within about two ``commit_seconds`` (here 0.2 s), not at the loop's next chunk."""
    writer, shapes, dtypes = _small_run(tmp_path, "paused", 20)
    writer.set_write_options(commit_seconds=0.2)
    threads, original = [], writer.write_block
    writer.write_block = lambda start, block: (threads.append(threading.current_thread().name),
                                               original(start, block))[1]
    steps = np.arange(20)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=DeferredStaging(0.05), buffers=3,
                        columns={"step": steps, "t": steps * 0.5}, loop_submits=True)
    for k in range(5):  # one whole chunk, then nothing
        recorder.record(W=torch.full((4, 3), float(k)), v=torch.zeros(4), loss=k / 10, output=torch.zeros(5))
    started = time.perf_counter()
    while StoreRoot(tmp_path).read_attrs("paused")["committed_steps"] < 5 and time.perf_counter() - started < 10:
        time.sleep(0.02)
    waited = time.perf_counter() - started
    assert StoreRoot(tmp_path).read_attrs("paused")["committed_steps"] == 5 and waited < 2.0, waited
    assert threads == ["trajscope-writer"]  # (its copy was not done when the loop last looked)
    assert recorder.close() == 5
    writer.finish("complete")
    np.testing.assert_array_equal(open_run("paused", root=StoreRoot(tmp_path)).W.values[:, 0, 0], np.arange(5))


@pytest.mark.parametrize("failure", [OSError("disk full (simulated)"), KeyboardInterrupt()])
def test_with_loop_submits_a_failed_or_interrupted_hand_off_on_the_loop_commits_only_what_came_before(tmp_path,
                                                                                                     failure):
    """The loop hands the chunk at 5 to the store (chunks of 5) and ``write_block`` raises: a failed write is the
    run's error, raised to the loop (and by every later record); a Ctrl-C is raised as it is and recording after
    it is refused. Either way ``close`` commits states 0-4 and no later state, and returns."""
    writer, recorder, calls, state = _raising_at_the_second_block(tmp_path, f"loop-{type(failure).__name__}",
                                                                  failure, loop_submits=True)
    assert recorder._overdue_seconds == 60  # (the writer thread never hands a chunk over here)
    raised = None
    try:
        for k in range(20):
            recorder.record(**state)
    except (RuntimeError, KeyboardInterrupt) as exc:
        raised = exc
    assert 5 in calls and calls == sorted(calls)
    if isinstance(failure, KeyboardInterrupt):
        assert isinstance(raised, KeyboardInterrupt) and recorder._error is None
        with pytest.raises(RuntimeError, match="Ctrl-C interrupted handing states 5.. to the store"):
            recorder.record(**state)
    else:
        assert isinstance(raised, RuntimeError) and "disk full" in str(raised)
        with pytest.raises(RuntimeError, match="disk full"):
            for _ in range(10):
                recorder.record(**state)
    closed = []
    closing = threading.Thread(target=lambda: closed.append(_close_quietly(recorder)), daemon=True)
    closing.start()
    closing.join(20)
    assert not closing.is_alive() and writer.committed_steps == 5
    writer.finish("interrupted")
    np.testing.assert_array_equal(open_run(f"loop-{type(failure).__name__}", root=StoreRoot(tmp_path)).sizes["step"], 5)


@pytest.mark.parametrize("when", ["before handing it over", "after write_block"])
def test_with_loop_submits_a_ctrl_c_on_the_loop_cuts_there_and_nothing_from_the_cut_is_written_later(tmp_path, when):
    """A Ctrl-C lands while the loop hands over the chunk at 5 (chunks of 5, three buffers, no copy done before the
    loop runs out of buffers, so the chunk at 10 is staged too when it hands over what it staged): just after
    taking it off the queue, or just after ``write_block`` returned. Either way the run is cut at 5: the writer thread neither hands over the staged chunk at 10 nor commits past 5 while the
    caller pauses (commits due every 0.2 s), and ``close`` commits states 0-4 and returns."""
    run_id = "cut-" + when.split()[0]
    writer, shapes, dtypes = _small_run(tmp_path, run_id, 20)
    writer.set_write_options(commit_seconds=60)  # (no hand-over by the writer thread before the interrupt)
    calls, original = [], writer.write_block

    def write_block(start, block):
        calls.append(start)
        handle = original(start, block)
        if start == 5 and when == "after write_block":
            raise KeyboardInterrupt
        return handle

    writer.write_block = write_block
    steps = np.arange(20)
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), staging=GatedStaging(), buffers=3,
                        columns={"step": steps, "t": steps * 0.5}, loop_submits=True)
    if when == "before handing it over":
        submit = recorder._submit_on_loop
        recorder._submit_on_loop = lambda index: (_ for _ in ()).throw(KeyboardInterrupt) \
            if recorder._slots[index].start == 5 else submit(index)
    with pytest.raises(KeyboardInterrupt):
        for k in range(20):
            recorder.record(W=torch.full((4, 3), float(k)), v=torch.zeros(4), loss=k / 10, output=torch.zeros(5))
    assert recorder._cut == 5 and [recorder._slots[i].start for i, _ in recorder._staged] == [10]
    writer.commit_seconds = recorder._overdue_seconds = 0.2  # from now on: commits due, the staged chunk overdue
    time.sleep(1.0)  # the writer thread wakes several times
    assert StoreRoot(tmp_path).read_attrs(run_id)["committed_steps"] <= 5
    closed = []
    closing = threading.Thread(target=lambda: closed.append(recorder.close()), daemon=True)
    closing.start()
    closing.join(20)
    assert closed == [5] and writer.committed_steps == 5
    assert 10 not in calls and not (tmp_path / f"{run_id}.zarr" / "W" / "c" / "2").exists()
    writer.finish("interrupted")
    np.testing.assert_array_equal(open_run(run_id, root=StoreRoot(tmp_path)).W.values[:, 0, 0], np.arange(5))


def _close_quietly(recorder):
    try:
        return recorder.close()
    except RuntimeError as exc:  # a failed run's close raises its error
        return str(exc)


def test_a_wait_for_the_device_is_not_counted_as_the_stores(tmp_path):
    """The writes are fast, each chunk's copy to the host ends 100 ms after its hand-off (the copies of
    the two buffers overlap): the loop waits about 100 ms for each pair of chunks after the first, 200 ms or
    more in all, and those waits are the device's, not the store's."""
    states = 30
    writer, shapes, dtypes = _small_run(tmp_path, "device", states)
    steps = np.arange(states)
    staging = DeferredStaging(delay=0.1)  # a GPU still computing each chunk
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2, staging=staging,
                        columns={"step": steps, "t": steps * 0.5})
    for k in range(states):
        recorder.record(W=torch.full((4, 3), float(k)), v=torch.zeros(4), loss=k / 10, output=torch.zeros(5))
    assert recorder.close() == states
    writer.finish("complete")
    assert recorder.waits >= 2 and recorder.device_waited_seconds >= 0.15
    assert recorder.waited_seconds < recorder.device_waited_seconds / 2  # a write takes far less than a copy
    np.testing.assert_array_equal(open_run("device", root=StoreRoot(tmp_path)).W.values[:, 0, 0], steps)


def test_recording_waits_add_to_what_a_run_holds_and_keep_what_they_do_not_know():
    from types import SimpleNamespace

    from trajscope.producer.outcomes import recording_waits

    segment = SimpleNamespace(waited_seconds=1.5, closing_seconds=0.25, device_waited_seconds=0.0)
    assert recording_waits(None, segment, 10.0) == {"store_seconds": 1.5, "close_seconds": 0.25,
                                                    "device_seconds": 0.0, "seconds": 10.0}
    # a value that is not a number counts as 0 (a run never fails to finish over it); unknown keys stay
    previous = {"store_seconds": 2.0, "close_seconds": None, "device_seconds": "x", "seconds": 5, "later": [1]}
    assert recording_waits(previous, segment, 10.0) == {"store_seconds": 3.5, "close_seconds": 0.25,
                                                        "device_seconds": 0.0, "seconds": 15.0, "later": [1]}


class StoreFailingOnFirstUse(CollectingWriter):
    """A writer whose write path fails to build when first touched (``written_steps``, as RunWriter builds its
    HotPath there): on a GPU only the recorder's writer thread touches it."""

    write_pool_size, block_threads = 2, 1

    @property
    def written_steps(self):
        raise OSError("the store's write path could not be built")


def test_a_writer_thread_failing_outside_a_write_fails_the_run_instead_of_hanging_it():
    writer = StoreFailingOnFirstUse(2)
    shapes, dtypes = {"W": (3, 2)}, {"W": torch.float32}
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2, staging=DeferredStaging(0.0))
    outcome = []

    def loop():
        try:
            for k in range(40):  # 20 chunks through 2 buffers: needs the writer thread to free them
                recorder.record(W=torch.full((3, 2), float(k)))
            recorder.close()
            outcome.append("finished")
        except RuntimeError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the training loop hung on a dead writer thread"
    assert outcome and "could not be built" in outcome[0], outcome


def test_a_recorder_that_fails_to_build_leaves_no_writer_thread():
    """Resuming inside a chunk with rows of the wrong shape fails in the constructor, and no writer thread
    outlives it (one would go on rewriting the run's attributes with its heartbeat)."""
    def writer_threads():
        return [t for t in threading.enumerate() if t.name == "trajscope-writer" and t.is_alive()]

    before = len(writer_threads())
    writer = CollectingWriter(4)
    with pytest.raises(RuntimeError):
        Recorder(writer, {"W": (3, 2)}, {"W": torch.float32}, torch.device("cpu"), buffers=2,
                 staging=DeferredStaging(0.0), start_index=2, preload={"W": np.zeros((2, 5, 5), np.float32)})
    assert len(writer_threads()) == before
