"""How each claim is read (issue 14) on small constructed runs, checked against direct numpy.

t1 reached / not reached / undefined with the closest state's figures; the cones' existence by LP; the
O(1/t) envelope test where the theorem applies; W-only runs; the ζ1 and ζ2 readings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from trajscope.analysis import separability, theory
from trajscope.analysis.phases import t1_text
from trajscope.analysis.summary import summary, summary_rows

# two samples with μ = cos((1, 0), (0.6, -0.8)) = 0.6: x1 = (1, 0) with y = +1, x2 = (-0.6, 0.8) with y = -1
X2 = np.array([[1.0, 0.0], [-0.6, 0.8]])
Y2 = np.array([1, -1], dtype=np.int8)
IN_S_POS, IN_S_NEG = (1.0, -1.0), (-1.0, 1.0)  # <x1,·> > 0 ≥ <x2,·>  and  <x2,·> > 0 ≥ <x1,·>


def run(W, v, X, y, *, loss=None, lr=1.0, config=None, chunk=4) -> xr.Dataset:
    W = np.asarray(W, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    steps = np.arange(W.shape[0], dtype=np.int64)
    loss = np.ones(len(steps)) if loss is None else np.asarray(loss, dtype=np.float64)
    base = {"train": {"lr": lr, "train_v": True}, "loss": {"kind": "exp", "reduction": "sum"},
            "init": {"kind": "balanced", "scale": 1.0}}
    for section, fields in (config or {}).items():
        base[section] = {**base.get(section, {}), **fields}
    ds = xr.Dataset(
        {"W": (("step", "neuron", "feature"), W), "v": (("step", "neuron"), v), "loss": (("step",), loss),
         "X": (("sample", "feature"), np.asarray(X, np.float64)), "y": (("sample",), np.asarray(y, np.int8))},
        coords={"step": steps, "t": ("step", steps * lr)},
        attrs={"run_id": "constructed", "config": base},
    )
    return ds.chunk({"step": chunk})


def np_cone(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> str:
    a = X @ w > 0
    if not a.any():
        return "dead"
    if (a == (y > 0)).all():
        return "S+"
    if (a == (y < 0)).all():
        return "S-"
    return "other"


def np_agreement(X, y, w, v) -> float:
    a = X @ w > 0
    target = 0.0 if v == 0 else float(np.mean(a == ((y > 0) if v > 0 else (y < 0))))
    return max(target, float(np.mean(~a)))


# ------------------------------------------------------------------------------------------------ t1


def test_t1_undefined_when_no_neuron_ever_enters_a_cone():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((7, 3))
    y = np.array([1, 1, 1, -1, -1, -1, -1], dtype=np.int8)
    v = np.array([1.0, -1.0, 1.0, -1.0, 1.0])
    steps, h = 9, len(v)
    W = np.empty((steps, h, 3))
    for k in range(steps):
        for j in range(h):  # rejection sampling: every neuron is "other" at every state
            while True:
                w = rng.standard_normal(3)
                if np_cone(X, y, w) == "other":
                    W[k, j] = w
                    break
    s = summary(run(W, np.repeat(v[None], steps, 0), X, y))
    assert math.isnan(float(s["t1_step"])) and s["t1_step"].attrs["status"] == "undefined"
    assert float(s["in_cone_fraction_max"]) == 0 and float(s["aligned_fraction_max"]) == 0
    agree = np.array([[np_agreement(X, y, W[k, j], v[j]) for j in range(h)] for k in range(steps)])
    best = int(np.argmax(agree.mean(axis=1)))
    assert float(s["cone_agreement_best"]) == pytest.approx(agree.mean(axis=1).max(), abs=1e-12)
    assert float(s["cone_agreement_best_step"]) == best
    assert float(s["cone_agreement_min_at_best"]) == pytest.approx(agree[best].min(), abs=1e-12)
    text = t1_text(s)
    assert text.startswith("undefined (no neuron ever enters a cone")
    assert f"step {best}" in text and f"{100 * agree[best].mean():.1f} %" in text
    row = next(r for r in summary_rows(s) if r["quantity"] == "t1 alignment" and r["unit"] == "steps")
    assert row["measured"] == text and "not reached" not in row["measured"]


def test_t1_not_reached_and_reached():
    # neuron 0 (v>0) in S+ until the last state, where it strays to "other": not reached
    other = (1.0, 2.0)
    W = [[IN_S_POS, IN_S_NEG]] * 5 + [[other, IN_S_NEG]]
    v = [[1.0, -1.0]] * 6
    s = summary(run(W, v, X2, Y2))
    assert s["t1_step"].attrs["status"] == "not reached"
    assert float(s["aligned_fraction_max"]) == 1.0 and float(s["in_cone_fraction_max"]) == 1.0
    assert t1_text(s).startswith("not reached (the last recorded state is not all aligned); closest state: step 0")
    # aligned from step 2 on: reached, plain step
    W = [[other, IN_S_NEG]] * 2 + [[IN_S_POS, IN_S_NEG]] * 4
    s = summary(run(W, v, X2, Y2))
    assert float(s["t1_step"]) == 2 and s["t1_step"].attrs["status"] == "reached" and t1_text(s) == "step 2"


def test_cone_margins_by_linear_programming():
    # x1 = (1, 0) positive, x2 = (0, 1) negative: S+ ∋ (1, -1) (margin 1), S- ∋ (-1, 1), S_dead ∋ (-1, -1)
    two = run([[[1.0, 1.0]]], [[1.0]], [[1.0, 0.0], [0.0, 1.0]], [1, -1])
    m = separability.cone_margins(two)
    assert float(m["S_pos_margin"]) == pytest.approx(1.0) and float(m["S_neg_margin"]) == pytest.approx(1.0)
    assert float(m["dead_margin"]) == pytest.approx(2.0)  # max -(z1 + z2) over z ≤ 0, |z| ≤ 1
    assert m.attrs["nonempty_S_pos"] and m.attrs["nonempty_S_neg"] and m.attrs["nonempty_dead"]
    # XOR-like, centred: positives ±e1, negatives ±e2: no hyperplane through 0 separates them, nothing dies
    xor = run([[[1.0, 1.0]]], [[1.0]], [[1.0, 0], [-1.0, 0], [0, 1.0], [0, -1.0]], [1, 1, -1, -1])
    m = separability.cone_margins(xor)
    assert not (m.attrs["nonempty_S_pos"] or m.attrs["nonempty_S_neg"] or m.attrs["nonempty_dead"])
    assert "S+ is empty" in separability.cone_condition_text(m)


def test_centred_data_rounded_to_float32_have_no_dead_margin():
    """Centred in float64, stored as float32 (as the producer stores X), the data no longer sum to 0 and the
    LP found a tiny S_dead margin, which the report read as "S_dead holds directions that are not orthogonal to
    every sample" (found by a review, on Fig. 5's centred MNIST). A margin within the rounding of the stored
    data is 0; a real one (uncentred data, all in a half-space) still counts."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(30, 10)))[0]  # a 10-D subspace of 30 dims (not along the axes)
    X = rng.normal(size=(2000, 10)) @ basis.T
    X -= X.mean(axis=0)
    y = np.where(rng.random(2000) < 0.5, 1, -1)
    exact = separability.cone_margins(run(np.zeros((1, 1, 30)), [[1.0]], X, y))
    assert abs(float(exact["dead_margin"])) < 1e-12 and not exact.attrs["nonempty_dead"]  # float64: none
    ds = run(np.zeros((1, 1, 30)), [[1.0]], X, y).assign(X=(("sample", "feature"), X.astype(np.float32)))
    stored = ds["X"].values.astype(np.float64)
    assert np.abs(stored.sum(axis=0)).max() > 1e-8  # not centred once rounded
    m = separability.cone_margins(ds)
    assert 0 < float(m["dead_margin"]) < m.attrs["margin_tolerance"] and not m.attrs["nonempty_dead"]
    assert "only directions orthogonal to every sample" in separability.cone_condition_text(m)
    shifted = ds.assign(X=ds["X"] + np.float32(0.05))  # all samples leaning one way: a real dead direction
    assert separability.cone_margins(shifted).attrs["nonempty_dead"]
    # a small real S± margin stays non-empty (found by a review: the sum's tolerance had been applied to the
    # S± margins, minima over the samples, and called a margin of 1e-5 "empty")
    lean = np.where(y > 0, 1.0, -1.0) * 1e-5 * np.abs(X).max()  # ±1e-5 along e1: z = e1 separates them
    thin = ds.assign(X=(("sample", "feature"), np.c_[lean, X[:, 1:]].astype(np.float32)))
    m = separability.cone_margins(thin)
    assert 0 < float(m["S_pos_margin"]) and m.attrs["nonempty_S_pos"] and m.attrs["nonempty_S_neg"], dict(m.attrs)


def test_centred_data_with_negative_mu_still_have_both_cones():
    """μ > 0 is sufficient for S± ≠ ∅, not necessary: centred synthetic data with μ < 0 keep both cones."""
    from trajscope.producer.config import load_config
    from trajscope.producer.data import build_dataset

    with pytest.warns(UserWarning, match="data.center changed μ"):
        X, y, info = build_dataset(load_config({"data": {"n": 20, "dim": 5, "mu": 0.07, "positive_fraction": 0.6,
                                                         "center": True}}))
    assert info["mu"] < 0 and info["mu_requested"] == 0.07
    m = separability.cone_margins(run(np.zeros((1, 1, 5)), [[1.0]], X, y))
    assert m.attrs["nonempty_S_pos"] and m.attrs["nonempty_S_neg"]
    assert not m.attrs["nonempty_dead"]  # centred: Σ_i <x_i, z> = 0 leaves only directions orthogonal to all
    # an independent witness: a perceptron through the origin finds z with y_i <x_i, z> > 0 for all i, so
    # z ∈ S+ and -z ∈ S-, although μ < 0 (the μ > 0 witness Σ_i y_i x_i/||x_i|| need not work here)
    z = np.zeros(X.shape[1])
    for _ in range(100_000):
        bad = np.flatnonzero(y * (X @ z) <= 0)
        if bad.size == 0:
            break
        z += y[bad[0]] * X[bad[0]]
    assert np_cone(X, y, z) == "S+" and np_cone(X, y, -z) == "S-"


# ------------------------------------------------------------------------------------------------ O(1/t)


def _aligned_run(loss, config=None, X=X2, y=Y2):
    n = len(loss)
    return run([[IN_S_POS, IN_S_NEG]] * n, [[1.0, -1.0]] * n, X, y, loss=loss, config=config)


def np_envelope(loss, t, alpha, drop=0.05):
    loss = np.asarray(loss, float)
    k2 = int(np.flatnonzero(loss <= (1 - drop) * loss[0])[0])
    L2, t2 = loss[k2], t[k2]
    env = np.where(t >= t2, L2 / (L2 * alpha * (t - t2) + 1.0), np.nan)
    return env, k2


ALPHA2 = (0.6 * 1.0) ** 2 / (32 * 1.0)  # (μ X_min)² / (32 X_max) for X2


def test_rate_holds_when_the_loss_stays_under_the_envelope():
    t = np.arange(12, dtype=float)
    base = [2.0, 2.0, 1.8]
    env, k2 = np_envelope(base + [1.0] * 9, t, ALPHA2)
    loss = np.array(base + list(0.5 * env[3:]))  # half the envelope after t2 (= step 2)
    s = summary(_aligned_run(loss))
    ratio = np.nanmax((loss / np_envelope(loss, t, ALPHA2)[0])[t > 2])
    assert k2 == 2 and float(s["t2_step"]) == 2
    assert float(s["envelope_ratio_max"]) == pytest.approx(ratio, rel=1e-12) and ratio < 1
    assert s["envelope_ratio_max"].attrs["verdict"] == "holds"
    assert float(s["envelope_alpha"]) == pytest.approx(ALPHA2)
    rows = {r["quantity"]: r for r in summary_rows(s)}
    assert rows["O(1/t): max L/envelope after t2"]["measured"].endswith("(holds)")
    assert "description" in rows["post-t2 log-log slope (description)"]["note"]


def test_rate_fails_when_the_loss_stalls_above_the_envelope():
    t = np.arange(12, dtype=float)
    loss = np.array([2.0, 2.0, 1.8] + [1.79] * 9)  # falls 5 %, then stalls: the O(1/t) envelope overtakes it
    s = summary(_aligned_run(loss))
    env = np_envelope(loss, t, ALPHA2)[0]
    assert float(s["envelope_ratio_max"]) == pytest.approx(np.nanmax((loss / env)[t > 2]), rel=1e-12)
    assert np.nanmax(loss / env) > 1
    assert s["envelope_ratio_max"].attrs["verdict"] == "fails"


@pytest.mark.parametrize("change,needle", [
    ({"X": [[1.0, 0.0], [0.6, 0.8]]}, "μ > 0"),  # y2 x2 = (-0.6, -0.8): μ = -0.6
    ({"config": {"train": {"batch_size": 1}}}, "minibatch SGD"),
    ({"config": {"train": {"train_v": False}}}, "v is fixed"),
])
def test_rate_not_applicable_where_a_hypothesis_fails(change, needle):
    loss = np.array([2.0, 2.0, 1.8, 1.0, 0.5])
    ds = _aligned_run(loss, config=change.get("config"), X=np.array(change.get("X", X2)))
    s = summary(ds)
    assert s["envelope_ratio_max"].attrs["verdict"] == "not applicable"
    assert needle in s["envelope_ratio_max"].attrs["reason"] and math.isnan(float(s["envelope_ratio_max"]))
    assert theory.envelope_status(ds).startswith("not applicable")


def test_rate_not_applicable_without_alignment_and_approximate_for_gaussian_init():
    loss = np.array([2.0, 2.0, 1.8, 1.0, 0.5])
    W = [[(1.0, 2.0), IN_S_NEG]] * 5  # neuron 0 never in a cone: no t1
    s = summary(run(W, [[1.0, -1.0]] * 5, X2, Y2, loss=loss))
    assert s["envelope_ratio_max"].attrs["verdict"] == "not applicable"
    assert "t1 not reached" in s["envelope_ratio_max"].attrs["reason"]
    g = summary(_aligned_run(loss, config={"init": {"kind": "gaussian"}}))
    assert g["envelope_ratio_max"].attrs["verdict"] == "holds"
    assert "approximate" in g["envelope_ratio_max"].attrs["reason"] and "gaussian" in g["envelope_ratio_max"].attrs["reason"]


# ------------------------------------------------------------------------------------------------ W only


def test_w_only_runs_show_only_what_applies():
    n = 6
    W = [[IN_S_POS, IN_S_NEG]] * n
    W = np.asarray(W) * (1 + np.arange(n))[:, None, None]  # norms grow: v_j² - ||w_j||² is not conserved
    ds = run(W, [[1.0, -1.0]] * n, X2, Y2, loss=np.linspace(2, 1, n), config={"train": {"train_v": False}})
    s = summary(ds)
    for name in ("epsilon", "zeta2", "t1_scale_time", "t2_scale_time", "envelope_alpha", "stable_rank_limit"):
        assert math.isnan(float(s[name])) and s[name].attrs["status"].startswith("not applicable: v is fixed"), name
    assert math.isnan(float(s["max_balance_drift"])) and math.isnan(float(s["sign_flips_total"]))
    assert "conserved only when v trains" in s["max_balance_drift"].attrs["status"]
    assert np.isfinite(float(s["zeta1"])) and np.isfinite(float(s["mu"]))  # data geometry stays
    rows = summary_rows(s)
    labels = [r["quantity"] for r in rows]
    for gone in ("ε (init scale)", "envelope rate α", "stable rank limit", "max |Δ(v_j² - ||w_j||²)|",
                 "sign flips of v_j", "t1 bound 16 log n/(min{ζ,ξ}√μ X_min)"):
        assert gone not in labels, gone
    hidden = [r for r in rows if r["quantity"].startswith("not shown")]
    assert any("ε (init scale)" in r["quantity"] and "v is fixed" in r["note"] for r in hidden)
    assert any("max |Δ(v_j² - ||w_j||²)|" in r["quantity"] and "conserved only when v trains" in r["note"]
               for r in hidden)
    t1_row = next(r for r in rows if r["quantity"] == "t1 alignment" and r["unit"] == "steps")
    assert t1_row["measured"] == "0" and t1_row["theory"] == ""  # the measurement stays, the theory goes
    # the same run training both layers keeps every row
    both = summary_rows(summary(ds.assign_attrs(config={**ds.traj.config, "train": {"lr": 1.0, "train_v": True}})))
    assert "ε (init scale)" in [r["quantity"] for r in both]
    assert not any(r["quantity"].startswith("not shown") for r in both)


# ------------------------------------------------------------------------------------------------ ζ1, ζ2


def test_zeta2_clips_negative_cross_cosines():
    """Every cross-cosine negative: ζ2 = 1 (clipped), where the unclipped 1 - m² would be < 1."""
    xp, xm = X2[0], X2[1]  # class sums of X2 (one sample each)
    w_pos = -xm + 0.3 * np.array([0.8, 0.6])  # v > 0, pointing away from x-
    w_neg = -xp + 0.2 * np.array([0.0, 1.0])  # v < 0, pointing away from x+
    W0 = np.array([w_pos, w_neg])
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    m = max(cos(w_pos, xm), cos(w_neg, xp))
    assert m < 0
    ds = run(W0[None], [[1.0, -1.0]], X2, Y2)
    assert float(theory.zeta2(ds)) == 1.0 and 1 - m**2 < 0.99
    # a neuron of V+ that starts near x-: ζ2 = 1 - cos²
    w_bad = xm + 0.5 * np.array([0.8, 0.6])
    ds = run(np.array([w_bad, w_neg])[None], [[1.0, -1.0]], X2, Y2)
    assert float(theory.zeta2(ds)) == pytest.approx(1 - cos(w_bad, xm) ** 2, rel=1e-12)


def test_zeta1_is_the_largest_cap_inside_the_cones():
    """ζ1 = sin² of the half-angle of the largest cap around x± inside S± (scanned on a fine grid in 2-D);
    the class-matched reading would overstate it on these data."""
    X = np.array([[1.0, 0.3], [1.0, -0.2], [-0.5, 1.0], [-1.0, 0.6]])
    y = np.array([1, 1, -1, -1], dtype=np.int8)
    z = y[:, None] * X / np.linalg.norm(X, axis=1, keepdims=True)
    assert (z @ z.T).min() > 0  # μ > 0: x± ∈ S±
    ds = run(np.zeros((1, 1, 2)) + 1.0, [[1.0]], X, y)
    got = float(theory.zeta1(ds))
    sums = {1: X[y > 0].sum(0), -1: X[y < 0].sum(0)}
    caps = []
    angles = np.linspace(0, np.pi, 400_001)
    for label, s in sums.items():
        target = "S+" if label > 0 else "S-"
        base = math.atan2(s[1], s[0])
        edge = []
        for sign in (1, -1):
            dirs = np.stack([np.cos(base + sign * angles), np.sin(base + sign * angles)], 1)
            act = dirs @ X.T > 0
            inside = (act == (y > 0)).all(1) if label > 0 else (act == (y < 0)).all(1)
            assert inside[0], target
            edge.append(angles[np.argmin(inside)])
        caps.append(math.sin(min(edge)) ** 2)
    assert got == pytest.approx(min(caps), abs=2e-5)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    matched = min(min(cos(x, sums[1]) ** 2 for x in X[y > 0]), min(cos(x, sums[-1]) ** 2 for x in X[y < 0]))
    assert matched > got + 0.1
