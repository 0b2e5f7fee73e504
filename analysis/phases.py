"""Phase boundaries measured on the trajectory: empirical ``t1``, ``t2`` and the post-``t2`` rate.

Rules (all on the selected recorded states, so a stride coarsens them):

- ``t1``: the first recorded step from which **every** neuron stays, at every later recorded step of
  the selection, in its target cone ``S_{sign v_j}`` or in ``S_dead``. NaN when the last recorded state
  is not aligned; :func:`t1_state` then tells "not reached" (some neuron has been in a cone) from
  "undefined" (no neuron is in ``S+``, ``S-`` or ``S_dead`` at any recorded state: the question "when
  are all neurons in their cones" has no answer on this trajectory, e.g. MNIST 0 vs 1 centred).
- ``t2``: the first recorded step at which the loss has fallen to ``(1 - drop) · L(t_0)``, ``t_0`` the
  first selected state, ``drop = 0.05`` by default (the onset of the loss decrease). NaN when never.
- post-``t2`` slope: least-squares slope of ``log L`` against ``log(t - t2)`` over the recorded states
  in the last decade of ``t - t2``, i.e. ``(t_last - t2)/10 ≤ t - t2 ≤ t_last - t2`` (at least 3
  states, else NaN). Theory: ``-1`` or steeper.

Steps are optimizer steps (the ``step`` coordinate); times are gradient-flow times (the ``t``
coordinate, ``t = step · η``) in the run's loss convention.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, fraction, select, time_coord
from trajscope.analysis.cones import in_target_or_dead
from trajscope.analysis.registry import TWO_LAYER, doc_entries, quantity

T2_DROP = 0.05
#: the docstring entry of ``drop`` (:func:`t2`'s, which every quantity with a ``drop`` passes it to)
DROP_ENTRY = ("drop", "Fraction ``0 < drop < 1`` by which the loss must fall from its first selected value for ``t2`` "
                      "(default :data:`~trajscope.analysis.phases.T2_DROP`, 0.05); another value raises "
                      ":class:`~trajscope.store.errors.UserError`.")

REACHED, NOT_REACHED, UNDEFINED = "reached", "not reached", "undefined"


def t1_state(t1_step: float, in_cone_fraction_max: float) -> str:
    """``"reached"`` (``t1`` is a step), ``"undefined"`` (no neuron was ever in ``S+``, ``S-`` or
    ``S_dead``: ``max_t (1 - frac_other(t)) = 0``) or ``"not reached"`` (some neuron was in a cone, but the
    last recorded state is not aligned).

    Parameters
    ----------
    t1_step
        The empirical ``t1`` step (NaN when there is none).
    in_cone_fraction_max
        ``max_t (1 - frac_other(t))``: the largest fraction of neurons in ``S+``, ``S-`` or ``S_dead`` at one state.

    Returns
    -------
    str
        :data:`REACHED`, :data:`UNDEFINED` or :data:`NOT_REACHED`.
    """
    if np.isfinite(t1_step):
        return REACHED
    return UNDEFINED if in_cone_fraction_max == 0 else NOT_REACHED


def t1_text(m: Mapping[str, Any]) -> str:
    """``t1`` in words from a summary (dataset or sweep row): the step, or why there is none, with the
    closest state's figures. Reads ``t1_step``, ``in_cone_fraction_max``, ``aligned_fraction_max``,
    ``cone_agreement_best``, ``cone_agreement_best_step``, ``cone_agreement_min_at_best``.

    Parameters
    ----------
    m
        A :func:`~trajscope.analysis.summary.summary` dataset or a sweep row; a missing or non-numeric entry reads as
        NaN.

    Returns
    -------
    str
        ``"step N"``, or ``"not reached (…)"`` / ``"undefined (…)"`` followed by the closest state's figures.
    """
    def get(key: str) -> float:
        try:
            return float(m[key])
        except (KeyError, TypeError, ValueError):
            return float("nan")

    state = t1_state(get("t1_step"), get("in_cone_fraction_max"))
    if state == REACHED:
        return f"step {get('t1_step'):.0f}"
    closest = (f"closest state: step {get('cone_agreement_best_step'):.0f}, where neurons agree with the activation "
               f"pattern of S_(sign v_j) or S_dead on {100 * get('cone_agreement_best'):.1f} % of samples on average "
               f"(worst neuron {100 * get('cone_agreement_min_at_best'):.1f} %); at most "
               f"{100 * get('aligned_fraction_max'):.0f} % of neurons were ever in S_(sign v_j) ∪ S_dead")
    if state == UNDEFINED:
        return "undefined (no neuron ever enters a cone S+, S- or S_dead); " + closest
    return "not reached (the last recorded state is not all aligned); " + closest


@quantity(requires=TWO_LAYER)
def all_aligned(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``1[∀j: w_j(t) ∈ S_{sign v_j(t)} ∪ S_dead]`` per step; dims ``(step,)``.

    Returns
    -------
    xr.DataArray
        bool, dims ``(step,)``, named ``all_aligned``.
    """
    out = in_target_or_dead(ds, step).all("neuron")
    out.name = "all_aligned"
    return out


def _first_from(ok: xr.DataArray, sel: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    steps = sel["step"].astype(np.float64)
    times = time_coord(sel).astype(np.float64)
    last_bad = xr.where(~ok, steps, -np.inf).max("step")
    after = steps > last_bad
    return (
        xr.where(after, steps, np.nan).min("step").drop_vars(["step", "t"], errors="ignore"),
        xr.where(after, times, np.nan).min("step").drop_vars(["step", "t"], errors="ignore"),
    )


@quantity(requires=TWO_LAYER, series=False)
def t1(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Empirical alignment time ``t1`` (rule in the module docstring): ``t1_step``, ``t1_time``.

    Returns
    -------
    xr.Dataset
        0-d float64 variables ``t1_step`` (optimizer steps) and ``t1_time`` (gradient-flow time), NaN when not reached;
        attrs ``long_name`` and ``units``.
    """
    return t1_from(all_aligned(ds, step), select(ds, step))


def t1_from(aligned: xr.DataArray, sel: xr.Dataset) -> xr.Dataset:
    """``t1`` from an :func:`all_aligned` series over the selected states ``sel`` (a reduction).

    ``t1 = min{t_k : t_k > max{t_l : not all_aligned(t_l)}}``; NaN when the last state is not aligned.

    Parameters
    ----------
    aligned
        bool per selected state, dims ``(step,)`` (an :func:`all_aligned` series).
    sel
        The selected states of the run (their ``step`` coordinate, and ``t`` or the learning rate for the times).

    Returns
    -------
    xr.Dataset
        0-d float64 variables ``t1_step`` and ``t1_time`` as :func:`t1` returns them.
    """
    s, t = _first_from(aligned, sel)
    out = xr.Dataset({"t1_step": s, "t1_time": t})
    out["t1_step"].attrs.update(long_name="empirical t1", units="optimizer steps")
    out["t1_time"].attrs.update(long_name="empirical t1", units="gradient-flow time")
    return out


@quantity(requires=TWO_LAYER, series=False)
@doc_entries(DROP_ENTRY)
def t2(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.Dataset:
    """Empirical loss-decrease onset ``t2 = min{t_k : L(t_k) ≤ (1 - drop) L(t_0)}``: ``t2_step``, ``t2_time``
    (``0 < drop < 1``; every quantity with a ``drop`` reaches it here). NaN when ``L(t_0)`` is not finite (an
    infinite initial loss cannot fall by a fraction: ``inf ≤ inf`` made it step 0).

    Returns
    -------
    xr.Dataset
        0-d float64 variables ``t2_step`` (optimizer steps) and ``t2_time`` (gradient-flow time), NaN when never
        reached; attrs ``long_name`` and ``units``.
    """
    fraction("drop", drop)
    sel = select(ds, step)
    L = sel["loss"]
    L0 = L.isel(step=0)
    hit = (L <= (1.0 - drop) * L0) & np.isfinite(L0)
    steps = sel["step"].astype(np.float64)
    times = time_coord(sel).astype(np.float64)
    s = xr.where(hit, steps, np.nan).min("step").drop_vars(["step", "t"], errors="ignore")
    t = xr.where(hit, times, np.nan).min("step").drop_vars(["step", "t"], errors="ignore")
    out = xr.Dataset({"t2_step": s, "t2_time": t})
    out["t2_step"].attrs.update(long_name=f"empirical t2 (loss ≤ {1 - drop:g}·L(t0))", units="optimizer steps")
    out["t2_time"].attrs.update(long_name=f"empirical t2 (loss ≤ {1 - drop:g}·L(t0))", units="gradient-flow time")
    return out


@quantity(requires=TWO_LAYER, series=False)
@doc_entries(DROP_ENTRY)
def post_t2_slope(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.DataArray:
    """Log-log slope ``d log L / d log(t - t2)`` over the last decade of ``t - t2`` (least squares).

    Returns
    -------
    xr.DataArray
        0-d float64, named ``post_t2_slope`` (NaN with fewer than 3 states in the last decade, or without ``t2``);
        attrs ``long_name`` and ``units``.
    """
    sel = select(ds, step)
    t2_time = t2(ds, step, drop=drop)["t2_time"]
    times = time_coord(sel).astype(np.float64)
    dt = times - t2_time
    span = dt.max("step")
    use = (dt > 0) & (dt >= span / 10.0) & (sel["loss"] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = xr.where(use, np.log(xr.where(dt > 0, dt, 1.0)), np.nan)
        y = xr.where(use, np.log(xr.where(sel["loss"] > 0, sel["loss"], 1.0)), np.nan)
    n = use.sum("step")
    xm = x.mean("step")
    ym = y.mean("step")
    den = ((x - xm) ** 2).sum("step")
    slope = ((x - xm) * (y - ym)).sum("step") / xr.where(den > 0, den, np.nan)
    out = xr.where(n >= 3, slope, np.nan).drop_vars(["step", "t"], errors="ignore")
    out.name = "post_t2_slope"
    out.attrs.update(long_name="log-log slope of L against t - t2 (last decade)", units="1")
    return out


@quantity(requires=TWO_LAYER, series=False)
@doc_entries(DROP_ENTRY)
def phases(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.Dataset:
    """``t1`` and ``t2`` (steps and gradient-flow time) and the post-``t2`` slope in one dataset.

    Returns
    -------
    xr.Dataset
        0-d variables ``t1_step``, ``t1_time``, ``t2_step``, ``t2_time`` and ``post_t2_slope``.
    """
    out = xr.merge([t1(ds, step), t2(ds, step, drop=drop)])
    out["post_t2_slope"] = post_t2_slope(ds, step, drop=drop)
    return out
