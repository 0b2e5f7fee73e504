"""Recording on a CUDA device: what the GPU path must keep, checked on the GPU itself.

Each test runs on the CPU and, where CUDA is present, on the GPU (this project's CI machine has none, so
there the CPU cases keep the tests themselves from going stale; the CPU paths have their own tests
elsewhere). ``bench/gpu_check.sh run`` runs the CUDA cases first on a lent GPU machine, before its
benchmarks, with ``TRAJSCOPE_TEST_REQUIRE_CUDA=1``: there a missing CUDA device fails instead of skipping.

- Every recorded state equals a copy of the same tensors taken in the loop (on the GPU a clone on the
  device, in stream order), with the writer thread, with the loop handing its chunks to the store
  (``record.writer: loop``) and with the writer process behind it. The loop changes
  the recorded tensors in place right after each ``record()``, only two chunk buffers take turns, and on the
  GPU each step first keeps the device busy for a while, so the host runs ahead of it: the asynchronous
  copies to pinned memory and the reuse of the buffers are what could go wrong.
- The same with the chunk being filled handed over early every third state (``Recorder.flush``).
- SIGKILL of a recording ``trajscope produce``, then ``resume``: the run equals an uninterrupted one bit
  for bit, with either writer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from trajscope.producer import load_config, produce, resume
from trajscope.producer.recorder import Recorder
from trajscope.producer.two_layer import variables as two_layer_variables
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.store import writer_process
from tests.torch_calls import TorchCalls

if os.environ.get("TRAJSCOPE_TEST_REQUIRE_CUDA") == "1" and not torch.cuda.is_available():
    raise RuntimeError("TRAJSCOPE_TEST_REQUIRE_CUDA=1 but torch sees no CUDA device")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA device"))]
WRITERS = ["thread", "loop", pytest.param("process", marks=pytest.mark.skipif(
    not writer_process.available(), reason="needs memfd_create and fd passing (Linux)"))]


@pytest.mark.parametrize("early", [False, True], ids=["full-chunks", "early-hand-overs"])
@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("device_name", DEVICES)
def test_every_recorded_state_equals_a_copy_taken_in_the_loop(tmp_path, device_name, writer, early):
    """``early``: every third state the chunk being filled is handed over before it is full (``flush()``, what
    ``flush_seconds`` does in a slow loop): its rows are copied on the device into the other buffer, which goes on,
    while the first one's copy to the host and its write run; each chunk file is written several times."""
    device = torch.device(device_name)
    h, dim, n, states = 64, 48, 40, 300
    run = RunWriter.create(
        StoreRoot(tmp_path), writer, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=states, static={"X": np.zeros((n, dim), np.float32), "y": np.ones(n, np.int8)}, attrs={},
        chunk_bytes=h * dim * 4 * 7,  # 7 states a chunk: 42 full chunks and a partial one through 2 buffers
    )
    assert run.chunk_steps == 7
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
    steps = np.arange(states)
    recorder = Recorder(run, shapes, dtypes, device, buffers=2, columns={"step": steps, "t": steps * 0.1},
                        process=writer_process.WriterProcess.start() if writer == "process" else None,
                        loop_submits=writer == "loop")
    generator = torch.Generator(device=device).manual_seed(0)
    W = torch.randn(h, dim, device=device, generator=generator)
    v = torch.randn(h, device=device, generator=generator)
    X = torch.randn(n, dim, device=device, generator=generator)
    copies = []  # the same values, copied on the device in the loop's own stream order
    for _ in range(states):
        if device.type == "cuda":
            torch.cuda._sleep(1_000_000)  # about half a millisecond of device time: the host runs ahead
        output = torch.relu(X @ W.T) @ v
        loss = torch.exp(-output).mean().double()
        recorder.record(W=W, v=v, loss=loss, output=output)
        copies.append([t.clone() for t in (W, v, loss, output)])
        if early and len(copies) % 3 == 0:
            recorder.flush()
        W.mul_(0.999).add_(torch.randn(h, dim, device=device, generator=generator), alpha=1e-3)  # in place, at once
        v.add_(1.0)
    assert recorder.close() == states
    assert (recorder.early_hand_overs > 50) == early
    run.finish("complete")
    ds = open_run(writer, StoreRoot(tmp_path)).load()
    assert ds.attrs["committed_steps"] == states and ds.attrs["status"] == "complete"
    for i, name in enumerate(("W", "v", "loss", "output")):
        expected = torch.stack([c[i] for c in copies]).cpu().numpy()
        np.testing.assert_array_equal(ds[name].values, expected, err_msg=name)
    np.testing.assert_array_equal(ds.step.values, steps)


@pytest.mark.parametrize("device_name", DEVICES)
def test_one_copy_a_state_moves_every_bit_through_the_devices_copy(tmp_path, device_name):
    """On the GPU one ``torch._foreach_copy_`` call a state carries the float64 loss as two float32 halves
    through the device's float32 copy kernel (``copy_carrier``): every bit arrives. The losses are bit
    patterns a float detour would change (NaN payloads, signalling NaNs, -0.0, subnormals, infinities, random
    bits), each a 0-d view at its own offset into one device tensor; ``W`` is random float32 bits (NaNs
    among them). On the CPU (numpy rows, a memcpy) the same patterns check the test itself."""
    device = torch.device(device_name)
    h, dim, n, states = 16, 12, 10, 40
    run = RunWriter.create(
        StoreRoot(tmp_path), "bits", variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=states, static={"X": np.zeros((n, dim), np.float32), "y": np.ones(n, np.int8)}, attrs={},
        chunk_bytes=h * dim * 4 * 7,
    )
    shapes = {"W": (h, dim), "v": (h,), "loss": (), "output": (n,)}
    dtypes = {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32}
    steps = np.arange(states)
    recorder = Recorder(run, shapes, dtypes, device, buffers=2, columns={"step": steps, "t": steps * 0.1})
    rng = np.random.default_rng(7)
    special = [0x7FF0_0000_DEAD_BEEF, 0x7FF8_0000_0000_0001, 0xFFF4_0000_0000_0000, 0x8000_0000_0000_0000, 1,
               0x000F_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000]
    loss_bits = np.concatenate([np.array(special, np.uint64),
                                rng.integers(0, 2**64, states - len(special), dtype=np.uint64)])
    losses = torch.from_numpy(loss_bits.view(np.int64)).to(device).view(torch.float64)
    W_bits = rng.integers(0, 2**32, (states, h, dim), dtype=np.uint32)
    Ws = torch.from_numpy(W_bits.view(np.int32)).to(device).view(torch.float32)
    v, output = torch.zeros(h, device=device), torch.zeros(n, device=device)
    copy_calls = []
    for k in range(states):
        with TorchCalls() as calls:
            recorder.record(W=Ws[k], v=v, loss=losses[k], output=output)
        copy_calls.append(calls.names.count("_foreach_copy_"))
    assert recorder.close() == states
    run.finish("complete")
    if device.type == "cuda":  # (on the CPU the rows are numpy's: no torch copy at all)
        assert copy_calls == [1] * states
    ds = open_run("bits", StoreRoot(tmp_path)).load()
    np.testing.assert_array_equal(ds.loss.values.view(np.uint64), loss_bits)
    np.testing.assert_array_equal(ds.W.values.view(np.uint32), W_bits)


def _config(device: str, writer: str, name: str) -> dict:
    """Long enough to be killed mid-way: minibatch steps, 10 000 on a GPU (launch-bound), 6 000 on the CPU."""
    steps = int(os.environ.get("TRAJSCOPE_TEST_GPU_STEPS", 10000)) if device == "cuda" else 6000
    return {
        "name": name, "seed": 5,
        "data": {"kind": "synthetic", "n": 60, "dim": 12, "mu": 0.1},
        "model": {"width": 24},
        "init": {"kind": "gaussian", "scale": 0.01},
        "loss": {"kind": "exp", "reduction": "mean"},
        "train": {"lr": 0.002, "steps": steps, "batch_size": 20, "device": device},
        "record": {"chunk_mib": 0.02, "writer": writer, "commit_seconds": 0.05},
    }


def _committed(run: str) -> int:
    meta = os.path.join(run, "zarr.json")
    if not os.path.exists(meta):
        return 0
    with open(meta) as f:
        return json.load(f)["attributes"].get("committed_steps", 0)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("device_name", DEVICES)
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, device_name, writer):
    cfg = _config(device_name, writer, "killed")
    steps = cfg["train"]["steps"]
    root = tmp_path / "runs"
    reference = produce(load_config(cfg), root=root, name="reference")
    assert reference.committed_steps == steps + 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "trajscope", "produce", str(tmp_path / "c.yaml"), "--root",
                             str(root), "--name", "killed", "--quiet"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _committed(str(root / "killed.zarr")) < steps // 10:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the producer did not commit in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = open_run("killed", root)
    committed = killed.attrs["committed_steps"]
    assert killed.attrs["status"] == "running" and steps // 10 <= committed < steps + 1, committed
    expected = open_run("reference", root).load()
    np.testing.assert_array_equal(killed.W.values, expected.W.values[:committed])
    result = resume("killed", root=root)
    assert result.status == "complete" and result.committed_steps == steps + 1
    resumed = open_run("killed", root).load()
    for name in ("W", "v", "loss", "output", "step", "t"):
        np.testing.assert_array_equal(resumed[name].values, expected[name].values, err_msg=name)


@pytest.mark.parametrize("loop_submits", [False, True])
@pytest.mark.parametrize("device_name", DEVICES)
def test_the_recording_loop_never_waits_for_the_device(tmp_path, device_name, loop_submits):
    """No host sync in a minibatch step nor in ``record()``: on the GPU the loop runs under
    ``torch.cuda.set_sync_debug_mode("error")``, where anything that waits for the device (a copy from
    pageable memory, ``.item()`` of a device tensor) raises. The states mix dtypes (float32 rows, a float64
    loss) and hand the loss over as a device tensor, as a number in a CPU tensor (what ``ModuleRecorder``
    makes of a Python number) and as a Python number; the recorded values are checked after. With
    ``loop_submits`` (``record.writer: loop``) the loop also asks each chunk's copy whether it is done
    (``Event.query``) and hands it to the store."""
    from trajscope.producer.model import TwoLayerReLU, initialize
    from trajscope.producer.train import gradient_step

    device = torch.device(device_name)
    cfg = load_config(_config(device_name, "thread", "sync"))
    n, dim, width, states = 60, 12, 24, 40
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, dim, generator=generator).to(device)
    y = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(device)
    model = TwoLayerReLU(X, y, cfg.loss)
    state = initialize(cfg.init, width, dim, train_v=True, seed=0, dtype=torch.float32)
    state = type(state)(W=state.W.to(device), v=state.v.to(device))
    run = RunWriter.create(
        StoreRoot(tmp_path), "sync", variables=two_layer_variables(), sizes={"neuron": width, "feature": dim, "sample": n},
        capacity=states, static={"X": X.cpu().numpy(), "y": np.ones(n, np.int8)}, attrs={},
        chunk_bytes=width * dim * 4 * 8)
    steps = np.arange(states)
    recorder = Recorder(run, {"W": (width, dim), "v": (width,), "loss": (), "output": (n,)},
                        {"W": torch.float32, "v": torch.float32, "loss": torch.float64, "output": torch.float32},
                        device, columns={"step": steps, "t": steps * 0.1}, loop_submits=loop_submits)
    losses, kept = [], []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(states):
            pre, out = model.forward(state)
            loss = [model.loss_value(out).double(), torch.tensor(0.25 * step), 0.5 * step][step % 3]
            recorder.record(W=state.W, v=state.v, loss=loss, output=out)
            losses.append(loss.clone() if isinstance(loss, torch.Tensor) else loss)
            kept.append(state.W.clone())
            state = gradient_step(model, state, cfg, step, pre, out)  # a minibatch step (batch_size 20)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert recorder.close() == states
    run.finish("complete")
    ds = open_run("sync", StoreRoot(tmp_path)).load()
    np.testing.assert_array_equal(ds.W.values, torch.stack(kept).cpu().numpy())
    expected = [float(v.item()) if isinstance(v, torch.Tensor) else v for v in losses]
    np.testing.assert_array_equal(ds.loss.values, np.array(expected, np.float64))
