"""Figures of any recorded model: parameter norms, update sizes and drift, and a parameter's spectrum.

They apply to every run with parameters (see :mod:`trajscope.analysis.generic`); the x axis is the
optimizer step. Time series are thinned like the paper's figures (:func:`~trajscope.analysis.figure_parts.thinned`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from trajscope.analysis._common import StepSel, need_two_states, positive_count, run_name, select
from trajscope.analysis.generic import (
    PARAMETER_ENTRY,
    SELECTED,
    TOTAL,
    distance_from_init,
    frobenius_norms,
    param_singular_values,
    parameters,
    total_name,
    update_norms,
)
from trajscope.analysis.figure_parts import log_y, thinned
from trajscope.analysis.registry import MATRICES, PARAMETERS, doc_entries, plot_kind

MAX_LINES = 12


def _lines(ax, result: xr.Dataset, names: list[str]) -> None:
    for n in names[:MAX_LINES]:
        da = result[n]
        ax.plot(da["step"].values, np.asarray(da.values, dtype=float), label=n,
                color="black" if n in (TOTAL, SELECTED) else None, linewidth=2 if n in (TOTAL, SELECTED) else 1)
    ax.set_xlabel("optimizer step")
    log_y(ax, *(result[n].values for n in names[:MAX_LINES]))  # a zero (the initial distance) is left out
    ax.legend(fontsize="x-small", ncol=2)


@plot_kind("param_norms", requires=PARAMETERS)
@doc_entries(PARAMETER_ENTRY)
def plot_param_norms(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None,
                     parameter: str = "") -> Figure:
    """``||θ_p(k)||_F`` of every parameter (at most :data:`MAX_LINES`) and of ``θ`` over the steps."""
    result = frobenius_norms(ds, thinned(ds, step), parameter=parameter).compute()
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    picked = parameters(ds, parameter)
    _lines(ax, result, [total_name(ds, picked), *picked])
    ax.set_ylabel("Frobenius norm")
    ax.set_title(title or f"{run_name(ds)}: parameter norms")
    return fig


@plot_kind("param_updates", requires=PARAMETERS)
@doc_entries(PARAMETER_ENTRY)
def plot_param_updates(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None,
                       parameter: str = "") -> Figure:
    """Two panels: distance from initialization ``||θ_p(k) − θ_p(0)||`` and update size
    ``||θ_p(k_{i+1}) − θ_p(k_i)||`` between the plotted states.

    Raises
    ------
    UserError
        When fewer than two states are drawn.
    """
    sel = thinned(ds, step)
    need_two_states("param_updates draws the updates between recorded states", ds, select(ds, sel))
    picked = parameters(ds, parameter)
    names = [total_name(ds, picked), *picked]
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    _lines(top, distance_from_init(ds, sel, parameter=parameter).compute(), names)
    top.set_ylabel("distance from init")
    _lines(bottom, update_norms(ds, sel, parameter=parameter).compute(), names)
    bottom.set_ylabel("update norm (between plotted states)")
    top.set_title(title or f"{run_name(ds)}: drift and updates")
    return fig


@plot_kind("param_spectrum", requires=MATRICES)
def plot_param_spectrum(ds: xr.Dataset, step: StepSel = None, *, title: str | None = None,
                        parameter: str = "", top: int = 10) -> Figure:
    """The ``top`` singular values (``top >= 1``) of one matrix parameter (``parameter``; default the first) over
    the steps.

    Parameters
    ----------
    parameter
        ``fnmatch`` pattern(s) over the matrix parameters; the first match is drawn (``""``, the default: the first
        matrix parameter).
    top
        How many of the largest singular values to draw (default 10).

    Raises
    ------
    UserError
        When ``top < 1``, or ``parameter`` matches no matrix parameter.
    """
    positive_count("top", top)
    name = parameters(ds, parameter, matrices=True)[0]
    sv = param_singular_values(ds, thinned(ds, step), parameter=name)[name]
    sv = sv.isel({f"{name}.sv": slice(0, top)}).compute()
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i in range(sv.sizes[f"{name}.sv"]):
        ax.plot(sv["step"].values, sv.values[:, i], label=f"σ{i + 1}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"singular values of {name}")
    log_y(ax, sv.values)
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title(title or f"{run_name(ds)}: spectrum of {name}")
    return fig
