"""Every per-step quantity against an independent numpy computation (explicit loops, np.linalg)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from trajscope.analysis import QUANTITIES, alignment, cones, direction_field, geometry, invariants, spectra
from trajscope.analysis.cones import CONES

RUNS = ["small_run", "random_run"]


@pytest.fixture(params=RUNS)
def run(request) -> xr.Dataset:
    return request.getfixturevalue(request.param)


def _np(ds):
    W = ds["W"].values.astype(np.float64)
    v = ds["v"].values.astype(np.float64)
    X = ds["X"].values.astype(np.float64)
    y = ds["y"].values.astype(int)
    return W, v, X, y


def _cos(a, b):
    na, nb = math.sqrt(float(np.dot(a, a))), math.sqrt(float(np.dot(b, b)))
    return float(np.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else float("nan")


def test_results_are_lazy(run):
    for name in ("cone_membership", "singular_values", "target_alignment", "balance", "stable_rank"):
        out = QUANTITIES[name](run)
        assert out.chunks is not None, name


def test_data_geometry_against_loops(run):
    W, v, X, y = _np(run)
    n = len(y)
    xp = sum(X[i] for i in range(n) if y[i] == 1)
    xm = sum(X[i] for i in range(n) if y[i] == -1)
    mu = min(_cos(y[i] * X[i], y[j] * X[j]) for i in range(n) for j in range(n))
    g = geometry.data_geometry(run).compute()
    assert float(g["mu"]) == pytest.approx(mu, abs=1e-12)
    assert bool(g["assumption1"]) == (mu > 0)
    assert float(g["X_max"]) == pytest.approx(max(np.linalg.norm(x) for x in X))
    assert float(g["X_min"]) == pytest.approx(min(np.linalg.norm(x) for x in X))
    assert int(g["n_pos"]) == int((y == 1).sum()) and int(g["n_neg"]) == int((y == -1).sum())
    assert float(g["cos_xpos_xneg"]) == pytest.approx(_cos(xp, xm))
    s = geometry.class_sums(run).compute()
    np.testing.assert_allclose(s.sel(label=1).values, xp, rtol=1e-12)
    np.testing.assert_allclose(geometry.class_centres(run).sel(label=-1).values, xm / (y == -1).sum(), rtol=1e-12)
    G = geometry.gram(run).compute()
    order = list(G["sample"].values)
    assert list(y[order]) == sorted(y, reverse=True)
    for a, i in enumerate(order[:5]):
        for b, j in enumerate(order[-5:]):
            assert G.values[a, len(order) - 5 + b] == pytest.approx(_cos(X[i], X[j]))


def test_alignment_against_loops(run):
    W, v, X, y = _np(run)
    xs = {1: X[y == 1].sum(0), -1: X[y == -1].sum(0)}
    c = alignment.cos_to_class_sums(run).compute()
    tgt = alignment.target_alignment(run).compute()
    mna = alignment.mean_neuron_alignment(run).compute()
    for k in range(0, W.shape[0], max(1, W.shape[0] // 13)):
        for j in range(W.shape[1]):
            for lab in (1, -1):
                assert c.values[k, j, list(c["label"].values).index(lab)] == pytest.approx(_cos(W[k, j], xs[lab]))
            expected = _cos(W[k, j], xs[1 if v[k, j] > 0 else -1]) if v[k, j] != 0 else np.nan
            assert tgt.values[k, j] == pytest.approx(expected, nan_ok=True)
        for lab in (1, -1):
            members = [j for j in range(W.shape[1]) if v[k, j] * lab > 0]
            m = mna.sel(label=lab).isel(step=k)
            if not members:
                assert np.isnan(float(m["mean"]))
                continue
            wbar = np.mean([W[k, j] for j in members], axis=0)
            cs = [_cos(W[k, j], xs[lab]) for j in members]
            assert float(m["mean"]) == pytest.approx(_cos(wbar, xs[lab]))
            assert float(m["min"]) == pytest.approx(min(cs))
            assert float(m["max"]) == pytest.approx(max(cs))
            assert int(m["count"]) == len(members)


def _cone_loop(w, X, y):
    act = [float(np.dot(X[i], w)) > 0 for i in range(len(y))]
    if not any(act):
        return "dead"
    if all(a == (y[i] == 1) for i, a in enumerate(act)):
        return "S+"
    if all(a == (y[i] == -1) for i, a in enumerate(act)):
        return "S-"
    return "other"


def test_cones_against_loops(run):
    # the loop uses the stored float32 values promoted to float64; the kernel works in float32 for
    # float32 runs, so compare on the stored precision (no sample sits within 1e-6 of a boundary here)
    W, v, X, y = _np(run)
    code = cones.cone_membership(run).compute()
    counts = cones.activation_counts(run).compute()
    frac = cones.cone_fractions(run).compute()
    aligned = cones.aligned_fraction(run).compute()
    for k in range(W.shape[0]):
        names = [_cone_loop(W[k, j], X, y) for j in range(W.shape[1])]
        assert [CONES[c] for c in code.values[k]] == names
        for j in range(W.shape[1]):
            assert counts.values[k, j, 0] == sum(1 for i in range(len(y)) if y[i] == 1 and X[i] @ W[k, j] > 0)
            assert counts.values[k, j, 1] == sum(1 for i in range(len(y)) if y[i] == -1 and X[i] @ W[k, j] > 0)
        for c in CONES:
            assert float(frac.sel(cone=c).isel(step=k)) == pytest.approx(names.count(c) / len(names))
        ok = [nm == "dead" or (v[k, j] > 0 and nm == "S+") or (v[k, j] < 0 and nm == "S-") for j, nm in enumerate(names)]
        assert float(aligned.isel(step=k)) == pytest.approx(np.mean(ok))


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_spectra_against_numpy_svd(run, method):
    W, *_ = _np(run)
    s = spectra.singular_values(run, method=method).compute().values
    sr = spectra.stable_rank(run).compute().values
    er = spectra.effective_rank(run).compute().values
    s2 = spectra.spectral_norm_sq(run).compute().values
    f2 = spectra.frobenius_norm_sq(run).compute().values
    for k in range(W.shape[0]):
        ref = np.linalg.svd(W[k], compute_uv=False)
        np.testing.assert_allclose(s[k], ref, rtol=1e-6, atol=1e-7 * ref[0])
        assert s2[k] == pytest.approx(ref[0] ** 2, rel=1e-8)
        assert f2[k] == pytest.approx(np.linalg.norm(W[k], "fro") ** 2, rel=1e-10)
        assert sr[k] == pytest.approx(np.linalg.norm(W[k], "fro") ** 2 / np.linalg.norm(W[k], 2) ** 2, rel=1e-8)
        p = ref / ref.sum()
        p = p[p > 1e-12]
        assert er[k] == pytest.approx(math.exp(-sum(pk * math.log(pk) for pk in p)), rel=1e-5)


def test_the_drift_over_a_step_range_is_the_drift_since_the_runs_first_state(run):
    """``balance_drift`` (and the fused ``step_series``) over a range measured from the range's first state:
    a live series fetched piece by piece (the dashboard's and the API's pattern) restarted at 0 with each
    piece (found by a review). Now from the run's first state, as numpy computes here."""
    from trajscope.analysis.series import step_series

    W, v, X, y = _np(run)
    delta = v.astype(np.float64) ** 2 - np.einsum("kjd,kjd->kj", W.astype(np.float64), W.astype(np.float64))
    want = np.abs(delta - delta[0]).max(axis=1)
    steps = run["step"].values
    for lo in (1, steps.size // 2, steps.size - 1):
        part = slice(int(steps[lo]), None)
        np.testing.assert_allclose(invariants.max_balance_drift(run, part).values, want[lo:], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(step_series(run, part)["max_balance_drift"].values, want[lo:], rtol=1e-9,
                                   atol=1e-14)
        np.testing.assert_allclose(invariants.balance_drift(run, part).values, (delta - delta[0])[lo:], rtol=1e-9,
                                   atol=1e-14)


def test_invariants_against_loops(run):
    W, v, X, y = _np(run)
    b = invariants.balance(run).compute().values
    d = invariants.max_balance_drift(run).compute().values
    flips = invariants.sign_flips(run).compute().values
    for k in range(W.shape[0]):
        ref = [v[k, j] ** 2 - float(np.dot(W[k, j], W[k, j])) for j in range(W.shape[1])]
        np.testing.assert_allclose(b[k], ref, rtol=1e-10, atol=1e-15)
        assert d[k] == pytest.approx(max(abs(ref[j] - (v[0, j] ** 2 - W[0, j] @ W[0, j])) for j in range(W.shape[1])),
                                     abs=1e-12)
    for j in range(W.shape[1]):
        assert flips[j] == sum(1 for k in range(1, W.shape[0]) if np.sign(v[k, j]) != np.sign(v[k - 1, j]))


def test_direction_field_against_loops(run):
    W, v, X, y = _np(run)
    t = run["t"].values
    cfg = run.traj.config["loss"]
    coef = (1.0 / len(y) if cfg["reduction"] == "mean" else 1.0) * (0.5 if cfg["kind"] == "logistic" else 1.0)
    err = direction_field.direction_field_error(run).compute()
    assert err["error"].sizes["step"] == W.shape[0] - 1
    for k in range(0, W.shape[0] - 1, max(1, W.shape[0] // 7)):
        for j in range(W.shape[1]):
            w, w1 = W[k, j], W[k + 1, j]
            u, u1 = w / np.linalg.norm(w), w1 / np.linalg.norm(w1)
            xa = np.zeros(X.shape[1])
            for i in range(len(y)):
                if X[i] @ w > 0:
                    xa += y[i] * X[i]
            pred = coef * v[k, j] / np.linalg.norm(w) * (xa - u * (u @ xa))
            meas = (u1 - u) / (t[k + 1] - t[k])
            ref = np.linalg.norm(meas - pred) / np.linalg.norm(pred) if np.linalg.norm(pred) > 0 else np.nan
            assert err["error"].values[k, j] == pytest.approx(ref, rel=1e-6, nan_ok=True)


def test_direction_field_is_accurate_early(small_run):
    """On a small-init balanced run the prediction holds before the loss moves (a science check)."""
    err = direction_field.direction_field_error(small_run, step=slice(0, 20)).compute()
    assert float(err["median_error"].median()) < 0.05


def test_step_selection_by_value_and_stride(random_run):
    steps = random_run["step"].values  # recorded every 3 steps
    s = spectra.stable_rank(random_run, step=slice(30, 90, 2)).compute()
    expected = [k for k in steps if 30 <= k <= 90][::2]
    assert list(s["step"].values) == expected
    full = spectra.stable_rank(random_run).compute()
    np.testing.assert_allclose(s.values, full.sel(step=expected).values)


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_spectra_of_a_diverged_state_are_nan_not_an_error(method):
    from trajscope.analysis._kernels import singular_values_block

    rng = np.random.default_rng(1)
    W = rng.normal(size=(4, 3, 5))
    W[2, 1, 0] = np.nan
    out = singular_values_block(W, method)
    assert np.isnan(out[2]).all()
    for k in (0, 1, 3):
        np.testing.assert_allclose(out[k], np.linalg.svd(W[k], compute_uv=False), rtol=1e-7)
