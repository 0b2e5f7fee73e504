"""One call, all headline numbers of a run: data geometry, measurements, and the theory beside them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select
from trajscope.analysis.alignment import mean_neuron_alignment
from trajscope.analysis.cones import aligned_fraction, cone_fractions
from trajscope.analysis.geometry import data_geometry
from trajscope.analysis.invariants import max_balance_drift, sign_flips
from trajscope.analysis.phases import T2_DROP, phases
from trajscope.analysis.spectra import effective_rank, frobenius_norm_sq, spectral_norm_sq, stable_rank
from trajscope.analysis.theory import loss_envelope, stable_rank_bound, theory


def _measured(ds: xr.Dataset, step: StepSel, drop: float) -> xr.Dataset:
    sel = select(ds, step)
    last = {"step": -1}
    mna = mean_neuron_alignment(ds, step)["mean"].isel(last, drop=True)
    cones = cone_fractions(ds, step).isel(last, drop=True)
    out = phases(ds, step, drop=drop)
    out = out.assign(
        first_step=sel["step"].isel(step=0, drop=True).astype(np.float64),
        last_step=sel["step"].isel(last, drop=True).astype(np.float64),
        loss_initial=sel["loss"].isel(step=0, drop=True),
        loss_final=sel["loss"].isel(last, drop=True),
        aligned_fraction_final=aligned_fraction(ds, step).isel(last, drop=True),
        mean_alignment_pos_final=mna.sel(label=1, drop=True),
        mean_alignment_neg_final=mna.sel(label=-1, drop=True),
        frac_S_pos_final=cones.sel(cone="S+", drop=True),
        frac_S_neg_final=cones.sel(cone="S-", drop=True),
        frac_dead_final=cones.sel(cone="dead", drop=True),
        frac_other_final=cones.sel(cone="other", drop=True),
        spectral_norm_sq_final=spectral_norm_sq(ds, step).isel(last, drop=True),
        frobenius_norm_sq_final=frobenius_norm_sq(ds, step).isel(last, drop=True),
        stable_rank_final=stable_rank(ds, step).isel(last, drop=True),
        effective_rank_final=effective_rank(ds, step).isel(last, drop=True),
        max_balance_drift=max_balance_drift(ds, step).max("step"),
        sign_flips_total=sign_flips(ds, step).sum("neuron"),
        loss_envelope_final=loss_envelope(ds, step, drop=drop).isel(last, drop=True),
        stable_rank_bound_final=stable_rank_bound(ds, step).isel(last, drop=True),
    )
    return out.drop_vars([c for c in out.coords], errors="ignore")


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


def fmt(value: Any) -> str:
    """Format a number for tables: 4 significant digits, integers plain, NaN as ``"—"``."""
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
    return f"{x:.4g}"


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
