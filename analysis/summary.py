"""One call, all headline numbers of a run: data geometry, measurements, and the theory beside them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select
from trajscope.analysis.geometry import data_geometry
from trajscope.analysis.invariants import sign_flips
from trajscope.analysis.phases import T2_DROP, post_t2_slope, t1_from, t2
from trajscope.analysis.series import SERIES, step_series
from trajscope.analysis.theory import loss_envelope, stable_rank_bound_from, theory
from trajscope.analysis.registry import TWO_LAYER, quantity


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
        max_balance_drift=series["max_balance_drift"].max("step"),
        sign_flips_total=sign_flips(light).sum("neuron"),
        loss_envelope_final=loss_envelope(light, drop=drop).isel(last, drop=True),
        stable_rank_bound_final=stable_rank_bound_from(ds, final["spectral_norm_sq"]),
    )
    return out.drop_vars([c for c in out.coords], errors="ignore")


@quantity(requires=TWO_LAYER)
def summary(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.Dataset:
    """All headline numbers of a run as a dataset of 0-d variables (computed, one pass over ``W``).

    Each variable has attrs ``kind`` (``"data"``, ``"measured"`` or ``"theory"``) and, for theory,
    ``status``. The measured part is computed in a single ``dask.compute`` so each chunk of ``W`` is
    read once; memory stays a few chunks.
    """
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
    out = measured.merge(th)
    out.attrs.update(run_id=ds.attrs.get("run_id", "run"), t2_drop=drop,
                     step_selection=str(step) if step is not None else "all")
    return out


# (label, measured variable, theory variable or a constant string, unit)
SIDE_BY_SIDE: list[tuple[str, str | None, str | None, str]] = [
    ("t1 alignment", "t1_step", "t1_scale_step", "steps"),
    ("t1 alignment", "t1_time", "t1_scale_time", "gradient-flow time"),
    ("t1 bound 16 log n/(min{ζ,ξ}√μ X_min)", None, "t1_bound_time", "gradient-flow time"),
    ("t2 loss onset", "t2_step", "t2_scale_step", "steps"),
    ("t2 loss onset", "t2_time", "t2_scale_time", "gradient-flow time"),
    ("post-t2 log-log slope", "post_t2_slope", "≤ -1", ""),
    ("loss (final) vs O(1/t) envelope", "loss_final", "loss_envelope_final", "loss"),
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


def fmt(value: Any, digits: int = 4) -> str:
    """Format a number for tables: ``digits`` significant digits, integers plain, NaN as ``"—"``."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "—"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.{digits}g}"


def _theory_text(s: xr.Dataset, name: str) -> str:
    var = s[name]
    status = var.attrs.get("status", "ok")
    if status == "ok" or status.startswith("approximate"):
        text = fmt(var.values)
        return text + (" (approx.)" if status.startswith("approximate") else "")
    return status


_BOUNDS = ("t1_bound_time", "loss_envelope_final", "stable_rank_bound_final", "≤ -1")


def summary_rows(s: xr.Dataset) -> list[dict[str, str]]:
    """Rows ``{quantity, measured, theory, unit, note}`` of a :func:`summary` for tables (CLI, API)."""
    rows: list[dict[str, str]] = []
    for label, key in DATA_ROWS:
        if key == "counts":
            val = f"{fmt(s['n'].values)} ({fmt(s['n_pos'].values)} / {fmt(s['n_neg'].values)})"
        elif key == "states":
            val = f"{fmt(s['n_states'].values)} (steps {fmt(s['first_step'].values)}–{fmt(s['last_step'].values)})"
        elif key == "mu":
            val = f"{fmt(s['mu'].values)} ({'holds' if bool(s['assumption1']) else 'fails'})"
        else:
            val = fmt(s[key].values)
        rows.append({"quantity": label, "measured": val, "theory": "", "unit": "", "note": "data"})
    for label, m, t, unit in SIDE_BY_SIDE:
        if m == "cones":
            mv = " / ".join(fmt(s[k].values) for k in ("frac_S_pos_final", "frac_S_neg_final",
                                                       "frac_dead_final", "frac_other_final"))
        elif m == "loss_range":
            mv = f"{fmt(s['loss_initial'].values)} → {fmt(s['loss_final'].values)}"
        elif m is None:
            mv = ""
        else:
            mv = fmt(s[m].values)
            if m in ("t1_step", "t1_time", "t2_step", "t2_time") and math.isnan(float(s[m])):
                mv = "not reached"
        if t is None:
            tv = ""
        elif t == "zetas":
            tv = f"{_theory_text(s, 'zeta1')}, {_theory_text(s, 'zeta2')}"
        elif t in s:
            tv = _theory_text(s, t)
        else:
            tv = t
        note = "scale (order of magnitude)" if t and "scale" in t else ("bound" if t in _BOUNDS else "")
        rows.append({"quantity": label, "measured": mv, "theory": tv, "unit": unit, "note": note})
    return rows
