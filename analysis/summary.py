"""One call, all headline numbers of a run: data geometry, measurements, and the theory beside them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, cfg, select
from trajscope.analysis.geometry import data_geometry
from trajscope.analysis.invariants import sign_flips
from trajscope.analysis.phases import DROP_ENTRY, T2_DROP, post_t2_slope, t1_from, t1_state, t1_text, t2
from trajscope.analysis.series import SERIES, step_series
from trajscope.analysis.theory import (
    OK,
    RATE_RULE,
    envelope_ratio_max,
    loss_envelope,
    rate_verdict,
    stable_rank_bound_from,
    theory,
    two_layer_status,
)
from trajscope.analysis.registry import QUANTITY_PARAMETERS, TWO_LAYER, doc_entries, quantity
from trajscope._format import fmt
from trajscope.store.dataset_attrs import run_attr


#: a run of at most this many bytes (``ds.nbytes``) is read into memory before its summary: dask's graphs for the
#: summary's ~30 reductions cost about half a second of Python whatever the run's size, which ``compare`` paid for
#: every run (``bench/summary_speed.py``: 0.495 s a 101-state run lazily, 0.100 s read first, the same numbers).
#: Above it the summary stays lazy, its memory a few chunks, where reading a run first costs several times its size
IN_MEMORY_BYTES = 16 * 2**20

_LIGHT_BYTES = 4 * 2**20
"""Target bytes per dask chunk of the small per-step data (``v``, ``loss``, ``t``, the series)."""


def _light_steps(sel: xr.Dataset) -> int | None:
    """States per dask chunk for the small per-step data: about ``_LIGHT_BYTES`` of ``v`` or of the series.

    The reductions over per-step scalars (``t1``, ``t2``, the slope, sign flips, maxima) then cost a
    few dask tasks per ~4 MiB of series instead of a few per chunk of ``W`` (which holds only tens of
    states); memory stays bounded by that chunk size. ``None`` when ``W`` is not dask-backed.
    """
    if sel["W"].chunks is None:
        return None
    per_step = max(4 * sel.sizes.get("neuron", 1), 8 * len(SERIES))
    return max(max(sel["W"].chunks[0]), _LIGHT_BYTES // per_step)


def _measured(ds: xr.Dataset, step: StepSel, drop: float) -> xr.Dataset:
    """The measured headline numbers, lazily, from ONE fused kernel per time chunk of ``W``.

    ``t1`` and ``max_t max_j |δ_j(t) - δ_j(t_0)|`` are reductions over the small per-step series of
    :func:`~trajscope.analysis.series.step_series` (without the alignment and spectral series, which
    the summary needs only at the last state, computed there alone); ``t2``, the slope, sign flips and
    the envelope read only ``loss``, ``t`` and ``v``. All but the kernel work on large step chunks
    (:func:`_light_steps`).
    """
    sel = select(ds, step)
    last = {"step": -1}
    steps = _light_steps(sel)
    light = sel.drop_vars([n for n in ("W", "output") if n in sel.variables])
    light = light.chunk({"step": steps}) if steps else light
    if "t" in light.coords:
        # load the time coordinate (8 bytes per state, like the step index): lazy, xarray compares it
        # (reading it whole) every time two operands' coordinates are merged
        light = light.assign_coords(t=light["t"].compute())
    series = step_series(ds, step, detail="none", chunk_steps=steps)
    series = series.assign_coords({c: light[c] for c in ("t",) if c in series.coords})
    # every series at the last state (shares the read of W's last chunk with the kernel above)
    final = step_series(sel.isel(step=slice(-1, None))).isel(step=0, drop=True)
    out = xr.merge([t1_from(series["all_aligned"], light), t2(light, drop=drop)])
    out["post_t2_slope"] = post_t2_slope(light, drop=drop)
    steps_f = series["step"].astype(np.float64)
    agreement = series["cone_agreement_mean"]
    best_step = xr.where(agreement == agreement.max("step"), steps_f, np.nan).min("step")
    at_t1 = steps_f == out["t1_step"]
    out = out.assign(
        first_step=sel["step"].isel(step=0, drop=True).astype(np.float64),
        last_step=sel["step"].isel(last, drop=True).astype(np.float64),
        loss_initial=light["loss"].isel(step=0, drop=True),
        loss_final=light["loss"].isel(last, drop=True),
        aligned_fraction_final=final["aligned_fraction"],
        mean_alignment_pos_final=final["mean_alignment_pos"],
        mean_alignment_neg_final=final["mean_alignment_neg"],
        frac_S_pos_final=final["frac_S_pos"],
        frac_S_neg_final=final["frac_S_neg"],
        frac_dead_final=final["frac_dead"],
        frac_other_final=final["frac_other"],
        spectral_norm_sq_final=final["spectral_norm_sq"],
        frobenius_norm_sq_final=final["frobenius_norm_sq"],
        stable_rank_final=final["stable_rank"],
        effective_rank_final=final["effective_rank"],
        max_balance_drift=series["max_balance_drift"].max("step", skipna=False),  # (a diverged run's: NaN)
        sign_flips_total=sign_flips(light).sum("neuron"),
        loss_envelope_final=loss_envelope(light, drop=drop).isel(last, drop=True),
        loss_at_t2=xr.where(light["step"] == out["t2_step"], light["loss"], np.nan).max("step"),
        envelope_ratio_max=envelope_ratio_max(light, drop=drop),
        aligned_fraction_max=series["aligned_fraction"].max("step"),
        in_cone_fraction_max=(1.0 - series["frac_other"]).max("step"),
        cone_agreement_best=agreement.max("step"),
        cone_agreement_best_step=best_step,
        cone_agreement_min_at_best=xr.where(steps_f == best_step, series["cone_agreement_min"], np.nan).max("step"),
        frac_S_pos_at_t1=xr.where(at_t1, series["frac_S_pos"], np.nan).max("step"),
        frac_S_neg_at_t1=xr.where(at_t1, series["frac_S_neg"], np.nan).max("step"),
        stable_rank_bound_final=stable_rank_bound_from(ds, final["spectral_norm_sq"]),
    )
    return out.drop_vars([c for c in out.coords], errors="ignore")


def data_warnings(ds: xr.Dataset) -> list[str]:
    """Warnings about the data a run trained on, for ``show`` and reports.

    The producer stores them in ``data_info["warnings"]``; for runs recorded before that, the one rule
    is re-derived here: centring (``data.center``) moved the separation ``μ`` away from the value the
    config asked for (``data.mu`` of synthetic data, ``sin(angle)`` of two-point data) by more than 1 %.

    Parameters
    ----------
    ds
        A run's dataset (its ``data_info`` and ``config`` attributes are read).

    Returns
    -------
    list of str
        The warnings, empty when there are none.
    """
    info = run_attr(ds, "data_info") or {}
    if "warnings" in info:
        return [str(w) for w in info["warnings"]]
    kind, center = cfg(ds, "data", "kind"), cfg(ds, "data", "center")
    requested = cfg(ds, "data", "mu") if kind == "synthetic" else (
        math.sin(float(cfg(ds, "data", "angle"))) if kind == "two_point" and cfg(ds, "data", "angle") is not None
        else None)
    achieved = info.get("mu")
    if not center or requested is None or achieved is None:
        return []
    if abs(float(achieved) - float(requested)) <= 0.01 * abs(float(requested)):
        return []
    return [f"data.center changed μ: the config asks for μ = {float(requested):.4g}, the run trained on "
            f"μ = {float(achieved):.4g} (centring moves every sample); set data.center: false to keep the requested μ"]


@doc_entries(*QUANTITY_PARAMETERS)
def divergence_warning(ds: xr.Dataset, step: StepSel = None) -> str | None:
    """A warning when the recorded loss (a number per state) is not finite at the last selected state: the run
    diverged; named from the first state of the non-finite stretch it ends with (found by a review: a diverged
    run ended `complete` with no word of it in ``show`` or the dashboard). A NaN before a finite loss is no
    divergence (a module run's loss missing from a call, its first state's before any step).

    Returns
    -------
    str or None
        The warning; ``None`` when the run records no per-state loss or the selection ends on a finite loss.
    """
    if "loss" not in ds.variables or ds["loss"].dims != ("step",):
        return None
    sel = select(ds, step)
    loss = np.asarray(sel["loss"].values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(loss))
    first = int(finite[-1]) + 1 if finite.size else 0  # the stretch of non-finite states the selection ends with
    if first >= loss.size:
        return None
    return (f"the loss is {loss[first]} from step {int(sel['step'].values[first])} on ({loss.size - first} of "
            f"{loss.size} states): the run diverged; the quantities of those states are NaN or inf (try a smaller "
            "learning rate or initialization scale)")


V_FIXED_DRIFT = ("not applicable: v_j² - ||w_j||² is conserved only when v trains; with v fixed it changes by "
                 "||w_j(t)||² - ||w_j(0)||²")
V_FIXED_FLIPS = "not applicable: v is fixed (train.train_v = false), its signs cannot change"


@quantity(requires=TWO_LAYER, series=False)
@doc_entries(DROP_ENTRY)
def summary(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.Dataset:
    """All headline numbers of a run as a dataset of 0-d variables (computed, one pass over ``W``).

    Each variable has attrs ``kind`` (``"data"``, ``"measured"`` or ``"theory"``) and, for theory,
    ``status``. The measured part is computed in a single ``dask.compute`` so each chunk of ``W`` is
    read once; memory stays a few chunks.

    Readings added as attrs: ``t1_step.attrs["status"]`` (:func:`~trajscope.analysis.phases.t1_state`),
    ``envelope_ratio_max.attrs["verdict"]``/``["reason"]`` (the O(1/t) test,
    :data:`~trajscope.analysis.theory.RATE_RULE`), ``attrs["warnings"]`` (:func:`data_warnings`). On a run
    that trains ``W`` only, ``max_balance_drift`` and ``sign_flips_total`` are NaN with a "not applicable"
    status, as are the theory quantities of the small initialization. A run of at most :data:`IN_MEMORY_BYTES`
    is read into memory first (the same numbers, without dask's overhead).

    Returns
    -------
    xr.Dataset
        Computed 0-d variables: the data geometry (with ``h`` and ``n_states``), the measurements and the theory
        (:func:`~trajscope.analysis.theory.theory`); attrs ``run_id``, ``t2_drop``, ``step_selection``, ``warnings``
        and, when the config asked for a ``μ``, ``mu_requested``.
    """
    if ds.nbytes <= IN_MEMORY_BYTES and any(v.chunks is not None for v in ds.variables.values()):
        ds = ds.compute()
    sel = select(ds, step)
    data = data_geometry(ds)
    data["h"] = xr.DataArray(int(ds.sizes["neuron"]))
    data["n_states"] = xr.DataArray(int(sel.sizes["step"]))
    th = theory(ds)
    measured = _measured(ds, step, drop).merge(data, compat="override")
    measured = measured.compute()
    for name in measured.data_vars:
        measured[name].attrs.setdefault("kind", "data" if name in data else "measured")
    for name in ("loss_envelope_final", "stable_rank_bound_final"):
        measured[name].attrs.update(kind="theory")
    if two_layer_status(ds) != OK:
        for name, why in (("max_balance_drift", V_FIXED_DRIFT), ("sign_flips_total", V_FIXED_FLIPS)):
            measured[name] = xr.DataArray(np.nan, attrs={"kind": "measured", "status": why})
    out = measured.merge(th)
    out["t1_step"].attrs["status"] = t1_state(float(out["t1_step"]), float(out["in_cone_fraction_max"]))
    verdict, reason = rate_verdict(out["envelope_ratio_max"].attrs["status"], float(out["envelope_ratio_max"]),
                                   float(out["t1_step"]), float(out["t2_step"]), float(out["frac_S_pos_at_t1"]),
                                   float(out["frac_S_neg_at_t1"]))
    out["envelope_ratio_max"].attrs.update(verdict=verdict, reason=reason, rule=RATE_RULE)
    info = run_attr(ds, "data_info") or {}
    out.attrs.update(run_id=ds.attrs.get("run_id", "run"), t2_drop=drop,
                     step_selection=str(step) if step is not None else "all",
                     warnings=[*data_warnings(ds), *filter(None, [divergence_warning(ds, step)])])
    if info.get("mu_requested") is not None:
        out.attrs["mu_requested"] = float(info["mu_requested"])
    return out


# (label, measured variable, theory variable or a constant string, unit)
SIDE_BY_SIDE: list[tuple[str, str | None, str | None, str]] = [
    ("t1 alignment", "t1_step", "t1_scale_step", "steps"),
    ("t1 alignment", "t1_time", "t1_scale_time", "gradient-flow time"),
    ("t1 bound 16 log n/(min{ζ,ξ}√μ X_min)", None, "t1_bound_time", "gradient-flow time"),
    ("t2 loss onset", "t2_step", "t2_scale_step", "steps"),
    ("t2 loss onset", "t2_time", "t2_scale_time", "gradient-flow time"),
    ("O(1/t): max L/envelope after t2", "envelope_ratio_max", "≤ 1", ""),
    ("loss (final) vs O(1/t) envelope", "loss_final", "loss_envelope_final", "loss"),
    ("post-t2 log-log slope (description)", "post_t2_slope", None, ""),
    ("stable rank (final) vs bound", "stable_rank_final", "stable_rank_bound_final", ""),
    ("stable rank limit", None, "stable_rank_limit", ""),
    ("effective rank (final)", "effective_rank_final", None, ""),
    ("||W||_2² (final)", "spectral_norm_sq_final", None, ""),
    ("aligned fraction (final)", "aligned_fraction_final", None, ""),
    ("cos(w̄+, x+) (final)", "mean_alignment_pos_final", None, ""),
    ("cos(w̄-, x-) (final)", "mean_alignment_neg_final", None, ""),
    ("neurons in S+ / S- / dead / other (final)", "cones", None, "fraction"),
    ("max |Δ(v_j² - ||w_j||²)|", "max_balance_drift", None, ""),
    ("sign flips of v_j", "sign_flips_total", None, ""),
    ("loss initial → final", "loss_range", None, "loss"),
    ("ζ1, ζ2", None, "zetas", ""),
    ("envelope rate α", None, "envelope_alpha", ""),
    ("ε (init scale)", None, "epsilon", ""),
]

DATA_ROWS: list[tuple[str, str]] = [
    ("n (n+ / n-)", "counts"), ("D", "D"), ("h", "h"), ("μ (Assumption 1: μ > 0)", "mu"),
    ("X_min", "X_min"), ("X_max", "X_max"), ("cos(x+, x-)", "cos_xpos_xneg"), ("recorded states", "states"),
]


def _status(s: xr.Dataset, name: str) -> str:
    return str(s[name].attrs.get("status", "ok")) if name in s else "ok"


def _usable(status: str) -> bool:
    return status == "ok" or status.startswith("approximate")


def _theory_text(s: xr.Dataset, name: str) -> str:
    status = _status(s, name)
    if _usable(status):
        text = fmt(s[name].values)
        return text + (" (approx.)" if status.startswith("approximate") else "")
    return status


_BOUNDS = ("t1_bound_time", "loss_envelope_final", "stable_rank_bound_final", "≤ 1")
_T1_VARS = ("t1_step", "t1_time")


def _measured_text(s: xr.Dataset, m: str) -> str:
    if m == "cones":
        return " / ".join(fmt(s[k].values) for k in ("frac_S_pos_final", "frac_S_neg_final",
                                                     "frac_dead_final", "frac_other_final"))
    if m == "loss_range":
        return f"{fmt(s['loss_initial'].values)} → {fmt(s['loss_final'].values)}"
    if m in _T1_VARS and math.isnan(float(s[m])):
        return t1_text(s) if m == "t1_step" else s["t1_step"].attrs.get("status", "not reached")
    if m in ("t2_step", "t2_time") and math.isnan(float(s[m])):
        return "not reached"
    if m == "envelope_ratio_max":
        attrs = s[m].attrs
        if attrs.get("verdict") in ("not applicable", "undecided"):
            return f"{attrs['verdict']}: {attrs.get('reason', '')}"
        return f"{fmt(s[m].values)} ({attrs.get('verdict', '?')})"
    return fmt(s[m].values)


def summary_rows(s: xr.Dataset) -> list[dict[str, str]]:
    """Rows ``{quantity, measured, theory, unit, note}`` of a :func:`summary` for tables (CLI, API).

    Only what applies is shown: a quantity whose value is "not applicable" (W-only runs: the theory of
    the small initialization, the balancedness drift, the sign flips) is left out of its row and listed
    at the end under "not shown", with the reason.

    Parameters
    ----------
    s
        A :func:`summary` dataset.

    Returns
    -------
    list of dict
        Rows with str values under ``quantity``, ``measured``, ``theory``, ``unit`` and ``note``: the data rows, then
        the measured/theory rows, then one ``"not shown: …"`` row per reason.
    """
    rows: list[dict[str, str]] = []
    hidden: dict[str, list[str]] = {}

    def hide(label: str, status: str) -> None:
        reason = status.removeprefix("not applicable: ")
        hidden.setdefault(reason, [])
        if label not in hidden[reason]:
            hidden[reason].append(label)

    for label, key in DATA_ROWS:
        if key == "counts":
            val = f"{fmt(s['n'].values)} ({fmt(s['n_pos'].values)} / {fmt(s['n_neg'].values)})"
        elif key == "states":
            val = f"{fmt(s['n_states'].values)} (steps {fmt(s['first_step'].values)}–{fmt(s['last_step'].values)})"
        elif key == "mu":
            val = f"{fmt(s['mu'].values)} ({'holds' if bool(s['assumption1']) else 'fails'})"
            if "mu_requested" in s.attrs:
                val += f"; config asked for {fmt(s.attrs['mu_requested'])}"
        else:
            val = fmt(s[key].values)
        rows.append({"quantity": label, "measured": val, "theory": "", "unit": "", "note": "data"})
    for label, m, t, unit in SIDE_BY_SIDE:
        mv, m_hidden = "", False
        if m is not None:
            if m in s and _status(s, m).startswith("not applicable"):
                hide(label, _status(s, m))
                m_hidden = True
            else:
                mv = _measured_text(s, m)
        tv = ""
        if t == "zetas":
            shown = [f"ζ{k[-1]} = {_theory_text(s, k)}" for k in ("zeta1", "zeta2") if _usable(_status(s, k))]
            for k in ("zeta1", "zeta2"):
                if _status(s, k).startswith("not applicable"):
                    hide(f"ζ{k[-1]}", _status(s, k))
            tv = ", ".join(shown)
        elif t is not None and t in s:
            if _status(s, t).startswith("not applicable"):
                hide(f"{label} (theory)" if m else label, _status(s, t))
            else:
                tv = _theory_text(s, t)
        elif t is not None and not m_hidden:
            tv = t
        if not mv and not tv:
            continue
        note = "scale (order of magnitude)" if t and "scale" in t else ("bound" if t in _BOUNDS and tv else "")
        if m == "post_t2_slope":
            note = "description, not a test (O(1/t) is judged by the envelope)"
        rows.append({"quantity": label, "measured": mv, "theory": tv, "unit": unit, "note": note})
    for reason, labels in hidden.items():
        rows.append({"quantity": "not shown: " + ", ".join(labels), "measured": "", "theory": "", "unit": "",
                     "note": reason})
    return rows
