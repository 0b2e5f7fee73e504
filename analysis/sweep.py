"""Across runs: the sweep table (one row per run) and fits of how the phase times scale.

Pure functions: an :func:`~trajscope.analysis.summary.summary` dataset or rows/tables in, plain
records, ``pandas.DataFrame`` or a matplotlib ``Figure`` out; no I/O.

Time conventions: ``t1_time``/``t2_time`` are in the run's own gradient-flow time; the ``*_sum``
columns convert them to the theorems' sum-loss time (``τ = t / n`` for a mean-loss run).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from trajscope.store.dataset_attrs import run_attr

# summary variables copied into each row (all 0-d)
SUMMARY_FIELDS = (
    "n", "n_pos", "n_neg", "D", "h", "mu", "X_min", "X_max",
    "t1_step", "t1_time", "t2_step", "t2_time", "post_t2_slope",
    "loss_initial", "loss_final", "aligned_fraction_final",
    "mean_alignment_pos_final", "mean_alignment_neg_final",
    "stable_rank_final", "stable_rank_bound_final", "effective_rank_final", "spectral_norm_sq_final",
    "frac_S_pos_final", "frac_S_neg_final", "frac_dead_final", "frac_other_final",
    "max_balance_drift", "sign_flips_total", "last_step",
    "epsilon", "zeta1", "zeta2", "t1_scale_time", "t1_scale_step", "t2_scale_time", "t2_scale_step",
    "envelope_alpha",
    "envelope_ratio_max", "loss_envelope_final", "loss_at_t2", "frac_S_pos_at_t1", "frac_S_neg_at_t1",
    "aligned_fraction_max", "in_cone_fraction_max", "cone_agreement_best", "cone_agreement_best_step",
    "cone_agreement_min_at_best",
)
# readings of the summary kept as text: column -> (variable, attribute)
SUMMARY_TEXTS = {"t1_status": ("t1_step", "status"), "envelope_status": ("envelope_ratio_max", "status"),
                 "rate_verdict": ("envelope_ratio_max", "verdict"), "rate_reason": ("envelope_ratio_max", "reason")}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def summary_record(ds: xr.Dataset, s: xr.Dataset | None = None) -> dict[str, Any]:
    """One flat row of a run: config fields, the summary's headline numbers, time conversions.

    ``ds``: the run (``open_run``), ``s``: its summary (computed here when omitted).

    Parameters
    ----------
    ds
        A run's dataset, as ``open_run`` opens it.
    s
        The run's :func:`~trajscope.analysis.summary.summary` (``None``, the default: computed here).

    Returns
    -------
    dict
        Config fields (``lr``, ``reduction``, ``loss_kind``, ``init_kind``, ``init_scale``, ``train_v``,
        ``batch_size``, ``data_kind``, ``seed``), every :data:`SUMMARY_FIELDS` entry as a float (NaN when absent), the
        :data:`SUMMARY_TEXTS` columns, ``data_warnings``, the ``*_sum`` times and ``log_n_over_sqrt_mu_xmin``.
    """
    if s is None:
        from trajscope.analysis.summary import summary

        s = summary(ds)
    config = run_attr(ds, "config") or {}
    row: dict[str, Any] = {
        "lr": _float(config.get("train", {}).get("lr")),
        "reduction": config.get("loss", {}).get("reduction"),
        "loss_kind": config.get("loss", {}).get("kind"),
        "init_kind": config.get("init", {}).get("kind"),
        "init_scale": _float(config.get("init", {}).get("scale")),
        "train_v": config.get("train", {}).get("train_v"),
        "batch_size": config.get("train", {}).get("batch_size"),
        "data_kind": config.get("data", {}).get("kind"),
        "seed": config.get("seed"),
    }
    for name in SUMMARY_FIELDS:
        row[name] = _float(s[name].values) if name in s else math.nan
    for column, (name, attr) in SUMMARY_TEXTS.items():
        row[column] = str(s[name].attrs.get(attr, "")) if name in s else ""
    row["data_warnings"] = "; ".join(s.attrs.get("warnings", []))
    n = row["n"]
    factor = n if row["reduction"] == "mean" else 1.0
    for name in ("t1_time", "t2_time", "t1_scale_time", "t2_scale_time"):
        row[name.replace("_time", "_sum")] = row[name] / factor if factor else math.nan
    if n > 1 and row["mu"] > 0 and row["X_min"] > 0:
        row["log_n_over_sqrt_mu_xmin"] = math.log(n) / (math.sqrt(row["mu"]) * row["X_min"])
    else:
        row["log_n_over_sqrt_mu_xmin"] = math.nan
    return row


def sweep_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The sweep table: one row per run (swept ``param.*`` columns first, then the measurements).

    Parameters
    ----------
    rows
        One record per run (:func:`summary_record`'s, with ``run_id``, ``param.*``, ``action``, ``status`` where
        given).

    Returns
    -------
    pandas.DataFrame
        One row per run, with every summary column (NaN where missing).
    """
    table = pd.DataFrame(rows)
    for name in (*SUMMARY_FIELDS, "t1_sum", "t2_sum", "t1_scale_sum", "t2_scale_sum", "log_n_over_sqrt_mu_xmin"):
        if name not in table.columns:
            table[name] = math.nan  # a sweep whose runs all failed still has every column
    if "run_id" not in table.columns:
        return table
    params = [c for c in table.columns if c.startswith("param.")]
    first = ["run_id", *params, "action", "status"]
    rest = [c for c in table.columns if c not in first]
    return table[[c for c in first if c in table.columns] + rest]


def fit_power_law(table: pd.DataFrame, y: str, xs: dict[str, pd.Series | str]) -> dict[str, Any]:
    """Least squares ``log y = c + Σ_k a_k log x_k``: exponents ``a_k`` with standard errors.

    ``xs`` maps a name to a column of ``table`` or to a series aligned with it. Rows with a
    non-finite or non-positive value are dropped. Returns ``{exponents, stderr, intercept, r2, n}``.

    Parameters
    ----------
    table
        The rows to fit.
    y
        Column of ``table`` holding the response.
    xs
        Regressor name → column name of ``table``, or a series aligned with it.

    Returns
    -------
    dict
        ``exponents`` and ``stderr`` (name → float), ``intercept``, ``r2`` and ``n`` (rows used); NaN values when
        fewer than ``len(xs) + 2`` rows remain.
    """
    X = pd.DataFrame({k: (table[v] if isinstance(v, str) else v) for k, v in xs.items()}, index=table.index)
    Y = table[y].astype(float)
    ok = np.isfinite(Y) & (Y > 0)
    for k in X:
        ok &= np.isfinite(X[k].astype(float)) & (X[k].astype(float) > 0)
    n = int(ok.sum())
    out: dict[str, Any] = {"exponents": {k: math.nan for k in xs}, "stderr": {k: math.nan for k in xs},
                           "intercept": math.nan, "r2": math.nan, "n": n}
    p = len(xs) + 1
    if n < p + 1:
        return out
    A = np.column_stack([np.ones(n)] + [np.log(X[k][ok].astype(float).values) for k in xs])
    b = np.log(Y[ok].values)
    coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    resid = b - A @ coef
    dof = n - p
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.pinv(A.T @ A)
    total = float(((b - b.mean()) ** 2).sum())
    out.update(
        exponents={k: float(coef[i + 1]) for i, k in enumerate(xs)},
        stderr={k: float(math.sqrt(max(cov[i + 1, i + 1], 0.0))) for i, k in enumerate(xs)},
        intercept=float(coef[0]),
        r2=1.0 - float(resid @ resid) / total if total > 0 else math.nan,
    )
    return out


def fit_t1_scaling(table: pd.DataFrame, t1: str = "t1_sum") -> dict[str, Any]:
    """Fit ``t1 ∝ (log n)^a (1/√μ)^b`` over a sweep (the paper's bound: ``t1 = O(log n / √μ)``, ``a = b = 1``).

    Parameters
    ----------
    table
        A sweep table with columns ``n``, ``mu`` and ``t1``.
    t1
        Column of the measured ``t1`` (default ``t1_sum``, sum-loss time).

    Returns
    -------
    dict
        :func:`fit_power_law`'s result, exponents named ``"log n"`` and ``"1/√μ"`` (rows with ``μ ≤ 0`` dropped).
    """
    return fit_power_law(table, t1, {"log n": np.log(table["n"].astype(float)),
                                     "1/√μ": 1.0 / np.sqrt(table["mu"].astype(float).where(table["mu"] > 0))})


def fit_linear(table: pd.DataFrame, y: str, x: pd.Series | str) -> dict[str, Any]:
    """Least squares ``y = c + s x``: ``{slope, stderr, intercept, r2, n}`` over finite rows.

    Parameters
    ----------
    table
        The rows to fit.
    y
        Column of ``table`` holding the response.
    x
        Column name of ``table``, or a series aligned with it.

    Returns
    -------
    dict
        ``slope``, ``stderr``, ``intercept``, ``r2`` and ``n`` (finite rows); NaN values with fewer than 3 finite rows
        or a constant ``x``.
    """
    xv = (table[x] if isinstance(x, str) else x).astype(float)
    yv = table[y].astype(float)
    ok = np.isfinite(xv) & np.isfinite(yv)
    n = int(ok.sum())
    out = {"slope": math.nan, "stderr": math.nan, "intercept": math.nan, "r2": math.nan, "n": n}
    if n < 3 or xv[ok].nunique() < 2:
        return out
    fit = fit_power_law(pd.DataFrame({"y": np.exp(yv[ok].values), "x": np.exp(xv[ok].values)}), "y", {"x": "x"})
    out.update(slope=fit["exponents"]["x"], stderr=fit["stderr"]["x"], intercept=fit["intercept"], r2=fit["r2"])
    return out


def plot_t1_vs_scale(table: pd.DataFrame, *, t1: str = "t1_sum", title: str | None = None) -> Figure:
    """Measured ``t1`` (sum-loss time) against the theory scale ``log n / (√μ X_min)``, log–log, by ``μ``.

    Parameters
    ----------
    table
        A sweep table with columns ``mu``, ``log_n_over_sqrt_mu_xmin`` and ``t1``.
    t1
        Column of the measured ``t1`` (default ``t1_sum``).
    title
        The figure's title (default: a fixed description).

    Returns
    -------
    matplotlib.figure.Figure
        One scatter series per ``μ`` (rounded to 4 decimals); rows with a non-finite ``t1`` or scale left out.
    """
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    data = table[np.isfinite(table[t1].astype(float)) & np.isfinite(table["log_n_over_sqrt_mu_xmin"].astype(float))]
    for mu_value, group in data.groupby(data["mu"].round(4)):
        ax.scatter(group["log_n_over_sqrt_mu_xmin"], group[t1], label=f"μ ≈ {mu_value:g}", s=22)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("theory scale log n / (√μ X_min)")
    ax.set_ylabel("measured t1 (sum-loss gradient-flow time)")
    ax.legend(fontsize="small")
    ax.set_title(title or "alignment time across the sweep: measured vs scale")
    return fig


def plot_against_log_inv_eps(table: pd.DataFrame, *, columns: Sequence[str] = ("t1_time", "t2_time"),
                             title: str | None = None) -> Figure:
    """``t1`` and ``t2`` (the run's time) against ``log(1/ε)``; theory: ``t2`` grows linearly in it.

    Parameters
    ----------
    table
        A sweep table with column ``epsilon`` and the ``columns``.
    columns
        The time columns drawn (default ``t1_time`` and ``t2_time``).
    title
        The figure's title (default: a fixed description).

    Returns
    -------
    matplotlib.figure.Figure
        One scatter series per column.
    """
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.log(1.0 / table["epsilon"].astype(float))
    for column, marker in zip(columns, ("o", "s")):
        ax.scatter(x, table[column], marker=marker, label=column.replace("_time", ""))
    ax.set_xlabel("log(1/ε)")
    ax.set_ylabel("gradient-flow time (run's convention)")
    ax.legend()
    ax.set_title(title or "phase times against the initialization scale")
    return fig
