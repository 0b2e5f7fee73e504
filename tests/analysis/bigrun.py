"""Write a large run through the real store writer, fast (a procedural trajectory, not training).

Used by the bounded-memory test and by ``bench/analysis_throughput.py``. The trajectory is shaped
like a small-init run: neurons rotate from random directions towards ``±x±`` while their norms grow.
"""

from __future__ import annotations

import numpy as np

from trajscope.store import RunWriter, StoreRoot
from trajscope.producer.two_layer import variables as two_layer_variables


def write_big_run(root: str, run_id: str, *, steps: int, h: int, D: int, n: int = 64, lr: float = 1e-3,
                  chunk_mib: float = 8.0, seed: int = 0) -> int:
    """Create ``run_id`` under ``root`` with ``steps`` recorded states; returns the bytes of ``W``."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    y = np.where(np.arange(n) % 2 == 0, 1, -1).astype(np.int8)
    X = (y[:, None] * (u + 0.3 * rng.normal(size=(n, D)) / np.sqrt(D))).astype(np.float32)
    W0 = rng.normal(size=(h, D)) / np.sqrt(D) * 1e-4
    sign = rng.choice([-1.0, 1.0], size=h)
    target = sign[:, None] * u[None, :]
    config = {"model": {"width": h}, "init": {"kind": "balanced", "scale": 1e-4},
              "loss": {"kind": "exp", "reduction": "sum"}, "train": {"lr": lr, "train_v": True, "steps": steps - 1}}
    writer = RunWriter.create(StoreRoot(root), run_id, variables=two_layer_variables("float32"),
                              sizes={"neuron": h, "feature": D, "sample": n}, capacity=steps,
                              static={"X": X, "y": y}, attrs={"config": config, "status": "running"},
                              chunk_bytes=int(chunk_mib * 2**20))
    try:
        c = writer.chunk_steps
        for start in range(0, steps, c):
            k = np.arange(start, min(steps, start + c))
            a = (1 - np.exp(-k / (0.1 * steps)))[:, None, None]
            g = np.exp(8 * k / steps)[:, None, None]
            W = (((1 - a) * W0[None] + a * 1e-4 * target[None]) * g).astype(np.float32)
            v = (sign[None, :] * np.linalg.norm(W, axis=2)).astype(np.float32)
            loss = np.full(len(k), float(n)) / (1 + k / steps)  # an O(1/t) decay
            writer.write_block(start, {"W": W, "v": v, "loss": loss.astype(np.float64),
                                       "output": np.zeros((len(k), n), np.float32), "step": k.astype(np.int64),
                                       "t": (k * lr).astype(np.float64)})
            writer.commit(int(k[-1]) + 1)
        writer.finish("complete")
    except BaseException:
        writer.finish("failed", error="bigrun writer failed")
        raise
    return steps * h * D * 4
