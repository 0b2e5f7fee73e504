"""The paper's figures from a stored run (matplotlib, no pyplot: thread-safe, any backend-free use).

Every plot function has the signature ``fn(ds, step=None, *, title=None) -> matplotlib.figure.Figure``.
Without an explicit stride, time series are thinned to at most
:data:`~trajscope.analysis.figure_parts.MAX_POINTS` recorded states, so
a plot of a 10⁶-step run does not read every step. The x axis is gradient-flow time ``t = step · η``
(the run's loss convention) with optimizer steps on a secondary axis on top.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from trajscope.analysis._common import StepSel, lr, positive_count, run_name, select, time_coord
from trajscope.analysis.alignment import mean_neuron_alignment
from trajscope.analysis.cones import CONES, aligned_fraction, cone_fractions
from trajscope.analysis.direction_field import direction_field_error
from trajscope.analysis.figure_parts import log_y, thinned
from trajscope.analysis.phases import t1, t2
from trajscope.analysis.spectra import singular_values, spectral_norm_sq, stable_rank
from trajscope.analysis.theory import loss_envelope
from trajscope.analysis.registry import LOSS, TWO_LAYER, features, plot_kind
from trajscope.store.errors import UserError


def _x(ds: xr.Dataset, step: slice) -> tuple[np.ndarray, str]:
    sel = select(ds, step)
    if lr(ds) is None and "t" not in ds.coords:
        return sel["step"].values.astype(float), "optimizer step"
    return time_coord(sel).values.astype(float), "gradient-flow time t = step·η"


def _time_axis(ax, ds: xr.Dataset, label: str) -> None:
    ax.set_xlabel(label)
    eta = lr(ds)
    if eta and label.startswith("gradient"):
        sec = ax.secondary_xaxis("top", functions=(lambda t: t / eta, lambda s: s * eta))
        sec.set_xlabel("optimizer step")


def _title(ds: xr.Dataset, what: str, title: str | None) -> str:
    return title or f"{run_name(ds)}: {what}"


def _mark_phases(ax, ds: xr.Dataset, step: slice, *, with_t1: bool = True) -> None:
    use_step = lr(ds) is None and "t" not in ds.coords
    key = "step" if use_step else "time"
    marks = []
    if with_t1:
        marks.append(("t1 (empirical)", float(t1(ds, step)[f"t1_{key}"].compute()), "tab:green"))
    marks.append(("t2 (empirical)", float(t2(ds, step)[f"t2_{key}"].compute()), "tab:purple"))
    for label, x, color in marks:
        if np.isfinite(x):
            ax.axvline(x, color=color, linestyle=":", label=label)


def _finish(fig: Figure, ax, ds: xr.Dataset, step: slice, xlabel: str, ylabel: str, ylim: tuple, title: str) -> Figure:
    """Phase marks, labels, limits, legend and title shared by the cosine/fraction plots."""
    _mark_phases(ax, ds, step)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    _time_axis(ax, ds, xlabel)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    return fig


@plot_kind("alignment", requires=TWO_LAYER)
def plot_alignment(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """Mean-neuron alignment ``cos(w̄±, x±)`` with the min–max band over ``V±``; ``t1``, ``t2`` marked."""
    step = thinned(ds, step)
    a = mean_neuron_alignment(ds, step).compute()
    x, xlabel = _x(ds, step)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for lab, color, name in ((1, "tab:blue", "+"), (-1, "tab:red", "-")):
        ax.plot(x, a["mean"].sel(label=lab).values, color=color, label=f"cos(w̄{name}, x{name})")
        ax.fill_between(x, a["min"].sel(label=lab).values, a["max"].sel(label=lab).values, color=color,
                        alpha=0.2, label=f"min–max over V{name}")
    return _finish(fig, ax, ds, step, xlabel, "cosine", (-1.05, 1.05),
                   _title(ds, "neuron alignment with the class sums", title))


@plot_kind("loss", requires=LOSS)
def plot_loss(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """Loss, ``||W||_2²`` (log scale) and stable rank (right axis) on one time axis, with the envelope; for a
    run of another model (``ModuleRecorder``) its recorded loss alone (a number per state).

    Raises
    ------
    UserError
        When a run of another model records a loss that is not a number per state.
    """
    if "two_layer" not in features(ds):
        return _plot_recorded_loss(ds, step, title=title)
    step = thinned(ds, step)
    sel = select(ds, step)
    x, xlabel = _x(ds, step)
    env = loss_envelope(ds, step)
    both = xr.Dataset({"loss": sel["loss"], "s2": spectral_norm_sq(ds, step), "sr": stable_rank(ds, step),
                       "env": env}).compute()
    loss, s2, sr, env_v = both["loss"], both["s2"], both["sr"], both["env"]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, loss.values, color="black", label="loss L(t)")
    status = env.attrs.get("status", "ok")
    if status == "ok" or status.startswith("approximate"):
        ax.plot(x, env_v.values, color="tab:gray", linestyle="--", label="O(1/t) envelope from t2 (theory)")
    ax.plot(x, s2.values, color="tab:orange", label="||W||_2²")
    log_y(ax, loss.values, s2.values)
    ax.set_ylabel("loss, ||W||_2²")
    _mark_phases(ax, ds, step, with_t1=False)
    ax2 = ax.twinx()
    ax2.plot(x, sr.values, color="tab:green", label="stable rank ||W||_F²/||W||_2²")
    ax2.set_ylabel("stable rank")
    _time_axis(ax, ds, xlabel)
    handles = ax.get_legend_handles_labels()
    h2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + h2[0], handles[1] + h2[1], loc="center right", fontsize="small")
    ax.set_title(_title(ds, "loss, spectral norm and stable rank", title))
    return fig


def _plot_recorded_loss(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """The recorded ``loss`` over time (log scale where it stays positive)."""
    if ds["loss"].dims != ("step",):
        raise UserError(f"this run's loss is not a number per state (dims {ds['loss'].dims}): the loss figure draws "
                        "one; plot its parameters instead (param_norms, param_updates)")
    step = thinned(ds, step)
    loss = select(ds, step)["loss"].values.astype(float)
    x, xlabel = _x(ds, step)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, loss, color="black", label="loss")
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    _time_axis(ax, ds, xlabel)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(_title(ds, "loss", title))
    return fig


@plot_kind("spectra", requires=TWO_LAYER)
def plot_spectra(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None, top: int = 10) -> Figure:
    """Singular values ``σ_k(W(t))`` over time (the ``top`` largest, ``top >= 1``), log scale.

    Parameters
    ----------
    top
        How many of the largest singular values to draw (default 10).

    Raises
    ------
    UserError
        When ``top < 1``.
    """
    positive_count("top", top)
    step = thinned(ds, step)
    s = singular_values(ds, step).isel(sv=slice(0, top)).compute()
    x, xlabel = _x(ds, step)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for k in s["sv"].values:
        ax.plot(x, s.sel(sv=k).values, label=f"σ_{k}")
    log_y(ax, s.values)
    ax.set_ylabel("singular value of W")
    _time_axis(ax, ds, xlabel)
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title(_title(ds, "singular values of W over time", title))
    return fig


@plot_kind("cones", requires=TWO_LAYER)
def plot_cones(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """Stacked fractions of neurons in ``S+``, ``S-``, ``S_dead`` and other, and the aligned fraction."""
    step = thinned(ds, step)
    frac, al = xr.Dataset({"f": cone_fractions(ds, step), "a": aligned_fraction(ds, step)}).compute().data_vars.values()
    x, xlabel = _x(ds, step)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:blue", "tab:red", "tab:gray", "tab:olive"]
    ax.stackplot(x, *[frac.sel(cone=c).values for c in CONES], labels=[f"in {c}" for c in CONES],
                 colors=colors, alpha=0.6)
    ax.plot(x, al.values, color="black", label="in target cone or dead")
    return _finish(fig, ax, ds, step, xlabel, "fraction of neurons", (0, 1), _title(ds, "cone membership", title))


@plot_kind("direction_field", requires=TWO_LAYER)
def plot_direction_field(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None) -> Figure:
    """Median relative error of the early-phase direction field ``sign(v_j) P_w x_a(w)`` over time.

    Raises
    ------
    UserError
        When fewer than two states are drawn.
    """
    step = thinned(ds, step)
    err = direction_field_error(ds, step)["median_error"].compute()
    t = time_coord(select(ds, step)).values[:-1] if lr(ds) is not None or "t" in ds.coords else None
    x = t if t is not None else err["step"].values.astype(float)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, err.values, color="tab:blue", label="median_j ||measured - predicted|| / ||predicted||")
    _mark_phases(ax, ds, step)
    log_y(ax, err.values)
    ax.set_ylabel("relative error")
    _time_axis(ax, ds, "gradient-flow time t = step·η" if t is not None else "optimizer step")
    ax.legend(fontsize="small")
    ax.set_title(_title(ds, "direction-field check of the early phase", title))
    return fig


from trajscope.analysis.plots_data import plot_gram, plot_mean_neurons, plot_plane  # noqa: E402

from trajscope.analysis import plots_generic  # noqa: E402,F401  (registers the generic figures)
from trajscope.analysis.registry import PLOTS as PLOT_KINDS  # noqa: E402

PLOT_KINDS: dict[str, Callable[..., Figure]]
"""Plot kind → ``fn(ds, step=None, *, title=None) -> Figure``, filled by :func:`~trajscope.analysis.registry.plot_kind`.
Stable names (CLI and API)."""


def plot(ds: xr.Dataset, kind: str, step: StepSel = None, **kwargs) -> Figure:
    """Draw the figure ``kind``; an unknown kind is a :class:`UserError` listing the known ones.

    Parameters
    ----------
    ds
        A run's dataset, passed to the figure.
    kind
        A key of :data:`PLOT_KINDS`.
    step
        The step selection, passed to the figure.
    kwargs
        The figure's options (``title``, and e.g. ``top``, ``parameter``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (no pyplot).

    Raises
    ------
    UserError
        When ``kind`` is unknown (and whatever the figure raises).
    """
    if kind not in PLOT_KINDS:
        raise UserError(f"unknown plot kind {kind!r}: choose one of {', '.join(PLOT_KINDS)}")
    return PLOT_KINDS[kind](ds, step, **kwargs)

