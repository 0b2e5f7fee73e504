"""Cases whose answers are known by construction: 2-D cones and t1, μ, t2 and slope, the theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from trajscope.analysis import cones, geometry, phases, theory

# x1 = (1, 0) with y = +1, x2 = (0, 1) with y = -1:
#   S+ = {z1 > 0, z2 ≤ 0}, S- = {z1 ≤ 0, z2 > 0}, S_dead = {z1 ≤ 0, z2 ≤ 0}, other = {z1 > 0, z2 > 0}
X2 = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
Y2 = np.array([1, -1], dtype=np.int8)
P, M, DEAD, OTHER = (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, 1.0)


def handmade(W, v, X, y, steps, lr=0.5, loss=None, config=None, chunk=3) -> xr.Dataset:
    W = np.asarray(W, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    steps = np.asarray(steps, dtype=np.int64)
    loss = np.ones(len(steps)) if loss is None else np.asarray(loss, dtype=np.float64)
    ds = xr.Dataset(
        {"W": (("step", "neuron", "feature"), W), "v": (("step", "neuron"), v), "loss": (("step",), loss),
         "X": (("sample", "feature"), np.asarray(X, np.float32)), "y": (("sample",), np.asarray(y, np.int8))},
        coords={"step": steps, "t": ("step", steps * lr)},
        attrs={"run_id": "hand", "config": config or {"train": {"lr": lr}, "loss": {"kind": "exp", "reduction": "sum"}}},
    )
    return ds.chunk({"step": chunk})


def _trajectory():
    # neuron 0 (v>0): other until step 20, then S+ (its target); at step 60 it strays to "other" once
    # neuron 1 (v<0): always S-                      neuron 2 (v>0): always dead
    # neuron 3 (v<0): S+ (wrong cone) until 30, dead at 30 and 40, then S- (its target)
    n0 = [OTHER, OTHER, P, P, P, P, OTHER, P, P]
    n3 = [P, P, P, DEAD, DEAD, M, M, M, M]
    W = [[n0[k], M, DEAD, n3[k]] for k in range(9)]
    v = [[1.0, -1.0, 1.0, -1.0]] * 9
    steps = np.arange(9) * 10  # recorded every 10 steps
    return W, v, steps


def test_cone_membership_2d_by_construction():
    W, v, steps = _trajectory()
    ds = handmade(W, v, X2, Y2, steps)
    code = cones.cone_membership(ds).compute().values
    names = [[cones.CONES[c] for c in row] for row in code]
    assert [r[0] for r in names] == ["other", "other", "S+", "S+", "S+", "S+", "other", "S+", "S+"]
    assert {r[1] for r in names} == {"S-"} and {r[2] for r in names} == {"dead"}
    assert [r[3] for r in names] == ["S+", "S+", "S+", "dead", "dead", "S-", "S-", "S-", "S-"]
    # on the boundary: z = (1, 0) is in S+ (<x2, z> = 0 is "not active"), z = (0, 0) is dead
    edge = handmade([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]], [[1, 1, -1]], X2, Y2, [0])
    assert [cones.CONES[c] for c in cones.cone_membership(edge).compute().values[0]] == ["S+", "dead", "S-"]
    counts = cones.activation_counts(ds).compute()
    assert counts.sel(step=0, neuron=0).values.tolist() == [1, 1]
    frac = cones.aligned_fraction(ds).compute().values
    np.testing.assert_allclose(frac, [0.5, 0.5, 0.75, 1, 1, 1, 0.75, 1, 1])


def test_t1_2d_by_construction():
    W, v, steps = _trajectory()
    ds = handmade(W, v, X2, Y2, steps, lr=0.5)
    r = phases.t1(ds).compute()
    # last misaligned recorded state is step 60 (neuron 0 in "other"), so t1 = 70, t = 70 * 0.5
    assert float(r["t1_step"]) == 70 and float(r["t1_time"]) == 35.0
    # without the stray at step 60: everything aligned from step 30 on
    W2 = [row.copy() for row in W]
    W2[6] = [P, M, DEAD, M]
    assert float(phases.t1(handmade(W2, v, X2, Y2, steps)).compute()["t1_step"]) == 30
    # restricted to steps ≤ 50 the stray is outside the selection
    assert float(phases.t1(ds, step=slice(0, 50)).compute()["t1_step"]) == 30
    # never aligned at the end: not reached
    W3 = [row.copy() for row in W]
    W3[8] = [OTHER, M, DEAD, M]
    assert math.isnan(float(phases.t1(handmade(W3, v, X2, Y2, steps)).compute()["t1_step"]))


def test_t1_follows_the_sign_of_v():
    # a neuron sitting in S+ is aligned while v > 0 and misaligned after v turns negative (gaussian init)
    W = [[P]] * 6
    v = [[1.0], [1.0], [1.0], [-1.0], [-1.0], [1.0]]
    ds = handmade(W, v, X2, Y2, np.arange(6))
    assert float(phases.t1(ds).compute()["t1_step"]) == 5
    assert cones.in_target_or_dead(ds).compute().values[:, 0].tolist() == [True, True, True, False, False, True]


def test_mu_on_constructed_data():
    # y_i x_i at angles 0°, 25° and 70° (radii differ): μ = cos 70° exactly
    ang = np.radians([0.0, 25.0, 70.0])
    yx = np.stack([np.cos(ang), np.sin(ang)], axis=1) * np.array([[1.0], [3.0], [0.5]])
    y = np.array([1, -1, 1], dtype=np.int8)
    X = yx * y[:, None]
    ds = handmade(np.zeros((1, 1, 2)), [[1.0]], X, y, [0])
    assert float(geometry.separation_mu(ds)) == pytest.approx(math.cos(math.radians(70)), abs=1e-6)
    # 100° apart: not separated
    ang2 = np.radians([0.0, 100.0])
    X2b = np.stack([np.cos(ang2), np.sin(ang2)], axis=1)
    ds2 = handmade(np.zeros((1, 1, 2)), [[1.0]], X2b, [1, 1], [0])
    assert float(geometry.separation_mu(ds2)) == pytest.approx(math.cos(math.radians(100)), abs=1e-6)
    assert not bool(geometry.data_geometry(ds2)["assumption1"])


def test_t2_and_slope_on_a_known_loss_curve():
    # L = 10 until t = 5, then L = 10 / (1 + (t - 5))^2: t2 at the first state with L ≤ 9.5; slope -2
    steps = np.arange(0, 20001, 10)
    t = steps * 0.01
    L = np.where(t <= 5, 10.0, 10.0 / (1 + np.maximum(t - 5, 0)) ** 2)
    ds = handmade(np.ones((len(steps), 1, 2)), np.ones((len(steps), 1)), X2, Y2, steps, lr=0.01, loss=L, chunk=64)
    r = phases.phases(ds).compute()
    first = int(steps[np.argmax(L <= 9.5)])
    assert float(r["t2_step"]) == first and float(r["t2_time"]) == pytest.approx(first * 0.01)
    # the fit uses t - t2 with the empirical t2 (slightly after 5), over the last decade: close to -2
    assert float(r["post_t2_slope"]) == pytest.approx(-2.0, abs=0.05)
    # a loss that never drops 5 %: t2 and the slope are not reached
    flat = handmade(np.ones((5, 1, 2)), np.ones((5, 1)), X2, Y2, np.arange(5), loss=[1.0, 0.99, 0.98, 0.97, 0.96])
    r2 = phases.phases(flat).compute()
    assert math.isnan(float(r2["t2_step"])) and math.isnan(float(r2["post_t2_slope"]))


# Worked example for the theory. Data (n = 4, D = 2):
#   x1 = (1, 0), x2 = (0.6, 0.8) with y = +1;  x3 = (-1, 0), x4 = (-1.2, -1.6) with y = -1
#   y_i x_i = (1,0), (0.6,0.8), (1,0), (1.2,1.6): μ = 0.6, X_min = 1, X_max = 2
#   x+ = (1.6, 0.8), |x+|² = 3.2;  x- = (-2.2, -1.6), |x-|² = 7.4
#   ζ1 = min_i cos² = min(0.8 [all vs x+], 2.2²/7.4, 2.6²/7.4) = 4.84/7.4
#   init (ε = 1e-3, balanced, h = 4): w = ε(1,0) v>0, ε(0,1) v<0, ε(-1,-1) v>0, ε(1,1) v<0
#   ζ2: max(cos(w3, x-) = 3.8/√(2·7.4), cos(w4, x+) = 2.4/√(2·3.2)) = 3.8/√14.8 → ζ2 = 1 - 14.44/14.8
#   t1 scale (sum) = log 4 / √0.6;  α = 0.6² / 64;  t2 scale (sum) = (1/4) log(1 / (2 · 1e-3))
#   stable-rank bound = 2 + 4 √4 (2 ε²) / ε / ||W||_2² = 2 + 16 ε / ||W||_2²
#   loss 4, 4, 3.9, 3, 2, 1 at steps 0..5 with η = 0.5: t2 = step 3 (t = 1.5), L(t2) = 3
#   envelope at step 5 (t = 2.5): 3 / (3 α · 1 + 1)
XT = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [-1.2, -1.6]])
YT = np.array([1, 1, -1, -1], dtype=np.int8)
EPS = 1e-3


def _theory_run(reduction="sum", kind="balanced"):
    w0 = EPS * np.array([[1, 0], [0, 1], [-1, -1], [1, 1]], dtype=np.float64)
    v0 = np.array([1, -1, 1, -1]) * np.linalg.norm(w0, axis=1)
    W = np.repeat(w0[None], 6, axis=0)
    V = np.repeat(v0[None], 6, axis=0)
    cfg = {"model": {"width": 4}, "init": {"kind": kind, "scale": EPS}, "loss": {"kind": "exp", "reduction": reduction},
           "train": {"lr": 0.5}}
    ds = handmade(W, V, XT, YT, np.arange(6), lr=0.5, loss=[4, 4, 3.9, 3, 2, 1], config=cfg)
    return ds.assign(W=ds["W"].astype(np.float64), X=ds["X"].astype(np.float64))


def test_theory_worked_example():
    ds = _theory_run()
    th = theory.theory(ds)
    assert float(th["zeta1"]) == pytest.approx(4.84 / 7.4, rel=1e-6)
    assert float(th["zeta2"]) == pytest.approx(1 - 14.44 / 14.8, rel=1e-5)
    assert float(th["t1_scale_time"]) == pytest.approx(math.log(4) / math.sqrt(0.6), rel=1e-6)
    assert float(th["t1_scale_step"]) == pytest.approx(math.log(4) / math.sqrt(0.6) / 0.5, rel=1e-6)
    assert math.isnan(float(th["t1_bound_time"])) and th["t1_bound_time"].attrs["status"].startswith("not computed")
    assert float(th["envelope_alpha"]) == pytest.approx(0.36 / 64, rel=1e-6)
    assert float(th["t2_scale_time"]) == pytest.approx(0.25 * math.log(500), rel=1e-9)
    assert all(th[k].attrs["kind"] == "theory" for k in th.data_vars)
    env = theory.loss_envelope(ds).compute().values
    assert np.isnan(env[:3]).all()
    assert env[3] == pytest.approx(3.0)
    assert env[5] == pytest.approx(3 / (3 * 0.36 / 64 * 1.0 + 1), rel=1e-9)
    # a window of states is where the envelope is evaluated, not where t2 is found (found by a review: a zoomed
    # dashboard chart's envelope came from the window's own t2)
    np.testing.assert_array_equal(theory.loss_envelope(ds, slice(4, 5)).compute().values, env[4:6])
    srb = theory.stable_rank_bound(ds).compute().values
    s2 = np.linalg.norm(ds["W"].values[0], 2) ** 2
    assert srb[0] == pytest.approx(2 + 16 * EPS / s2, rel=1e-6)


def test_theory_mean_convention_and_failed_assumptions():
    mean = theory.theory(_theory_run("mean"))
    assert float(mean["t1_scale_time"]) == pytest.approx(4 * math.log(4) / math.sqrt(0.6), rel=1e-6)
    assert float(mean["t2_scale_time"]) == pytest.approx(math.log(500), rel=1e-9)
    gauss = theory.theory(_theory_run(kind="gaussian"))
    assert gauss["t2_scale_time"].attrs["status"].startswith("approximate")
    # μ ≤ 0: the scales that need μ say so instead of a number
    bad = _theory_run().assign(X=(("sample", "feature"), np.array([[1.0, 0], [0, 1.0], [-1, 0], [0, 1.0]])))
    th = theory.theory(bad)
    for k in ("t1_scale_time", "envelope_alpha", "t2_scale_time", "zeta1", "zeta2", "stable_rank_limit"):
        assert math.isnan(float(th[k])) and th[k].attrs["status"].startswith("assumption fails"), k
    assert np.isfinite(float(th["epsilon"]))  # the init scale is not a claim about the data
    bound = theory.stable_rank_bound(bad)
    assert bound.attrs["status"].startswith("assumption fails") and np.isnan(bound.values).all()
    # minibatch SGD: outside the theorems' gradient flow (the data geometry stays)
    sgd = _theory_run()
    sgd.attrs["config"] = {**sgd.attrs["config"], "train": {"lr": 0.5, "batch_size": 2}}
    th = theory.theory(sgd)
    for k in ("t1_scale_time", "t2_scale_time", "envelope_alpha", "stable_rank_limit"):
        assert math.isnan(float(th[k])) and th[k].attrs["status"].startswith("not applicable: minibatch SGD"), k
    assert np.isfinite(float(th["zeta1"])) and np.isfinite(float(th["zeta2"]))
    assert theory.loss_envelope(bad).attrs["status"].startswith("not applicable: μ > 0")
    # missing config: "unknown", not a crash
    bare = _theory_run()
    bare.attrs = {}
    th = theory.theory(bare)
    assert th["t1_scale_time"].attrs["status"].startswith("unknown")
    assert np.isfinite(float(th["zeta1"]))
