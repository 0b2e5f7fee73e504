"""The recorded trajectory is gradient descent on the stated loss, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest


def numpy_loss_and_gradient(W, v, X, y, kind, reduction):
    """Independent numpy computation of L, ∂L/∂W and ∂L/∂v (loops over neurons, float64)."""
    W, v, X, y = (np.asarray(a, dtype=np.float64) for a in (W, v, X, y))
    n = X.shape[0]
    f = np.array([sum(v[j] * max(X[i] @ W[j], 0.0) for j in range(W.shape[0])) for i in range(n)])
    z = y * f
    if kind == "exp":
        ell, dell = np.exp(-z), -np.exp(-z)
    else:
        ell, dell = np.log1p(np.exp(-z)), -1.0 / (1.0 + np.exp(z))
    R = 1.0 / n if reduction == "mean" else 1.0
    grad_v = np.zeros_like(v)
    grad_W = np.zeros_like(W)
    for j in range(W.shape[0]):
        for i in range(n):
            pre = X[i] @ W[j]
            coef = R * dell[i] * y[i]
            grad_v[j] += coef * max(pre, 0.0)
            if pre > 0:
                grad_W[j] += coef * v[j] * X[i]
    return R * ell.sum(), grad_W, grad_v, f


@pytest.mark.parametrize("kind", ["exp", "logistic"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_recorded_steps_are_gradient_descent(make_run, kind, reduction):
    lr = 0.05 if reduction == "sum" else 1.0
    ds = make_run(
        f"gd-{kind}-{reduction}",
        init={"kind": "gaussian", "scale": 0.3},
        loss={"kind": kind, "reduction": reduction},
        train={"lr": lr, "steps": 30},
    ).load()
    X, y = ds.X.values, ds.y.values
    assert ds.sizes["step"] == 31
    np.testing.assert_array_equal(ds.step.values, np.arange(31))
    np.testing.assert_allclose(ds.t.values, np.arange(31) * lr)
    for k in (0, 7, 29):
        W, v = ds.W.values[k], ds.v.values[k]
        loss, grad_W, grad_v, f = numpy_loss_and_gradient(W, v, X, y, kind, reduction)
        np.testing.assert_allclose(ds.loss.values[k], loss, rtol=1e-5)
        np.testing.assert_allclose(ds.output.values[k], f, rtol=1e-4, atol=1e-6)
        dW = ds.W.values[k + 1].astype(np.float64) - W
        dv = ds.v.values[k + 1].astype(np.float64) - v
        assert np.abs(grad_W).max() > 1e-3  # the check is not vacuous
        scale_W = np.abs(lr * grad_W).max()
        np.testing.assert_allclose(dW, -lr * grad_W, atol=2e-3 * scale_W + 1e-6 * np.abs(W).max())
        np.testing.assert_allclose(dv, -lr * grad_v, atol=2e-3 * np.abs(lr * grad_v).max() + 1e-6 * np.abs(v).max())


def test_float64_runs_match_to_double_precision(make_run):
    ds = make_run("f64", init={"kind": "gaussian", "scale": 0.3}, train={"lr": 0.05, "steps": 5, "dtype": "float64"}).load()
    assert ds.W.dtype == np.float64
    loss, grad_W, grad_v, _ = numpy_loss_and_gradient(ds.W.values[2], ds.v.values[2], ds.X.values, ds.y.values, "exp", "sum")
    np.testing.assert_allclose(ds.W.values[3] - ds.W.values[2], -0.05 * grad_W, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(ds.loss.values[2], loss, rtol=1e-12)


def test_minibatch_sgd_uses_the_documented_batches(make_run):
    ds = make_run("sgd", init={"kind": "gaussian", "scale": 0.3}, train={"lr": 0.05, "steps": 6, "batch_size": 10}).load()
    X, y = ds.X.values.astype(np.float64), ds.y.values
    seed = ds.traj.config["seed"]
    for k in (0, 4):
        rows = np.random.default_rng([seed, k]).choice(30, size=10, replace=False)  # the documented rule
        _, grad_W, grad_v, _ = numpy_loss_and_gradient(ds.W.values[k], ds.v.values[k], X[rows], y[rows], "exp", "sum")
        scale = 30 / 10  # the batch sum is rescaled to estimate the full-batch gradient
        np.testing.assert_allclose(ds.W.values[k + 1] - ds.W.values[k], -0.05 * scale * grad_W,
                                   atol=2e-3 * np.abs(0.05 * scale * grad_W).max())


def test_train_w_only_keeps_v_fixed_at_plus_minus_one(make_run):
    ds = make_run("wonly", train={"train_v": False, "steps": 20}).load()
    v = ds.v.values
    assert set(np.unique(v).tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(v, np.broadcast_to(v[0], v.shape))
    assert not np.array_equal(ds.W.values[0], ds.W.values[-1])


def test_balanced_init_conserves_v2_minus_w2_and_signs(make_run):
    ds = make_run("balanced", init={"kind": "balanced", "scale": 0.01},
                  train={"lr": 0.002, "steps": 400}, data={"n": 30, "dim": 6, "mu": 0.3}).load()
    W, v = ds.W.values.astype(np.float64), ds.v.values.astype(np.float64)
    invariant = v**2 - (W**2).sum(axis=2)
    size = (v**2 + (W**2).sum(axis=2)).max(axis=0)
    assert size.max() > 10 * size.min() or size.max() > 4 * (v[0] ** 2 + (W[0] ** 2).sum(1)).max()  # weights grew
    drift = np.abs(invariant - invariant[0]).max(axis=0) / size
    assert drift.max() < 1e-3, drift.max()
    assert (np.sign(v) == np.sign(v[0])).all()
    # the balanced init makes |v_j| = ||w_j|| at step 0
    np.testing.assert_allclose(np.abs(v[0]), np.linalg.norm(W[0], axis=1), rtol=1e-6)


def test_loss_threshold_stops_early(make_run):
    ds = make_run("stop", init={"kind": "gaussian", "scale": 0.3}, train={"lr": 0.05, "steps": 500, "stop_loss": 5.0})
    assert ds.attrs["status"] == "complete"
    assert ds.sizes["step"] < 501
    assert float(ds.loss[-1]) <= 5.0 < float(ds.loss[-2])


def test_record_every_and_log_schedule(make_run):
    every = make_run("every", train={"steps": 50}, record={"every": 7})
    np.testing.assert_array_equal(every.step.values, [0, 7, 14, 21, 28, 35, 42, 49, 50])
    log = make_run("log", train={"steps": 1000}, record={"schedule": "log", "log_points": 20})
    steps = log.step.values
    assert steps[0] == 0 and steps[-1] == 1000 and (np.diff(steps) > 0).all() and len(steps) <= 21


def test_cpu_runs_are_bit_reproducible(make_run):
    a = make_run("repro-a", init={"kind": "gaussian", "scale": 0.2}).load()
    b = make_run("repro-b", init={"kind": "gaussian", "scale": 0.2}).load()
    np.testing.assert_array_equal(a.W.values, b.W.values)
    np.testing.assert_array_equal(a.v.values, b.v.values)
    c = make_run("repro-c", seed=4, init={"kind": "gaussian", "scale": 0.2}).load()
    assert not np.array_equal(a.W.values, c.W.values)
