"""The recorder pipeline with an asynchronous staging step (the GPU path's logic, emulated on the CPU)."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from trajscope.producer.recorder import HostStaging, Recorder
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.producer.two_layer import variables as two_layer_variables


class DeferredStaging(HostStaging):
    """Like CudaStaging: separate host buffers, filled later by another thread; ``wait`` blocks on it."""

    def __init__(self):
        self.copies = 0

    def host_buffers(self, device):
        return {n: torch.full_like(t, -7) for n, t in device.items()}, None

    def start_copy(self, slot):
        done = threading.Event()
        slot.event = done

        def copy_later():
            time.sleep(0.01)
            for name, tensor in slot.device.items():
                slot.host[name].copy_(tensor)
            self.copies += 1
            done.set()

        threading.Thread(target=copy_later, daemon=True).start()

    def wait(self, slot):
        assert slot.event.wait(10)


def test_async_staging_keeps_every_state_intact(tmp_path):
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
    recorder = Recorder(writer, shapes, dtypes, torch.device("cpu"), buffers=2, staging=staging)
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
