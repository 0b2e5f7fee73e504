"""Test helpers of the analysis: a small numpy gradient-descent simulator of the paper's model.

It is written independently of ``trajscope.producer`` (plain loops over the formulas of DESIGN §2) and
returns datasets shaped like ``open_run``'s (dims ``step, neuron, feature, sample``, chunked by step).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr


def separated_data(n: int = 30, D: int = 6, spread: float = 0.4, seed: int = 0, frac_pos: float = 0.5):
    """Well-separated data: ``y_i x_i = u + noise`` lies in a narrow cone around ``u`` (so ``μ > 0``)."""
    rng = np.random.default_rng(seed)
    u = np.zeros(D)
    u[0] = 1.0
    z = u + spread * rng.normal(size=(n, D)) / np.sqrt(D)
    z *= rng.uniform(0.5, 2.0, size=(n, 1))
    n_pos = int(round(frac_pos * n))
    y = np.array([1] * n_pos + [-1] * (n - n_pos), dtype=np.int8)
    rng.shuffle(y)
    return (y[:, None] * z).astype(np.float32), y


def simulate(
    X: np.ndarray,
    y: np.ndarray,
    *,
    h: int = 8,
    scale: float = 1e-3,
    lr: float = 1e-2,
    steps: int = 200,
    seed: int = 1,
    init: str = "balanced",
    loss: str = "exp",
    reduction: str = "sum",
    record_every: int = 1,
    train_v: bool = True,
    chunk: int = 16,
    dtype=np.float32,
    run_id: str = "sim",
) -> xr.Dataset:
    """Full-batch gradient descent on ``L = R Σ_i ℓ(y_i f(x_i))``, recorded every ``record_every`` steps."""
    rng = np.random.default_rng(seed)
    n, D = X.shape
    Xd = X.astype(np.float64)
    yd = y.astype(np.float64)
    if init == "balanced":
        W = scale * rng.normal(0.0, 1.0 / np.sqrt(D), size=(h, D))
        v = rng.choice([-1.0, 1.0], size=h) * np.linalg.norm(W, axis=1)
    else:
        W = rng.normal(0.0, scale, size=(h, D))
        v = rng.normal(0.0, scale, size=h)
    R = 1.0 if reduction == "sum" else 1.0 / n
    rec = {"W": [], "v": [], "loss": [], "output": [], "step": []}
    for k in range(steps + 1):
        P = Xd @ W.T
        H = np.maximum(P, 0.0)
        f = H @ v
        m = yd * f
        if loss == "exp":
            ell = np.exp(-m)
            dl = -yd * np.exp(-m)
        else:
            ell = np.log1p(np.exp(-m))
            dl = -yd / (1.0 + np.exp(m))
        if k % record_every == 0:
            rec["W"].append(W.copy())
            rec["v"].append(v.copy())
            rec["loss"].append(R * ell.sum())
            rec["output"].append(f.copy())
            rec["step"].append(k)
        if k == steps:
            break
        g = R * dl
        grad_v = H.T @ g
        grad_W = ((g[:, None] * (P > 0)) * v[None, :]).T @ Xd
        W = W - lr * grad_W
        if train_v:
            v = v - lr * grad_v
    step = np.array(rec["step"], dtype=np.int64)
    ds = xr.Dataset(
        {
            "W": (("step", "neuron", "feature"), np.array(rec["W"], dtype=dtype)),
            "v": (("step", "neuron"), np.array(rec["v"], dtype=dtype)),
            "loss": (("step",), np.array(rec["loss"], dtype=np.float64)),
            "output": (("step", "sample"), np.array(rec["output"], dtype=np.float32)),
            "X": (("sample", "feature"), X.astype(np.float32)),
            "y": (("sample",), y.astype(np.int8)),
        },
        coords={"step": step, "t": ("step", step * lr)},
        attrs={
            "run_id": run_id,
            "status": "complete",
            "committed_steps": len(step),
            "config": {
                "model": {"width": h},
                "init": {"kind": init, "scale": scale},
                "loss": {"kind": loss, "reduction": reduction},
                "train": {"lr": lr, "train_v": train_v, "steps": steps},
            },
        },
    )
    return ds.chunk({"step": chunk})


@pytest.fixture(scope="session")
def small_run() -> xr.Dataset:
    """A balanced, small-init run that aligns and then converges (sum exp loss)."""
    X, y = separated_data(n=24, D=5, spread=0.5, seed=3)
    return simulate(X, y, h=10, scale=1e-4, lr=2e-3, steps=1500, seed=4)


@pytest.fixture(scope="session")
def random_run() -> xr.Dataset:
    """A gaussian-init, mean-loss run on unseparated random data with a stride in the recording."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(20, 7)).astype(np.float32)
    y = np.where(rng.normal(size=20) > 0, 1, -1).astype(np.int8)
    return simulate(X, y, h=9, scale=0.3, lr=5e-2, steps=120, seed=5, init="gaussian",
                    reduction="mean", record_every=3, chunk=7)


@pytest.fixture(scope="session")
def real_root(tmp_path_factory):
    """A store root with real produced runs (quickstart-sized): ``img`` (D = 16) and ``plane`` (toy2d)."""
    producer = pytest.importorskip("trajscope.producer")
    root = tmp_path_factory.mktemp("runs")
    producer.produce({"data": {"kind": "synthetic", "n": 40, "dim": 16, "mu": 0.2}, "model": {"width": 20},
                      "init": {"kind": "balanced", "scale": 1e-4}, "train": {"lr": 2e-3, "steps": 400}},
                     root=str(root), name="img")
    producer.produce({"data": {"kind": "toy2d", "n": 20}, "model": {"width": 10},
                      "init": {"kind": "balanced", "scale": 1e-3}, "train": {"lr": 5e-3, "steps": 300}},
                     root=str(root), name="plane")
    return root


@pytest.fixture(scope="session")
def real_run(real_root):
    from trajscope.store import open_run

    return open_run("img", root=str(real_root))
