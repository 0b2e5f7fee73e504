"""Training steps that write ``W`` into the recorder's rows (:meth:`Recorder.row`): the same bits as new
tensors, a chunk written from one buffer, and no buffer reused while anything else holds a view of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trajscope import open_run
from trajscope.producer import produce, resume
from trajscope.producer.recorder import STACK_BELOW_VALUES, Recorder
from trajscope.store import RunWriter, StoreRoot, faults
from trajscope.producer.two_layer import variables as two_layer_variables

VARIABLES = ("W", "v", "loss", "output", "step", "t")


def wide_config(small_config, **sections):
    """``W`` of 64 x 64 in chunks of 10 states: 40960 values a chunk, written from the rows (not stacked)."""
    config = small_config(data={"n": 40, "dim": 64, "mu": 0.2}, model={"width": 64},
                          init={"kind": "gaussian", "scale": 0.05}, train={"lr": 0.01, "steps": 60},
                          record={"chunk_mib": 0.16})
    for key, value in sections.items():
        config[key] = {**config[key], **value}
    return config


@pytest.fixture
def handed_W(monkeypatch):
    """The kinds of ``W`` every by-reference block reached the store as (``ndarray``: one buffer)."""
    kinds = []
    original = Recorder._block_values

    def spy(self, slot):
        values = original(self, slot)
        kinds.append(type(values["W"]).__name__)
        return values

    monkeypatch.setattr(Recorder, "_block_values", spy)
    return kinds


@pytest.mark.parametrize("every", [1, 3])
def test_rows_record_the_same_bits_as_new_tensors(tmp_path, small_config, monkeypatch, handed_W, every):
    config = wide_config(small_config, record={"every": every})
    assert 10 * 64 * 64 >= STACK_BELOW_VALUES
    produce(config, root=tmp_path, name="rows")
    in_place = list(handed_W)
    handed_W.clear()
    monkeypatch.setattr(Recorder, "row", lambda self, name: None)  # every step makes a new W, as before rows
    produce(config, root=tmp_path, name="new")
    a, b = open_run("rows", tmp_path).load(), open_run("new", tmp_path).load()
    assert a.attrs["chunk_steps"] == 10 and a.sizes == b.sizes
    for name in VARIABLES:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    # the first block holds the initial state (not made by a step): rows; the later ones are one buffer each
    assert in_place[0] == "StateRows" and in_place[1:] == ["ndarray"] * (len(in_place) - 1) and len(in_place) >= 2
    assert "ndarray" not in handed_W  # without rows every block is the states' own memory


def test_resume_of_a_run_recorded_in_rows_is_bit_identical(tmp_path, small_config, monkeypatch, handed_W):
    config = wide_config(small_config)
    produce(config, root=tmp_path, name="ref")
    monkeypatch.setenv(faults.ENV, "write.chunk:raise:3")  # dies when its 3rd chunk is written
    faults._hits.clear()
    with pytest.raises(RuntimeError, match="injected fault"):
        produce(config, root=tmp_path, name="r")
    monkeypatch.delenv(faults.ENV)
    assert StoreRoot(tmp_path).read_attrs("r")["committed_steps"] < 61
    handed_W.clear()
    assert resume("r", root=tmp_path).status == "complete"
    assert "ndarray" in handed_W  # the resumed run records in rows too
    assert_same_run(open_run("r", tmp_path).load(), open_run("ref", tmp_path).load())


def test_resume_inside_a_chunk_recorded_in_rows_is_bit_identical(tmp_path, small_config, monkeypatch, handed_W):
    """Ctrl-C after state 24 commits 25 states (chunks of 10): resume rewrites chunk 2 from its committed
    rows 20-24 (read back) and the new states, written in rows."""
    from trajscope.producer import model

    config = wide_config(small_config)
    produce(config, root=tmp_path, name="ref")
    calls, original = {"n": 0}, model.TwoLayerReLU.gradient

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model.TwoLayerReLU, "gradient", interrupted)
    assert produce(config, root=tmp_path, name="r").status == "interrupted"
    monkeypatch.setattr(model.TwoLayerReLU, "gradient", original)
    assert StoreRoot(tmp_path).read_attrs("r")["committed_steps"] == 25
    handed_W.clear()
    assert resume("r", root=tmp_path).status == "complete"
    assert handed_W[0] == "StateRows" and "ndarray" in handed_W[1:]  # chunk 2: read-back rows, then rows
    assert_same_run(open_run("r", tmp_path).load(), open_run("ref", tmp_path).load())


def assert_same_run(a, b):
    assert a.sizes == b.sizes
    for name in VARIABLES:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def _recorder(tmp_path, states, buffers=2):
    """A by-reference recorder of ``W`` 200 x 40 in chunks of 5 states (40000 values: written from rows)."""
    h, dim, n = 200, 40, 5
    writer = RunWriter.create(
        StoreRoot(tmp_path), "rows", variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=states, static={"X": np.ones((n, dim)), "y": np.ones(n)}, attrs={}, chunk_bytes=h * dim * 4 * 5)
    assert writer.chunk_steps == 5
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
    steps = np.arange(states)
    return writer, Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=buffers, by_reference=True,
                            columns={"step": steps, "t": steps * 0.5})


def test_a_buffer_is_reused_unless_the_caller_keeps_a_row_or_a_view_of_it(tmp_path):
    states = 50
    writer, recorder = _recorder(tmp_path, states)
    rng = torch.Generator().manual_seed(5)
    values = [torch.randn(200, 40, generator=rng) for _ in range(states)]
    buffers, kept = [], {}
    for k in range(states):
        row = recorder.row("W")
        assert row.shape == (200, 40) and row.dtype == torch.float32
        assert row.data_ptr() % 64 == 0  # aligned as torch's own tensors (32000-byte rows keep the alignment)
        if k % 5 == 0:
            buffers.append(recorder._slots[recorder._current].in_place["W"])  # the chunk's buffer (kept alive here)
        torch.add(values[k], 0.0, out=row)  # a step writing its result in place
        if k == 7:
            kept[k] = row[1:3]  # a view the caller keeps (e.g. part of a checkpoint)
        if k == 21:
            kept[k] = row  # the row itself
        recorder.record(W=row, v=torch.zeros(200), loss=float(k), output=torch.zeros(5))
    assert recorder.close() == states
    writer.finish("complete")
    np.testing.assert_array_equal(kept[7].numpy(), values[7][1:3].numpy())  # not overwritten by a later chunk
    np.testing.assert_array_equal(kept[21].numpy(), values[21].numpy())
    np.testing.assert_array_equal(open_run("rows", StoreRoot(tmp_path)).W.values, torch.stack(values).numpy())
    # chunks 1 (states 5-9) and 4 (20-24) hold the kept tensors: their buffers are never used again
    assert not any(b is buffers[1] for b in buffers[2:]) and not any(b is buffers[4] for b in buffers[5:])
    # ... while the others are (two buffers: chunks alternate between them)
    assert any(b is earlier for i, b in enumerate(buffers) for earlier in buffers[:i])


def test_a_buffer_is_not_reused_before_its_chunk_file_is_written(tmp_path, monkeypatch):
    """The first chunk's write is held back while the loop records three more chunks (two buffers: they go
    to the other one, each time it is written): every state is stored as recorded."""
    import threading

    from trajscope.store.chunkio import LocalSink

    gate, original = threading.Event(), LocalSink.put

    def held(self, key, parts):
        if key.startswith("W/c/0/"):
            assert gate.wait(30)
        return original(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", held)
    states = 20
    writer, recorder = _recorder(tmp_path, states)
    values = [torch.full((200, 40), float(k)) for k in range(states)]
    for k in range(states):
        row = recorder.row("W")
        if k == 19:  # chunks 1-3 were recorded while chunk 0's file was not yet written
            assert not (tmp_path / "rows.zarr" / "W" / "c" / "0" / "0" / "0").exists()
            gate.set()
        torch.add(values[k], 0.0, out=row)
        recorder.record(W=row, v=torch.zeros(200), loss=float(k), output=torch.zeros(5))
    assert recorder.close() == states
    writer.finish("complete")
    np.testing.assert_array_equal(open_run("rows", StoreRoot(tmp_path)).W.values, torch.stack(values).numpy())


def test_rows_are_offered_only_where_they_can_be_used(tmp_path):
    writer, recorder = _recorder(tmp_path, 3)
    assert recorder.row("v") is None  # a small variable, stacked per chunk
    assert recorder.row("nope") is None
    recorder.record(W=torch.ones(200, 40), v=torch.zeros(200), loss=0.0, output=torch.zeros(5))
    assert recorder.close() == 1
    copying = Recorder(writer, {"W": (200, 40)}, {"W": torch.float32}, torch.device("cpu"))
    assert copying.row("W") is None  # copying recorders have buffers of their own
    copying.close()
