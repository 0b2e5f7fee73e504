"""What the paper predicts, labelled as theory (bounds and scales, never measurements).

Every scalar is a 0-d DataArray with attrs ``kind="theory"``, ``status`` (``"ok"``, ``"approximate:
…"``, ``"assumption fails: …"``, ``"unknown: …"`` or ``"not computed: …"``), ``long_name``, ``units``.
When the status is not ``ok``/``approximate`` the value is NaN. Scalars depend only on ``X``, ``y``,
``W(0)`` and the config and are computed eagerly; the per-step curves are lazy.

Time conversions: the theorems use the sum loss, whose gradient-flow time ``τ`` relates to the time
``t`` of a mean-loss run by ``τ = t / n``; scales are reported in the run's own convention and in
optimizer steps (``t / η``).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, cfg, loss_kind, loss_reduction, lr, select, time_coord
from trajscope.analysis.geometry import class_sums, inputs, mu_value, sample_norms, x_max, x_min
from trajscope.analysis.phases import T2_DROP, t2
from trajscope.analysis.spectra import spectral_norm_sq
from trajscope.analysis.registry import TWO_LAYER, quantity

OK = "ok"


def _scalar(value: float, status: str, long_name: str, units: str = "1") -> xr.DataArray:
    ok = status == OK or status.startswith("approximate")
    out = xr.DataArray(float(value) if ok else np.nan)
    out.attrs.update(kind="theory", status=status, long_name=long_name, units=units)
    return out


_W0_CACHE: dict[str, xr.DataArray] = {}


def first_weights(ds: xr.Dataset) -> xr.DataArray:
    """``W(0)`` (the first recorded state, float64, loaded): read once per distinct lazy ``W``."""
    W = ds["W"]
    if W.chunks is None:
        return W.isel(step=0).astype(np.float64)
    from dask.base import tokenize

    key = tokenize(W.data)
    if key not in _W0_CACHE:
        if len(_W0_CACHE) > 8:
            _W0_CACHE.clear()
        _W0_CACHE[key] = W.isel(step=0).astype(np.float64).compute()
    return _W0_CACHE[key]


def _mu_status(ds: xr.Dataset) -> tuple[float, str]:
    mu = mu_value(ds)
    if not mu > 0:
        return mu, f"assumption fails: μ = {mu:.3g} ≤ 0 (data not well separated)"
    return mu, OK


def _time_factor(ds: xr.Dataset) -> tuple[float, str]:
    """Factor from sum-loss time to the run's time: 1 (sum) or n (mean)."""
    red = loss_reduction(ds)
    if red is None:
        return np.nan, "unknown: config loss.reduction missing"
    return (float(ds.sizes["sample"]) if red == "mean" else 1.0), OK


def _init_note(ds: xr.Dataset) -> str:
    kind = cfg(ds, "init", "kind")
    notes = []
    if kind != "balanced":
        notes.append(f"theorem assumes balanced init (run: {kind or 'unknown'})")
    if loss_kind(ds) == "logistic":
        notes.append("theorem stated for the exponential loss")
    return "approximate: " + "; ".join(notes) if notes else OK


def _worst(*statuses: str) -> str:
    for prefix in ("assumption fails", "unknown", "not computed"):
        for s in statuses:
            if s.startswith(prefix):
                return s
    approx = [s for s in statuses if s.startswith("approximate")]
    return approx[0] if approx else OK


@quantity(requires=TWO_LAYER)
def zeta1(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``ζ1 = min_i min(cos²(x_i, x+), cos²(x_i, x-))``: ``sin²`` of the half-angle of the largest cap
    around ``x±`` inside ``S±`` (the nearest sample hyperplane ``x_i^⊥`` bounds it)."""
    s = class_sums(ds)
    X = inputs(ds).astype(np.float64)
    c = xr.dot(X, s, dim="feature") / (sample_norms(ds) * np.sqrt((s**2).sum("feature")))
    return _scalar(float((c**2).min().compute()), OK, "ζ1 = min_i cos²(x_i, x±)")


@quantity(requires=TWO_LAYER)
def zeta2(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``ζ2 = 1 - max(0, m)²`` with ``m = max(max_{j∈V+} cos(w_j(0), x-), max_{j∈V-} cos(w_j(0), x+))``.

    Evaluated at the first recorded state (the init). ``max(0, ·)``: a neuron pointing away from the
    wrong class sum does not shrink ``ζ2``.
    """
    W0 = first_weights(ds)
    v0 = ds["v"].isel(step=0).compute()
    s = class_sums(ds).compute()
    norms = np.sqrt((W0**2).sum("feature")) * np.sqrt((s**2).sum("feature"))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = xr.dot(W0, s, dim="feature") / norms
    cand = np.concatenate(
        [c.sel(label=-1).values[(v0 > 0).values], c.sel(label=1).values[(v0 < 0).values]]
    )
    cand = cand[np.isfinite(cand)]
    if cand.size == 0:
        return _scalar(np.nan, "unknown: no neuron with v_j ≠ 0 at init", "ζ2")
    m = max(0.0, float(cand.max()))
    return _scalar(1.0 - m**2, OK, "ζ2 = 1 - max(0, max cos(w_j(0), x_∓))²")


@quantity(requires=TWO_LAYER)
def epsilon(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Initialization scale ``ε``: the config's ``init.scale`` for a balanced init, otherwise the rms
    neuron norm ``sqrt(mean_j ||w_j(0)||²)`` (equal to ``ε`` in expectation for balanced, ``α√D`` for
    gaussian)."""
    if cfg(ds, "init", "kind") == "balanced" and cfg(ds, "init", "scale") is not None:
        return _scalar(float(cfg(ds, "init", "scale")), OK, "initialization scale ε (config)")
    W0 = first_weights(ds)
    rms = float(np.sqrt((W0**2).sum("feature").mean()))
    return _scalar(rms, "approximate: ε estimated as rms_j ||w_j(0)||", "initialization scale ε")


@quantity(requires=TWO_LAYER)
def t1_scale(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Alignment time scale ``log n / (√μ X_min)`` (sum-loss time; ×n for a mean-loss run).

    Also ``t1_bound``: ``16 log n / (min{ζ, ξ} √μ X_min)`` is *not computed*: the cone margin ``ξ`` of
    the paper is not derived here.
    """
    mu, st_mu = _mu_status(ds)
    fac, st_f = _time_factor(ds)
    n = ds.sizes["sample"]
    status = _worst(st_mu, st_f, _init_note(ds))
    value = fac * math.log(n) / (math.sqrt(mu) * float(x_min(ds))) if status in (OK,) or status.startswith("approximate") else np.nan
    eta = lr(ds)
    return xr.Dataset(
        {
            "t1_scale_time": _scalar(value, status, "t1 scale log n/(√μ X_min)", "gradient-flow time"),
            "t1_scale_step": _scalar(value / eta if eta else np.nan, status if eta else "unknown: lr missing",
                                     "t1 scale log n/(√μ X_min)", "optimizer steps"),
            "t1_bound_time": _scalar(np.nan, "not computed: the cone margin ξ of the bound is not derived",
                                     "t1 bound 16 log n/(min{ζ,ξ} √μ X_min)", "gradient-flow time"),
        }
    )


@quantity(requires=TWO_LAYER)
def t2_scale(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Convergence onset scale ``(1/n) log(1/(√h ε))`` (sum-loss time; ×n, i.e. ``log(1/(√h ε))``, for
    a mean-loss run). Needs ``√h ε < 1``."""
    fac, st_f = _time_factor(ds)
    eps = epsilon(ds)
    h = ds.sizes["neuron"]
    n = ds.sizes["sample"]
    arg = math.sqrt(h) * float(eps) if np.isfinite(float(eps)) else np.nan
    st_small = OK if arg < 1 else f"assumption fails: √h ε = {arg:.3g} ≥ 1 (init not small)"
    status = _worst(st_f, st_small, eps.attrs["status"], _init_note(ds))
    ok = status == OK or status.startswith("approximate")
    value = fac * math.log(1.0 / arg) / n if ok else np.nan
    eta = lr(ds)
    return xr.Dataset(
        {
            "t2_scale_time": _scalar(value, status, "t2 scale (1/n) log(1/(√h ε))", "gradient-flow time"),
            "t2_scale_step": _scalar(value / eta if eta else np.nan, status if eta else "unknown: lr missing",
                                     "t2 scale (1/n) log(1/(√h ε))", "optimizer steps"),
        }
    )


@quantity(requires=TWO_LAYER)
def envelope_alpha(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Rate constant of the ``O(1/t)`` envelope: ``α = (μ X_min)² / (32 X_max)``."""
    mu, st = _mu_status(ds)
    status = _worst(st, _init_note(ds))
    ok = status == OK or status.startswith("approximate")
    value = (mu * float(x_min(ds))) ** 2 / (32.0 * float(x_max(ds))) if ok else np.nan
    return _scalar(value, status, "α = (μ X_min)²/(32 X_max)")


@quantity(requires=TWO_LAYER)
def loss_envelope(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.DataArray:
    """The ``O(1/t)`` envelope ``L(t2) / (L(t2) α (t - t2) + 1)`` for ``t ≥ t2`` (NaN before), from the
    empirical ``t2``; dims ``(step,)``.

    The same expression holds for a mean-loss run in its own ``L`` and ``t`` (``L_sum = n L_mean`` and
    ``τ = t/n`` cancel). Attrs carry the ``status``.
    """
    sel = select(ds, step)
    alpha = envelope_alpha(ds)
    ph = t2(ds, step, drop=drop)
    times = time_coord(sel).astype(np.float64)
    L = sel["loss"].astype(np.float64)
    L2 = xr.where(sel["step"] == ph["t2_step"], L, np.nan).max("step")
    env = L2 / (L2 * float(alpha) * (times - ph["t2_time"]) + 1.0)
    out = xr.where(times >= ph["t2_time"], env, np.nan)
    out.name = "loss_envelope"
    out.attrs.update(kind="theory", status=alpha.attrs["status"], long_name="O(1/t) loss envelope from t2",
                     units="loss")
    return out


@quantity(requires=TWO_LAYER)
def stable_rank_bound(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``||W||_F²/||W||_2² ≤ 2 + 4√h ε W_max² / ||W(t)||_2²`` with ``W_max = max_j ||w_j(0)|| / ε``
    (the row-norm maximum of ``W0``); tends to 2 as ``||W||_2`` grows. Dims ``(step,)``."""
    return stable_rank_bound_from(ds, spectral_norm_sq(ds, step))


def stable_rank_bound_from(ds: xr.Dataset, spectral_norm_sq: xr.DataArray) -> xr.DataArray:
    """:func:`stable_rank_bound` from given values of ``||W(t)||_2²`` (e.g. only the final one):
    ``2 + c / ||W(t)||_2²`` with ``c = 4√h ε W_max² = 4√h max_j ||w_j(0)||² / ε``."""
    eps = epsilon(ds)
    status = _worst(eps.attrs["status"], _init_note(ds))
    W0 = first_weights(ds)
    wmax0_sq = float((W0**2).sum("feature").max())  # max_j ||w_j(0)||² = ε² W_max²
    h = ds.sizes["neuron"]
    e = float(eps)
    coef = 4.0 * math.sqrt(h) * wmax0_sq / e if e > 0 else np.nan
    out = 2.0 + coef / spectral_norm_sq
    out.name = "stable_rank_bound"
    out.attrs.update(kind="theory", status=status, long_name="stable-rank bound 2 + 4√h ε W_max²/||W||_2²",
                     units="1")
    return out


@quantity(requires=TWO_LAYER)
def theory(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """All theory scalars: ``ζ1``, ``ζ2``, ``ε``, ``t1`` scale (and the uncomputed bound), ``t2`` scale,
    ``α``, the stable-rank limit 2."""
    out = xr.Dataset({"zeta1": zeta1(ds), "zeta2": zeta2(ds), "epsilon": epsilon(ds),
                      "envelope_alpha": envelope_alpha(ds)})
    out = out.merge(t1_scale(ds)).merge(t2_scale(ds))
    out["stable_rank_limit"] = _scalar(2.0, _init_note(ds), "stable-rank limit (t → ∞)")
    return out
