"""ModuleRecorder: every recorded state equals a synchronous copy; growth; names; plain xarray reads."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import trajscope
from trajscope.store import StoreRoot, read_schema
from trajscope.store.dataset_attrs import run_attr
from trajscope.store.errors import UserError

from .models import MLP, SmallCNN, data, train

_spec = importlib.util.spec_from_file_location("_direct_io_helpers", Path(__file__).parent.parent / "store" /
                                               "test_direct_io.py")
_direct = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_direct)
resident_pages, on_a_disk = _direct.resident_pages, _direct.on_a_disk  # (the kernel's page-cache answer)


def _record(model, x, y, root, name, steps, **kw):
    copies = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    with trajscope.ModuleRecorder(model, root=root, name=name, **kw) as rec:
        rec.record()
        train(model, x, y, steps, rec, copies=copies)
    return copies


@pytest.mark.parametrize("make, shape", [(MLP, (12,)), (SmallCNN, (1, 8, 8))])
def test_every_step_equals_a_synchronous_copy(tmp_path, make, shape):
    torch.manual_seed(0)
    model = make()
    x, y = data(shape=shape)
    steps = 37
    # a small chunk target forces several chunks and capacity growth past the first capacity
    copies = _record(model, x, y, tmp_path, "m", steps, chunk_mib=0.002)
    ds = trajscope.open_run(tmp_path / "m.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["committed_steps"] == steps + 1
    assert ds.attrs["chunk_steps"] < steps + 1  # really several chunks
    assert ds.attrs["durability"] == "process"  # the level it was written with (found by a review: none stored)
    np.testing.assert_array_equal(ds["step"].values, np.arange(steps + 1))
    for name, param in model.named_parameters():
        stored = ds[name].values
        expected = np.stack([c[name].numpy() for c in copies])
        np.testing.assert_array_equal(stored, expected)
        assert ds[name].dims == ("step", *(f"{name}.dim{i}" for i in range(param.ndim)))
    assert np.isnan(ds["loss"].values[0])  # the initial record() had no loss
    np.testing.assert_allclose(ds["loss"].values[1:], [c["loss"] for c in copies[1:]], rtol=1e-6)
    schema = read_schema(ds.attrs)
    assert schema["kind"] == "module"
    assert {n for n, v in schema["variables"].items() if v["role"] == "parameter"} == \
        {n for n, _ in model.named_parameters()}
    assert schema["variables"]["loss"]["role"] == "scalar"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # numpy rows; torch rows (no numpy bfloat16)
def test_a_module_of_many_tensors_keeps_no_row_views_and_equals_its_copies(tmp_path, monkeypatch, dtype):
    """Beyond ``MAX_KEPT_ROW_VIEWS`` views a buffer (chunk steps x variables) keeps none: each state's are made
    as it is recorded (a review's module of 1000 tiny tensors held 978 MB of them), and every step still equals a
    synchronous copy."""
    from trajscope.producer import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "MAX_KEPT_ROW_VIEWS", 64)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(12)]).to(dtype)
    x, y = data(shape=(3,))
    x = x.to(dtype)
    copies = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    with trajscope.ModuleRecorder(model, root=tmp_path, name="m", chunk_mib=0.0002) as rec:
        rec.record()
        train(model, x, y, 9, rec, copies=copies)
        assert all(slot.rows is None for slot in rec.recorder._slots)
        assert rec.recorder.chunk * len(copies[0]) > 64
    ds = trajscope.open_run(tmp_path / "m.zarr")
    assert ds.attrs["committed_steps"] == 10 and ds.attrs["chunk_steps"] < 10  # several chunks, buffers reused
    for name in copies[0]:
        expected = np.stack([c[name].float().numpy() for c in copies])
        np.testing.assert_array_equal(ds[name].values.astype(np.float32), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # numpy rows; torch rows (no numpy bfloat16)
def test_flush_hands_a_chunk_not_yet_full_to_live_readers(tmp_path, dtype):
    """``rec.flush()`` (and ``flush_seconds``, of which it is the immediate form) hands the states recorded so far
    to the store although their chunk (up to 1024 states here) is far from full: a reader sees them within about
    ``commit_seconds``, each equal to a synchronous copy, and the finished run holds every state."""
    torch.manual_seed(0)
    model = MLP().to(dtype)
    x, y = data()
    x = x.to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    copies = [{n: p.detach().float().clone() for n, p in model.named_parameters()}]
    seen = []
    with trajscope.ModuleRecorder(model, root=tmp_path, name="m", flush_seconds=0) as rec:
        rec.flush()  # nothing recorded yet: nothing to do
        rec.record()
        for step in range(1, 8):
            loss = nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(loss=loss)
            copies.append({n: p.detach().float().clone() for n, p in model.named_parameters()})
            if step % 3 == 0:
                rec.flush()
                deadline = time.monotonic() + 10
                while rec.committed_steps < step + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                live = trajscope.open_run(tmp_path / "m.zarr")
                seen.append(live.attrs["committed_steps"])
                for name in copies[0]:
                    np.testing.assert_array_equal(live[name].values.astype(np.float32),
                                                  np.stack([c[name].numpy() for c in copies]), err_msg=name)
        assert rec.recorder.chunk > 8 and rec.recorder.early_hand_overs == 2
    assert seen == [4, 7]
    with pytest.raises(RuntimeError, match="after close"):
        rec.flush()
    ds = trajscope.open_run(tmp_path / "m.zarr")
    assert ds.attrs["committed_steps"] == 8 and ds.attrs["status"] == "complete"
    for name in copies[0]:
        np.testing.assert_array_equal(ds[name].values.astype(np.float32), np.stack([c[name].numpy() for c in copies]))


def test_a_ctrl_c_caught_around_record_ends_the_run_interrupted_with_what_was_handed_over(tmp_path, monkeypatch):
    """A notebook's loop: ``record()`` raised a Ctrl-C while handing states to the store, the user caught it and the
    block ended well. The run is ``interrupted`` (it was ended ``complete`` with states missing: a review), and
    keeps what an earlier ``flush()`` of the same chunk handed over."""
    from trajscope.store.writer import RunWriter

    original, calls = RunWriter.write_block, []

    def interrupted_second_time(self, start, values):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, start, values)

    monkeypatch.setattr(RunWriter, "write_block", interrupted_second_time)
    torch.manual_seed(0)
    model = MLP()
    copies = []
    with trajscope.ModuleRecorder(model, root=tmp_path, name="m", flush_seconds=0) as rec:
        for step in range(6):
            with torch.no_grad():
                model.fc1.weight.add_(1.0)
            copies.append(model.fc1.weight.detach().clone())
            try:
                rec.record()
            except KeyboardInterrupt:
                break
            if step == 3:
                rec.flush()  # the first hand-over: states 0-3
            elif step == 4:
                with pytest.raises(KeyboardInterrupt):
                    rec.flush()  # the second: interrupted
                break
    assert calls == [0, 0] and rec.status == "interrupted"
    ds = trajscope.open_run(tmp_path / "m.zarr")
    assert ds.attrs["status"] == "interrupted" and ds.attrs["committed_steps"] == 4
    np.testing.assert_array_equal(ds["fc1.weight"].values, torch.stack(copies[:4]).numpy())


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2", True])
def test_flush_seconds_must_be_seconds(tmp_path, bad):
    with pytest.raises(UserError, match="flush_seconds"):
        trajscope.ModuleRecorder(MLP(), root=tmp_path, name="m", flush_seconds=bad)
    assert not (tmp_path / "m.zarr").exists()


def test_plain_xr_open_zarr_reads_a_module_run(tmp_path):
    torch.manual_seed(1)
    model = MLP()
    x, y = data()
    copies = _record(model, x, y, tmp_path, "plain", 5)
    ds = xr.open_zarr(tmp_path / "plain.zarr")
    assert set(n for n, _ in model.named_parameters()) <= set(ds.data_vars)
    np.testing.assert_array_equal(ds["fc2.weight"].values[-1], copies[-1]["fc2.weight"].numpy())


def test_options_every_subset_buffers_gradients_extras(tmp_path):
    torch.manual_seed(2)
    model = SmallCNN()
    x, y = data(shape=(1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    grads, states = [], []
    with trajscope.ModuleRecorder(model, root=tmp_path, name="opts", every=2, parameters=["conv*.weight"],
                                  buffers=["bn.running_*"], gradients=True, dims={"logits": ("sample", "class")}) as rec:
        rec.record()
        states.append(model.conv1.weight.detach().clone())
        grads.append(None)
        for step in range(1, 8):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record(loss=loss, logits=logits)
            states.append(model.conv1.weight.detach().clone())
            grads.append(model.conv1.weight.grad.detach().clone())
            if step == 6:
                running = model.bn.running_mean.detach().clone()
    ds = trajscope.open_run(tmp_path / "opts.zarr")
    np.testing.assert_array_equal(ds["step"].values, [0, 2, 4, 6])
    assert "conv1.weight" in ds and "conv2.weight" in ds and "head.weight" not in ds and "conv1.bias" not in ds
    for i, k in enumerate([0, 2, 4, 6]):
        np.testing.assert_array_equal(ds["conv1.weight"].values[i], states[k].numpy())
        if k:
            np.testing.assert_array_equal(ds["conv1.weight.grad"].values[i], grads[k].numpy())
    assert np.isnan(ds["conv1.weight.grad"].values[0]).all()
    assert ds["conv1.weight.grad"].dims == ds["conv1.weight"].dims
    np.testing.assert_array_equal(ds["bn.running_mean"].values[-1], running.numpy())
    assert ds["logits"].dims == ("step", "sample", "class") and ds.sizes["sample"] == x.shape[0]
    roles = {n: v["role"] for n, v in read_schema(ds.attrs)["variables"].items()}
    assert roles["bn.running_mean"] == "buffer" and roles["conv1.weight.grad"] == "gradient"
    assert roles["logits"] == "tensor"


def test_an_extra_first_seen_late_is_refused_and_the_run_stays_readable(tmp_path):
    model = MLP()
    rec = trajscope.ModuleRecorder(model, root=tmp_path, name="late")
    rec.record()
    rec.record(loss=1.0)
    with pytest.raises(UserError, match="acc"):
        rec.record(loss=0.5, acc=0.9)
    rec.close()
    ds = trajscope.open_run(tmp_path / "late.zarr")
    assert ds.attrs["committed_steps"] == 2 and "acc" not in ds


def test_a_state_larger_than_a_chunk_is_chunked_along_its_own_dims(tmp_path):
    model = torch.nn.Linear(64, 32)  # 8 KiB of weights per state
    copies = []
    with trajscope.ModuleRecorder(model, root=tmp_path, name="big", chunk_mib=2 / 1024) as rec:
        for _ in range(3):
            rec.record()
            copies.append(model.weight.detach().clone())
            with torch.no_grad():
                model.weight.add_(1.0)
    import zarr

    arr = zarr.open_array(tmp_path / "big.zarr" / "weight", mode="r")
    assert arr.chunks[0] == 1 and arr.chunks[1] < 32 and arr.chunks[1] * 64 * 4 <= 2048
    ds = trajscope.open_run(tmp_path / "big.zarr")
    np.testing.assert_array_equal(ds["weight"].values, np.stack([c.numpy() for c in copies]))


def test_recording_needs_a_module_and_a_valid_name(tmp_path):
    with pytest.raises(TypeError):
        trajscope.ModuleRecorder(object(), root=tmp_path, name="x")
    with pytest.raises(UserError):
        trajscope.ModuleRecorder(MLP(), root=tmp_path, name="../escape")
    with pytest.raises(UserError):
        trajscope.ModuleRecorder(MLP(), root=tmp_path, name="x", every=0)
    assert not StoreRoot(tmp_path).run_ids()


def _train_run(root, name, steps, *, interrupt_at=None, resume=False):
    torch.manual_seed(7)
    model = MLP()
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    try:
        with trajscope.ModuleRecorder(model, root=root, name=name, resume=resume, chunk_mib=0.004) as rec:
            if resume:
                rec.last_state()
                start = rec.step
            else:
                rec.record()
                start = 1
            for step in range(start, steps + 1):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.record(loss=loss)
                if step == interrupt_at:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    return rec


def test_an_interrupted_run_resumes_mid_chunk_to_the_uninterrupted_trajectory(tmp_path):
    ref = _train_run(tmp_path, "ref", 21)
    first = _train_run(tmp_path, "cut", 21, interrupt_at=9)
    cut = trajscope.open_run(tmp_path / "cut.zarr")
    assert cut.attrs["status"] == "interrupted" and cut.attrs["committed_steps"] == 10
    assert 10 % cut.attrs["chunk_steps"] != 0  # the partial chunk is rewritten whole on resume
    assert first.status == "interrupted"
    _train_run(tmp_path, "cut", 21, resume=True)
    done, expected = trajscope.open_run(tmp_path / "cut.zarr"), trajscope.open_run(tmp_path / "ref.zarr")
    assert done.attrs["status"] == "complete" and ref.status == "complete"
    for name in expected.data_vars:
        np.testing.assert_array_equal(done[name].values, expected[name].values, err_msg=name)


def test_writes_failing_at_close_are_raised_not_left_in_the_run_alone(tmp_path, monkeypatch):
    """The loop ends normally but the last chunk files cannot be written (a full disk) while the recorder
    closes: leaving the ``with`` block raises :class:`RunFailed` naming the cause (before, the run was marked
    ``failed`` and nothing told the user). What is committed (here whatever the last commit covered: the
    small variables' rows can no longer be flushed) equals a run's that had space."""
    import errno

    from trajscope.store.chunkio import LocalSink
    from trajscope.store.errors import RunFailed

    torch.manual_seed(0)
    model = MLP()
    x, y = data()
    _record(model, x, y, tmp_path, "ref", 8, chunk_mib=0.002)  # 9 states: the last chunk partial
    torch.manual_seed(0)
    model = MLP()
    put, closing = LocalSink.put, []

    def full_once_closing(self, key, parts):
        if closing:
            raise OSError(errno.ENOSPC, "No space left on device")
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", full_once_closing)
    with pytest.raises(RunFailed, match="run 'm' failed: .*No space left on device"):
        with trajscope.ModuleRecorder(model, root=tmp_path, name="m", chunk_mib=0.002) as rec:
            rec.record()
            train(model, x, y, 8, rec)
            closing.append(True)
    ds, ref = trajscope.open_run(tmp_path / "m.zarr"), trajscope.open_run(tmp_path / "ref.zarr")
    committed = ds.attrs["committed_steps"]
    assert ds.attrs["status"] == "failed" and "No space left" in ds.attrs["error"] and rec.status == "failed"
    assert committed < 9 and committed % ds.attrs["chunk_steps"] == 0 and ds.sizes["step"] == committed
    for name in ref.data_vars:
        np.testing.assert_array_equal(ds[name].values, ref[name].values[:committed], err_msg=name)


def test_resume_refuses_another_model(tmp_path):
    _train_run(tmp_path, "cut", 5, interrupt_at=2)
    with pytest.raises(UserError, match="shape"):
        trajscope.ModuleRecorder(MLP(hidden=8), root=tmp_path, name="cut", resume=True)
    # the refused resume released the writer lock: the right model resumes
    _train_run(tmp_path, "cut", 5, resume=True)
    assert trajscope.open_run(tmp_path / "cut.zarr").attrs["committed_steps"] == 6


def test_an_existing_run_is_refused_before_training(tmp_path):
    with trajscope.ModuleRecorder(MLP(), root=tmp_path, name="once") as rec:
        rec.record()
    with pytest.raises(UserError, match="already exists"):
        trajscope.ModuleRecorder(MLP(), root=tmp_path, name="once")
    with pytest.raises(UserError, match="complete"):
        trajscope.ModuleRecorder(MLP(), root=tmp_path, name="once", resume=True)


def _slow_weight_files(monkeypatch):
    """Every chunk file of a weight takes 50 ms to write: a loop of the small models outruns the store (10 ms did
    not always, on a loaded machine)."""
    from trajscope.store.chunkio import LocalSink

    put = LocalSink.put

    def slow_put(self, key, parts):
        if ".weight/" in key:
            time.sleep(0.05)
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", slow_put)


def test_a_slow_store_shows_in_the_wait_for_it(tmp_path, monkeypatch):
    """The loop outruns the store, waits for free chunk buffers, and says for how long; everything recorded
    is still stored."""
    _slow_weight_files(monkeypatch)
    torch.manual_seed(4)
    model = MLP()
    x, y = data()
    with trajscope.ModuleRecorder(model, root=tmp_path, name="slow", chunk_mib=0.002) as rec:
        assert rec.store_wait_seconds == 0.0
        rec.record()
        train(model, x, y, 40, rec)
        waited = rec.store_wait_seconds
    assert waited > 0
    ds = trajscope.open_run(tmp_path / "slow.zarr")
    stored = run_attr(ds.attrs, "recording_waits")  # the run keeps the waits of its recording
    assert stored["store_seconds"] == pytest.approx(waited, abs=1e-6) and stored["seconds"] > waited
    assert ds.attrs["committed_steps"] == 41 and ds.attrs["chunk_steps"] < 10
    np.testing.assert_array_equal(ds["fc2.weight"].values[-1], model.fc2.weight.detach().numpy())


def _recording_open(root, name, steps, *, seed):
    """A fresh MLP trained ``steps`` SGD steps, each recorded by a ModuleRecorder left open (small chunks):
    the model, the data and the recorder."""
    torch.manual_seed(seed)
    model = MLP()
    x, y = data()
    rec = trajscope.ModuleRecorder(model, root=root, name=name, chunk_mib=0.002)
    rec.record()
    train(model, x, y, steps, rec)
    return model, x, y, rec


def test_a_resumed_run_adds_its_waits_to_the_first_part(tmp_path, monkeypatch):
    """``recording_waits`` of a run continued with ``resume=True`` holds both parts' waits."""
    _slow_weight_files(monkeypatch)
    model, x, y, first = _recording_open(tmp_path, "twice", 30, seed=4)
    first_wait = first.store_wait_seconds
    first.close("interrupted")
    before = run_attr(trajscope.open_run(tmp_path / "twice.zarr").attrs, "recording_waits")
    assert first_wait > 0 and before["store_seconds"] == pytest.approx(first_wait, abs=1e-6)
    # two chunk buffers: the loop waits for the slow store whatever else the machine runs (with the default
    # five, a loop slowed by other jobs sometimes never waited in these 30 steps)
    with trajscope.ModuleRecorder(model, root=tmp_path, name="twice", chunk_mib=0.002, resume=True,
                                  queue_chunks=2) as second:
        second.last_state()
        train(model, x, y, 60, second, start=second.step)
        second_wait = second.store_wait_seconds
    ds = trajscope.open_run(tmp_path / "twice.zarr")
    after = run_attr(ds.attrs, "recording_waits")
    assert second_wait > 0 and ds.attrs["status"] == "complete" and ds.attrs["committed_steps"] == 61
    assert after["store_seconds"] == pytest.approx(before["store_seconds"] + second_wait, abs=1e-6)
    assert after["seconds"] > before["seconds"] + second_wait


def test_a_parameter_of_no_values_is_recorded_with_the_rest(tmp_path):
    """A module with an empty parameter (shape (0, 12)) records to the end: the empty variable has no chunk
    files, and the commits cover the others' states."""
    torch.manual_seed(5)
    model = MLP()
    model.unused = torch.nn.Parameter(torch.empty(0, 12))
    x, y = data()
    copies = _record(model, x, y, tmp_path, "empty", 30, chunk_mib=0.002)
    ds = trajscope.open_run(tmp_path / "empty.zarr")
    assert ds.attrs["status"] == "complete" and ds.attrs["committed_steps"] == 31 and ds.attrs["chunk_steps"] < 31
    assert ds["unused"].shape == (31, 0, 12)
    np.testing.assert_array_equal(ds["fc2.weight"].values, np.stack([c["fc2.weight"].numpy() for c in copies]))


def test_a_ctrl_c_while_closing_ends_the_run_interrupted_over_everything_written(tmp_path, monkeypatch,
                                                                                interrupt_writer_join):
    """The interrupt is raised after the writer thread has committed what it was handed; the run ends
    ``interrupted`` (not left ``running`` with its lock held), and resumes in the same process."""
    model, x, y, rec = _recording_open(tmp_path, "cut", 20, seed=6)
    log = interrupt_writer_join()
    with pytest.raises(KeyboardInterrupt):
        rec.close()
    assert log == ["interrupted", "committed"]
    ds = trajscope.open_run(tmp_path / "cut.zarr")
    assert ds.attrs["status"] == "interrupted" and ds.attrs["committed_steps"] == 21 and rec.status == "interrupted"
    np.testing.assert_array_equal(ds["fc2.weight"].values[-1], model.fc2.weight.detach().numpy())
    monkeypatch.undo()
    with trajscope.ModuleRecorder(model, root=tmp_path, name="cut", chunk_mib=0.002, resume=True) as again:
        again.last_state()
        train(model, x, y, 25, again, start=again.step)
    done = trajscope.open_run(tmp_path / "cut.zarr")
    assert done.attrs["status"] == "complete" and done.attrs["committed_steps"] == 26


def test_a_module_run_resumed_on_another_device_warns_and_records_its_segments(tmp_path):
    """As for the two-layer producer: each resume appends {state, device, torch} to ``resumed``, and a resume on
    another device than the segment before warns (the run is made to look recorded on a GPU)."""
    import warnings

    from trajscope.producer.segments import ResumeWarning
    from trajscope.store import StoreRoot
    from trajscope.store.dataset_attrs import run_attr

    _train_run(tmp_path, "moved", 12, interrupt_at=4)
    root = StoreRoot(tmp_path)
    attrs = root.read_attrs("moved")
    assert attrs["device"] == "cpu"
    root.write_attrs("moved", {**attrs, "device": "cuda:0"})
    with pytest.warns(ResumeWarning, match="device cuda:0 → cpu"):
        _train_run(tmp_path, "moved", 12, interrupt_at=8, resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        _train_run(tmp_path, "moved", 12, resume=True)
    segments = run_attr(trajscope.open_run(tmp_path / "moved.zarr").attrs, "resumed")
    assert [(s["state"], s["device"]) for s in segments] == [(5, "cpu"), (9, "cpu")]


def test_a_cpu_module_on_a_disk_is_written_with_direct_io_and_equals_its_copies(tmp_path):
    """``io`` (default ``auto``): direct I/O for a CPU module on a disk filesystem, the page cache left out (asked
    of the kernel with ``mincore``), every state still equal to a synchronous copy; ``buffered`` and a bad value."""
    for io in ("auto", "buffered"):
        torch.manual_seed(0)
        model = MLP(hidden=300)  # fc2.weight: 360 kB a state, a chunk of 2 states per 1 MiB
        x, y = data()
        copies = _record(model, x, y, tmp_path, io, 9, chunk_mib=1, io=io)
        chunks = sorted((tmp_path / f"{io}.zarr" / "fc2.weight" / "c").rglob("*"))
        files = [p for p in chunks if p.is_file()]
        assert len(files) == 5  # 10 states in chunks of 2
        if on_a_disk(tmp_path):
            resident = [resident_pages(p) for p in files]
            if io == "auto":
                assert all(r <= 1 for r, _ in resident), resident  # at most the buffered tail's page
            else:
                assert all(r == n for r, n in resident), resident
        ds = trajscope.open_run(tmp_path / f"{io}.zarr")
        expected = np.stack([c["fc2.weight"].numpy() for c in copies])
        np.testing.assert_array_equal(ds["fc2.weight"].values, expected)
    with pytest.raises(UserError, match="io='fast'"):
        trajscope.ModuleRecorder(MLP(), root=tmp_path, name="bad", io="fast")


def test_a_run_killed_before_its_first_chunk_resumes_from_the_start(tmp_path):
    """Found by a review: the README's resume snippet raised "no committed state to load" for a script killed
    before its first chunk was full. Nothing was committed: ``last_state()`` now returns ``{}``, leaves the
    model as it is, and the loop records the run from step 0."""
    import subprocess
    import sys

    script = ("import os, torch, trajscope\n"
              "model = torch.nn.Linear(3, 2)\n"
              f"rec = trajscope.ModuleRecorder(model, root={str(tmp_path)!r}, name='early')\n"
              "for _ in range(5): rec.record(loss=1.0)\n"
              "os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", script], timeout=300).returncode == 9
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    weights = []
    with trajscope.ModuleRecorder(model, root=tmp_path, name="early", resume=True) as rec:
        assert rec.last_state() == {} and rec.step == 0
        for step in range(rec.step, 6):
            weights.append(model.weight.detach().clone())
            rec.record(loss=float(step))
            with torch.no_grad():
                model.weight.add_(0.5)
    ds = trajscope.open_run(tmp_path / "early.zarr")
    assert ds.attrs["status"] == "complete" and ds["step"].values.tolist() == list(range(6))
    np.testing.assert_array_equal(ds["weight"].values, torch.stack(weights).numpy())


def test_a_misspelt_dims_name_and_a_text_extra_are_one_clear_error(tmp_path):
    """Found by a review: ``dims={"nope": ...}`` was silently ignored and ``record(s="hello")`` raised torch's
    TypeError. Neither creates a run."""
    from trajscope.store import StoreRoot
    from trajscope.store.errors import UserError

    rec = trajscope.ModuleRecorder(torch.nn.Linear(2, 1), root=tmp_path, name="text")
    with pytest.raises(UserError, match=r"record\(s=...\): str 'hello' is not a real number"):
        rec.record(s="hello")
    with pytest.raises(UserError, match=r"record\(z=...\): complex '\(1\+1j\)' is not a real number"):
        rec.record(z=1 + 1j)  # (its imaginary part was dropped)
    for calls in (2, 1, 0):  # refused by the second record(), or by close() (found by a review: with fewer than
        # two calls the name was taken, and in the `with` form close() then created a failed run)
        with pytest.raises(UserError, match="dims names 'wieght', neither a recorded tensor.*weight, bias"):
            with trajscope.ModuleRecorder(torch.nn.Linear(2, 1), root=tmp_path, name="dims",
                                          dims={"wieght": ["a", "b"]}) as rec:
                for _ in range(calls):
                    rec.record()
    assert not StoreRoot(tmp_path).run_ids()


def test_a_scripts_own_error_comes_out_whatever_its_dims(tmp_path):
    """Found by a review: an error of the script before its second record() came out of close() as the dims
    check's UserError, hiding the script's own."""
    with pytest.raises(FileNotFoundError, match="the script's own"):
        with trajscope.ModuleRecorder(torch.nn.Linear(2, 1), root=tmp_path, name="own", dims={"logits": ["k"]}):
            raise FileNotFoundError("the script's own")
