"""Every plot kind renders on real produced runs and draws the curves it claims."""

from __future__ import annotations

import numpy as np
import pytest

from trajscope.analysis.plots import PLOT_KINDS, plot
from trajscope.figures import save_figure as save
from trajscope.store import open_run
from trajscope.store.errors import UserError


def _line(fig, label):
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() == label:
                return line
    raise AssertionError(f"no line labelled {label!r}: {[l.get_label() for a in fig.axes for l in a.get_lines()]}")


@pytest.mark.parametrize("kind", list(PLOT_KINDS))
def test_every_kind_renders(kind, real_root, tmp_path):
    ds = open_run("plane" if kind == "plane" else "img", root=str(real_root))
    fig = plot(ds, kind)
    assert ds.attrs["run_id"] in fig.axes[0].get_title() + (fig._suptitle.get_text() if fig._suptitle else "")
    for suffix in ("png", "svg"):
        out = save(fig, tmp_path / f"{kind}.{suffix}")
        assert out.stat().st_size > 1000


def test_alignment_plot_curves(real_run):
    fig = plot(real_run, "alignment")
    W = real_run["W"].values.astype(np.float64)
    v = real_run["v"].values
    X = real_run["X"].values.astype(np.float64)
    y = real_run["y"].values
    xp = X[y == 1].sum(0)
    ref = [np.dot(W[k][v[k] > 0].mean(0), xp) / np.linalg.norm(W[k][v[k] > 0].mean(0)) / np.linalg.norm(xp)
           for k in range(W.shape[0])]
    line = _line(fig, "cos(w̄+, x+)")
    np.testing.assert_allclose(line.get_ydata(), ref, rtol=1e-6)
    np.testing.assert_allclose(line.get_xdata(), real_run["t"].values)
    assert _line(fig, "t1 (empirical)") and _line(fig, "t2 (empirical)")
    assert fig.axes[0].get_xlabel().startswith("gradient-flow time")
    assert any(a.get_xlabel() == "optimizer step" for a in fig.axes[0].child_axes)


def test_loss_plot_curves(real_run):
    fig = plot(real_run, "loss")
    W = real_run["W"].values.astype(np.float64)
    np.testing.assert_allclose(_line(fig, "loss L(t)").get_ydata(), real_run["loss"].values)
    s2 = [np.linalg.norm(w, 2) ** 2 for w in W]
    np.testing.assert_allclose(_line(fig, "||W||_2²").get_ydata(), s2, rtol=1e-6)
    sr = [np.linalg.norm(w, "fro") ** 2 / np.linalg.norm(w, 2) ** 2 for w in W]
    np.testing.assert_allclose(_line(fig, "stable rank ||W||_F²/||W||_2²").get_ydata(), sr, rtol=1e-6)
    env = _line(fig, "O(1/t) envelope from t2 (theory)").get_ydata()
    finite = np.isfinite(env)
    assert finite.any() and (env[finite] >= real_run["loss"].values[finite] * 0.999).all()  # a bound above L


def test_spectra_cones_gram_images(real_run):
    W = real_run["W"].values.astype(np.float64)
    fig = plot(real_run, "spectra")
    np.testing.assert_allclose(_line(fig, "σ_1").get_ydata(), [np.linalg.svd(w, compute_uv=False)[0] for w in W],
                               rtol=1e-6)
    fig = plot(real_run, "cones")
    assert len(fig.axes[0].collections) == 4
    frac = _line(fig, "in target cone or dead").get_ydata()
    assert frac[-1] == 1.0 and 0 <= frac.min() <= 1
    X = real_run["X"].values.astype(np.float64)
    y = real_run["y"].values
    fig = plot(real_run, "gram")
    G = fig.axes[0].images[0].get_array()
    order = np.argsort(-y, kind="stable")
    Xs = X[order] / np.linalg.norm(X[order], axis=1, keepdims=True)
    np.testing.assert_allclose(G, Xs @ Xs.T, atol=1e-6)
    fig = plot(real_run, "mean_neurons")
    arrays = {ax.get_title(): ax.images[0].get_array() for ax in fig.axes}
    np.testing.assert_allclose(arrays["class centre x̄+"], X[y == 1].mean(0).reshape(4, 4), rtol=1e-6)


def test_plane_plot(real_root):
    ds = open_run("plane", root=str(real_root))
    fig = plot(ds, "plane")
    ax = fig.axes[0]
    labels = {p.get_label() for p in ax.patches}
    assert {"cone S+", "cone S-"} <= labels
    quivers = [c for c in ax.collections if c.__class__.__name__ == "Quiver"]
    # first and last state, each split by the sign of v_j, which the legend names (the arrows' colours)
    v = ds["v"].values
    last = [q for q in quivers if "(last)" in q.get_label()]
    assert sum(q.N for q in last) == ds.sizes["neuron"] and len(quivers) <= 4
    for q in last:
        assert q.N == int((v[-1] > 0).sum() if "v_j > 0" in q.get_label() else (v[-1] <= 0).sum())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("v_j > 0" in t for t in legend) and any("v_j ≤ 0" in t for t in legend)


def test_plot_errors_and_stride(real_run, real_root):
    with pytest.raises(UserError, match="2-D data"):
        plot(real_run, "plane")
    with pytest.raises(UserError, match="choose one of"):
        plot(real_run, "nope")
    with pytest.raises(UserError, match=r"\.png, \.svg or \.pdf"):
        save(plot(real_run, "spectra"), "x.gif")
    fig = plot(real_run, "loss", step=slice(100, 300, 10))
    assert len(_line(fig, "loss L(t)").get_ydata()) == 21


def test_a_figure_over_time_of_one_step_draws_that_state(real_run):
    """Found by a review: ``ds.traj.plot("loss", step=5)`` (an int, as every quantity takes it) was an
    AttributeError inside the thinning."""
    k = int(real_run["step"].values[3])
    fig = real_run.traj.plot("loss", step=k)
    line = _line(fig, "loss L(t)")
    np.testing.assert_array_equal(line.get_ydata(), real_run["loss"].sel(step=[k]).values)
    with pytest.raises(UserError, match="no recorded state"):
        real_run.traj.plot("loss", step=k + 10**9)
