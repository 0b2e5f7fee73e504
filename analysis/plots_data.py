"""Figures of the data and of the neurons in data space: Gram heatmap, mean neurons as images,
neurons and data in the plane (2-D data, cones shaded)."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Wedge

from trajscope.analysis._common import StepSel, labels, run_name, select
from trajscope.analysis.geometry import class_centres, gram
from trajscope.analysis.registry import TWO_LAYER, ignores_step, plot_kind
from trajscope.store.errors import UserError

GRAM_MAX_SAMPLES = 400


def _title(ds: xr.Dataset, what: str, title: str | None) -> str:
    return title or f"{run_name(ds)}: {what}"


@plot_kind("gram", requires=TWO_LAYER, over_time=False)
@ignores_step
def plot_gram(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """Heatmap of ``cos(x_i, x_j)`` with samples sorted by label (``+1`` first); at most
    :data:`GRAM_MAX_SAMPLES` samples, taken evenly from the label-sorted order."""
    y = labels(ds)
    order = np.argsort(-y, kind="stable")
    keep = order[np.unique(np.linspace(0, len(order) - 1, min(len(order), GRAM_MAX_SAMPLES)).round().astype(int))]
    keep.sort()
    G = gram(ds.isel(sample=keep)).compute()
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(G.values, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    n_pos = int((G["y"].values > 0).sum())
    ax.axhline(n_pos - 0.5, color="black", linewidth=0.8)
    ax.axvline(n_pos - 0.5, color="black", linewidth=0.8)
    ax.set_xlabel(f"sample j (sorted by label: {n_pos} with y=+1, then y=-1)")
    ax.set_ylabel("sample i")
    fig.colorbar(im, ax=ax, label="cos(x_i, x_j)")
    shown = "" if len(keep) == len(y) else f" ({len(keep)} of {len(y)} samples)"
    ax.set_title(_title(ds, f"data Gram matrix{shown}", title))
    return fig


@plot_kind("mean_neurons", requires=TWO_LAYER, over_time=False)
def plot_mean_neurons(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """Mean neurons ``w̄±`` at the last selected state beside the class centres ``x̄±``, as images
    (needs image data: ``D`` a perfect square).

    Parameters
    ----------
    step
        Step selection (see :func:`~trajscope.analysis._common.select`); its last state is drawn.

    Raises
    ------
    UserError
        When ``D`` is not a perfect square of at least 4.
    """
    D = ds.sizes["feature"]
    side = math.isqrt(D)
    if side * side != D or D < 4:
        raise UserError(f"plot 'mean_neurons' needs image data (D a perfect square); this run has D={D}: "
                        "use 'alignment' instead")
    sel = select(ds, step)
    last = sel.isel(step=-1)
    W = last["W"].astype(np.float64).values
    v = last["v"].values
    centres = class_centres(ds).compute()
    fig = Figure(figsize=(6, 6), layout="constrained")
    panels = []
    for row, (lab, name) in enumerate(((1, "+"), (-1, "-"))):
        mask = v > 0 if lab == 1 else v < 0
        wbar = W[mask].mean(axis=0) if mask.any() else np.full(D, np.nan)
        panels.append((row, 0, wbar, f"mean neuron w̄{name} ({int(mask.sum())} neurons)"))
        panels.append((row, 1, centres.sel(label=lab).values, f"class centre x̄{name}"))
    for row, col, vec, label in panels:
        ax = fig.add_subplot(2, 2, 2 * row + col + 1)
        img = vec.reshape(side, side)
        lim = np.nanmax(np.abs(img)) or 1.0
        ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(label, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    stepval = int(last["step"].values)
    fig.suptitle(_title(ds, f"mean neurons vs class centres at step {stepval}", title))
    return fig


def _cone_code(angle: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    act = (z @ X.T) > 0
    pos, neg = act[:, y > 0], act[:, y < 0]
    code = np.full(len(angle), 3)
    code[pos.all(1) & ~neg.any(1)] = 0
    code[~pos.any(1) & neg.all(1)] = 1
    code[~act.any(1)] = 2
    return code


@plot_kind("plane", requires=TWO_LAYER, over_time=False)
def plot_plane(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """2-D data: samples, neuron directions at the first and last selected states, cones shaded
    (``S+`` blue, ``S-`` red, ``S_dead`` grey).

    Parameters
    ----------
    step
        Step selection (see :func:`~trajscope.analysis._common.select`); its first and last states are drawn.

    Raises
    ------
    UserError
        When the data are not 2-D.
    """
    if ds.sizes["feature"] != 2:
        raise UserError(f"plot 'plane' needs 2-D data; this run has D={ds.sizes['feature']}: "
                        "use 'alignment' or 'cones' instead")
    X = ds["X"].values.astype(np.float64)
    y = labels(ds)
    sel = select(ds, step)
    r = float(np.linalg.norm(X, axis=1).max()) * 1.15
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    angles = np.linspace(0, 2 * np.pi, 1441)[:-1]
    code = _cone_code(angles, X, y)
    colors = {0: ("tab:blue", "S+"), 1: ("tab:red", "S-"), 2: ("tab:gray", "S_dead")}
    width = 360.0 / len(angles)
    seen = set()
    start = 0
    for i in range(1, len(angles) + 1):
        if i == len(angles) or code[i] != code[start]:
            c = int(code[start])
            if c in colors:
                color, name = colors[c]
                ax.add_patch(Wedge((0, 0), r, np.degrees(angles[start]) - width / 2,
                                   np.degrees(angles[i - 1]) + width / 2, color=color, alpha=0.12,
                                   label=None if name in seen else f"cone {name}"))
                seen.add(name)
            start = i
    ax.scatter(X[y > 0, 0], X[y > 0, 1], marker="+", color="tab:blue", label="x_i, y_i = +1")
    ax.scatter(X[y < 0, 0], X[y < 0, 1], marker="_", color="tab:red", label="x_i, y_i = -1")
    for k, (alpha, when) in enumerate(((0.35, "first"), (1.0, "last"))):
        state = sel.isel(step=0 if k == 0 else -1)
        W = state["W"].values.astype(np.float64)
        v = state["v"].values
        norms = np.linalg.norm(W, axis=1)
        U = np.where(norms[:, None] > 0, W / np.where(norms > 0, norms, 1)[:, None], 0) * (0.9 * r)
        for group, color, sign in ((v > 0, "navy", "v_j > 0"), (~(v > 0), "darkred", "v_j ≤ 0")):
            if group.any():  # (the arrows' colour is the sign of v_j: in the legend, found by a review)
                ax.quiver(np.zeros(int(group.sum())), np.zeros(int(group.sum())), U[group, 0], U[group, 1],
                          color=color, alpha=alpha, angles="xy", scale_units="xy", scale=1, width=0.004,
                          label=f"w_j/||w_j||, {sign}, at step {int(state['step'].values)} ({when})")
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.legend(fontsize="x-small", loc="upper left")
    ax.set_title(_title(ds, "neurons and data in the plane", title))
    return fig
