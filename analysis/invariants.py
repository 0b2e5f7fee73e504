"""Conserved quantities of gradient flow (a check on the integration, DESIGN §2)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select
from trajscope.analysis.alignment import neuron_stats
from trajscope.analysis.registry import TWO_LAYER, quantity


@quantity(requires=TWO_LAYER, pointwise=True)
def balance(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``δ_j(t) = v_j(t)² - ||w_j(t)||²`` (conserved by gradient flow); dims ``(step, neuron)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, neuron)``, named ``balance``.
    """
    sq = neuron_stats(ds, step).sel(stat="sq_norm", drop=True)
    out = select(ds, step)["v"].astype(np.float64) ** 2 - sq
    out.name = "balance"
    return out


def initial_balance(ds: xr.Dataset) -> xr.DataArray:
    """``δ_j(t_0)`` at the run's first recorded state ``t_0`` (whatever the step range); dims ``(neuron,)``.

    Parameters
    ----------
    ds
        A run's dataset: the whole run, whose first recorded state is read.

    Returns
    -------
    xr.DataArray
        float64, dims ``(neuron,)``, named ``balance``.
    """
    return balance(ds.isel(step=slice(0, 1))).isel(step=0, drop=True)


@quantity(requires=TWO_LAYER, pointwise=True)
def balance_drift(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``δ_j(t) - δ_j(t_0)`` with ``t_0`` the run's first recorded state, whatever the step range (the drift
    since the start, so a range's values equal the whole run's at the same steps); dims ``(step, neuron)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, neuron)``, named ``balance_drift``.
    """
    out = balance(ds, step) - initial_balance(ds)
    out.name = "balance_drift"
    return out


@quantity(requires=TWO_LAYER, pointwise=True)
def max_balance_drift(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``max_j |δ_j(t) - δ_j(t_0)|`` per step; dims ``(step,)``. NaN at a state with a non-finite neuron (a
    diverged state's drift is unknown, not the largest of its finite neurons').

    Returns
    -------
    xr.DataArray
        float64, dims ``(step,)``, named ``max_balance_drift``.
    """
    out = abs(balance_drift(ds, step)).max("neuron", skipna=False)
    out.name = "max_balance_drift"
    return out


@quantity(requires=TWO_LAYER, series=False)
def sign_flips(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Number of changes of ``sign(v_j)`` between consecutive recorded states; dims ``(neuron,)``.

    ``Σ_k 1[sign v_j(t_{k+1}) ≠ sign v_j(t_k)]`` over the selected states (a stride can hide flips), counting
    only pairs of finite states: a diverged (NaN) state is no flip (``NaN ≠ NaN`` counted every one).
    Zero for a balanced init under gradient flow.

    Returns
    -------
    xr.DataArray
        Integer counts, dims ``(neuron,)``, named ``sign_flips``.
    """
    change = np.sign(select(ds, step)["v"]).diff("step")
    out = ((change != 0) & change.notnull()).sum("step")
    out.name = "sign_flips"
    return out
