"""What the paper predicts, labelled as theory (bounds and scales, never measurements).

Every scalar is a 0-d DataArray with attrs ``kind="theory"``, ``status`` (``"ok"``, ``"approximate:
…"``, ``"not applicable: …"``, ``"assumption fails: …"``, ``"unknown: …"`` or ``"not computed: …"``),
``long_name``, ``units``.
When the status is not ``ok``/``approximate`` the value is NaN. Scalars depend only on ``X``, ``y``,
``W(0)`` and the config and are computed eagerly; the per-step curves are lazy.

Time conversions: the theorems use the sum loss, whose gradient-flow time ``τ`` relates to the time
``t`` of a mean-loss run by ``τ = t / n``; scales are reported in the run's own convention and in
optimizer steps (``t / η``).

Runs that train ``W`` only (``train.train_v = false``, ``v_j = ±1`` fixed) are outside every theorem:
their network is not a small initialization (``v`` is of order 1) and ``v_j² - ||w_j||²`` is not
conserved, so every theory quantity that involves the initialization or the dynamics is "not applicable"
there (:func:`two_layer_status`); only the data geometry (``μ``, ``X_min``, ``X_max``, ``ζ1``) remains.
Every theorem assumes ``μ > 0`` (Assumption 1): where the data break it, every theory value but ``ε`` is
"assumption fails" (``ζ1``'s cap around ``x+`` inside ``S+`` does not exist when ``x+ ∉ S+``). Minibatch SGD
(``train.batch_size``) is outside the theorems' gradient flow, which full-batch GD stands for: the time scales,
``α`` and the stable-rank bound are "not applicable" there (:func:`gradient_flow_status`).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, cfg, loss_kind, loss_reduction, lr, select, time_coord
from trajscope.analysis.geometry import class_sums, inputs, mu_value, sample_norms, x_max, x_min
from trajscope.analysis.phases import DROP_ENTRY, T2_DROP, t2
from trajscope.analysis.spectra import spectral_norm_sq
from trajscope.analysis.registry import (
    DS_ENTRY,
    QUANTITY_PARAMETERS,
    STEP_IGNORED_ENTRY,
    TWO_LAYER,
    doc_entries,
    ignores_step,
    quantity,
)

OK = "ok"


def _scalar(value: float, status: str, long_name: str, units: str = "1") -> xr.DataArray:
    ok = status == OK or status.startswith("approximate")
    out = xr.DataArray(float(value) if ok else np.nan)
    out.attrs.update(kind="theory", status=status, long_name=long_name, units=units)
    return out


#: :func:`doc_entries` of a theory scalar (:func:`_scalar`) that ignores ``step``
_theory_scalar = doc_entries(DS_ENTRY, STEP_IGNORED_ENTRY, returns=(
    "xr.DataArray", "0-d float, NaN unless ``status`` is ``ok`` or ``approximate: …``; attrs ``kind=\"theory\"``, "
                    "``status``, ``long_name`` and ``units``."))


_W0_CACHE: dict[str, xr.DataArray] = {}


def first_weights(ds: xr.Dataset) -> xr.DataArray:
    """``W(0)`` (the first recorded state, float64, loaded): read once per distinct lazy ``W``.

    Parameters
    ----------
    ds
        A run's dataset (its ``W`` is read).

    Returns
    -------
    xr.DataArray
        float64, in memory, dims ``(neuron, feature)`` (the first state's ``step`` as a scalar coordinate).
    """
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


TWO_LAYER_NA = ("not applicable: v is fixed (train.train_v = false); the theorems train both layers from a "
                "small balanced init")


def two_layer_status(ds: xr.Dataset) -> str:
    """``ok``, or "not applicable" for a run that trains ``W`` only (``train.train_v = false``)."""
    return TWO_LAYER_NA if cfg(ds, "train", "train_v") is False else OK


GRADIENT_FLOW_NA = "not applicable: minibatch SGD (batch {batch}); the theorems are for gradient flow (full-batch GD)"


def gradient_flow_status(ds: xr.Dataset) -> str:
    """``ok``, or "not applicable" for a minibatch SGD run (``train.batch_size`` set)."""
    batch = cfg(ds, "train", "batch_size")
    return GRADIENT_FLOW_NA.format(batch=batch) if batch else OK


def _init_note(ds: xr.Dataset) -> str:
    kind = cfg(ds, "init", "kind")
    notes = []
    if kind != "balanced":
        notes.append(f"theorem assumes balanced init (run: {kind or 'unknown'})")
    if loss_kind(ds) == "logistic":
        notes.append("theorem stated for the exponential loss")
    return "approximate: " + "; ".join(notes) if notes else OK


def _worst(*statuses: str) -> str:
    for prefix in ("not applicable", "assumption fails", "unknown", "not computed"):
        for s in statuses:
            if s.startswith(prefix):
                return s
    approx = [s for s in statuses if s.startswith("approximate")]
    return approx[0] if approx else OK


@quantity(requires=TWO_LAYER, series=False)
@_theory_scalar
def zeta1(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``ζ1 = min_i min(cos²(x_i, x+), cos²(x_i, x-))``, the minimum over **all** samples ``i`` (both
    classes) against **both** class sums.

    Reading: ``ζ1`` is ``sin²`` of the half-angle of the largest cap around ``x+`` (resp. ``x-``) that lies
    inside ``S+`` (resp. ``S-``). The cone ``S+ = {z : <x_i, z> > 0 ⇔ y_i = +1}`` is bounded by the
    hyperplanes ``x_i^⊥`` of *every* sample, positive and negative, and the angle from a direction
    ``u`` to ``x_i^⊥`` is ``arcsin |cos(u, x_i)|``. So the cap of half-angle ``θ`` around ``x+`` stays in
    ``S+`` iff ``sin θ ≤ min_i |cos(x_i, x+)|`` over all ``i``. The class-matched reading
    (``min_{i∈I±} cos²(x_i, x±)``) ignores the other class's hyperplanes, which bound the same cone, and
    can exceed the true cap (tested on a case where the two differ).
    """
    _, status = _mu_status(ds)
    if status != OK:  # x± is not in S±: there is no cap
        return _scalar(np.nan, status, "ζ1")
    s = class_sums(ds)
    X = inputs(ds).astype(np.float64)
    c = xr.dot(X, s, dim="feature") / (sample_norms(ds) * np.sqrt((s**2).sum("feature")))
    return _scalar(float((c**2).min().compute()), OK, "ζ1 = min_i cos²(x_i, x±) (all samples, both class sums)")


@quantity(requires=TWO_LAYER, series=False)
@_theory_scalar
def zeta2(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``ζ2 = 1 - max(0, m)²`` with ``m = max(max_{j∈V+} cos(w_j(0), x-), max_{j∈V-} cos(w_j(0), x+))``.

    Evaluated at the first recorded state (the init). Reading of the paper's definition: ``ζ2`` bounds
    from below how fast a neuron leaves the *wrong* class sum. A neuron ``j ∈ V+`` inside the cap around
    ``x-`` moves with ``d/dt cos(w_j, x-) ≈ -||x-|| (1 - cos²(w_j, x-))`` (sum loss, exp, early phase), so
    the rate factor is ``sin²`` of its angle to ``x-`` — small only when it starts close to ``x-``, i.e.
    with ``cos > 0``. A neuron with ``cos(w_j(0), x-) ≤ 0`` is at least 90° from ``x-``; it is not slowed
    down by it (under ``μ > 0`` the direction ``-x-`` even lies in ``S+``, the target cone, already at
    ``t = 0``). Hence the clip ``max(0, m)``: the design notes' ``1 - m²`` differs only when every
    cross-cosine is negative, and there it would shrink ``ζ2`` towards 0 (``m → -1``) for the
    best-placed initializations, which the bound does not need. Not applicable to ``W``-only runs; "assumption
    fails" when ``μ ≤ 0``.
    """
    status = _worst(two_layer_status(ds), _mu_status(ds)[1])
    if status != OK:
        return _scalar(np.nan, status, "ζ2")
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


@quantity(requires=TWO_LAYER, series=False)
@_theory_scalar
def epsilon(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Initialization scale ``ε``: the config's ``init.scale`` for a balanced init, otherwise the rms
    neuron norm ``sqrt(mean_j ||w_j(0)||²)`` (equal to ``ε`` in expectation for balanced, ``α√D`` for
    gaussian). Not applicable to ``W``-only runs (``v_j = ±1`` is not a small init)."""
    if two_layer_status(ds) != OK:
        return _scalar(np.nan, two_layer_status(ds), "initialization scale ε")
    if cfg(ds, "init", "kind") == "balanced" and cfg(ds, "init", "scale") is not None:
        return _scalar(float(cfg(ds, "init", "scale")), OK, "initialization scale ε (config)")
    W0 = first_weights(ds)
    rms = float(np.sqrt((W0**2).sum("feature").mean()))
    return _scalar(rms, "approximate: ε estimated as rms_j ||w_j(0)||", "initialization scale ε")


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def t1_scale(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Alignment time scale ``log n / (√μ X_min)`` (sum-loss time; ×n for a mean-loss run).

    Also ``t1_bound``: ``16 log n / (min{ζ, ξ} √μ X_min)`` is *not computed*: the cone margin ``ξ`` of
    the paper is not derived here.

    Returns
    -------
    xr.Dataset
        0-d theory scalars (attrs as :func:`zeta1`'s) ``t1_scale_time`` (the run's gradient-flow time),
        ``t1_scale_step`` (optimizer steps) and ``t1_bound_time`` (always NaN, status ``not computed: …``).
    """
    mu, st_mu = _mu_status(ds)
    fac, st_f = _time_factor(ds)
    n = ds.sizes["sample"]
    status = _worst(two_layer_status(ds), st_mu, gradient_flow_status(ds), st_f, _init_note(ds))
    value = fac * math.log(n) / (math.sqrt(mu) * float(x_min(ds))) if status in (OK,) or status.startswith("approximate") else np.nan
    eta = lr(ds)
    return xr.Dataset(
        {
            "t1_scale_time": _scalar(value, status, "t1 scale log n/(√μ X_min)", "gradient-flow time"),
            "t1_scale_step": _scalar(value / eta if eta else np.nan, status if eta else "unknown: lr missing",
                                     "t1 scale log n/(√μ X_min)", "optimizer steps"),
            "t1_bound_time": _scalar(np.nan, _worst(two_layer_status(ds),
                                                     "not computed: the cone margin ξ of the bound is not derived"),
                                     "t1 bound 16 log n/(min{ζ,ξ} √μ X_min)", "gradient-flow time"),
        }
    )


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def t2_scale(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Convergence onset scale ``(1/n) log(1/(√h ε))`` (sum-loss time; ×n, i.e. ``log(1/(√h ε))``, for
    a mean-loss run). Needs ``√h ε < 1`` and ``μ > 0``.

    Returns
    -------
    xr.Dataset
        0-d theory scalars (attrs as :func:`zeta1`'s) ``t2_scale_time`` (the run's gradient-flow time) and
        ``t2_scale_step`` (optimizer steps).
    """
    fac, st_f = _time_factor(ds)
    eps = epsilon(ds)
    h = ds.sizes["neuron"]
    n = ds.sizes["sample"]
    arg = math.sqrt(h) * float(eps) if np.isfinite(float(eps)) else np.nan
    st_small = OK if arg < 1 else f"assumption fails: √h ε = {arg:.3g} ≥ 1 (init not small)"
    status = _worst(eps.attrs["status"], _mu_status(ds)[1], gradient_flow_status(ds), st_f, st_small, _init_note(ds))
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


@quantity(requires=TWO_LAYER, series=False)
@_theory_scalar
def envelope_alpha(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Rate constant of the ``O(1/t)`` envelope: ``α = (μ X_min)² / (32 X_max)``."""
    mu, st = _mu_status(ds)
    status = _worst(two_layer_status(ds), st, gradient_flow_status(ds), _init_note(ds))
    ok = status == OK or status.startswith("approximate")
    value = (mu * float(x_min(ds))) ** 2 / (32.0 * float(x_max(ds))) if ok else np.nan
    return _scalar(value, status, "α = (μ X_min)²/(32 X_max)")


ENVELOPE_RTOL = 1e-6
"""Relative slack of the envelope test: the recorded loss is a float32 network output put through
``exp``, so ``L(t) ≤ envelope(t) · (1 + 1e-6)`` absorbs rounding, nothing more."""


def envelope_assumptions(ds: xr.Dataset) -> list[tuple[str, str]]:
    """The hypotheses of the ``O(1/t)`` theorem that the config and the data decide, each with its state.

    Returns ``(hypothesis, state)`` pairs, ``state`` one of ``"holds"``, ``"fails: …"``,
    ``"approximate: …"`` or ``"unknown: …"``. Failing any of the first three makes the envelope not
    applicable; the approximations are reported beside the verdict. The theorem's remaining hypotheses
    are checked on the trajectory by the summary (``S+`` and ``S-`` each hold a neuron at ``t1``) or
    are not checkable (``ε`` small enough). The loss convention does not matter: with ``L_sum = n L_mean``
    and ``τ = t/n`` the envelope reads the same in the run's own ``L`` and ``t``.

    Parameters
    ----------
    ds
        A run's dataset (its config and data are read).

    Returns
    -------
    list of tuple of str
        Five ``(hypothesis, state)`` pairs: ``μ > 0``, both layers train, full-batch GD, balanced initialization,
        exponential loss.
    """
    mu = mu_value(ds)
    train_v = cfg(ds, "train", "train_v")
    batch = cfg(ds, "train", "batch_size")
    init = cfg(ds, "init", "kind")
    loss = loss_kind(ds)
    return [
        ("μ > 0 (Assumption 1)", "holds" if mu > 0 else f"fails: μ = {mu:.3g} ≤ 0"),
        ("both layers train", "fails: v is fixed (train.train_v = false)" if train_v is False else "holds"),
        ("full-batch gradient descent (standing for gradient flow)",
         f"fails: minibatch SGD (batch {batch})" if batch else "holds"),
        ("balanced initialization", "holds" if init == "balanced" else
         (f"approximate: {init} init (balanced only up to O(ε²))" if init else "unknown: init kind missing")),
        ("exponential loss", "holds" if loss == "exp" else
         (f"approximate: {loss} loss (the theorem is stated for exp)" if loss else "unknown: loss kind missing")),
    ]


def envelope_status(ds: xr.Dataset) -> str:
    """``"not applicable: …"`` (a hypothesis of :func:`envelope_assumptions` fails), else
    ``"approximate: …"`` listing the approximations, else ``"unknown: …"``.

    Parameters
    ----------
    ds
        As for :func:`envelope_assumptions`.

    Returns
    -------
    str
        ``"ok"`` when every hypothesis holds, else the status described above.
    """
    states = envelope_assumptions(ds)
    fails = [f"{name}: {st[len('fails: '):]}" for name, st in states if st.startswith("fails")]
    if fails:
        return "not applicable: " + "; ".join(fails)
    unknown = [st[len("unknown: "):] for _, st in states if st.startswith("unknown")]
    if unknown:
        return "unknown: " + "; ".join(unknown)
    approx = [st[len("approximate: "):] for _, st in states if st.startswith("approximate")]
    return "approximate: " + "; ".join(approx) if approx else OK


@quantity(requires=TWO_LAYER)
@doc_entries(DROP_ENTRY)
def loss_envelope(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.DataArray:
    """The ``O(1/t)`` envelope ``L(t2) / (L(t2) α (t - t2) + 1)`` for ``t ≥ t2`` (NaN before), from the
    run's empirical ``t2``; dims ``(step,)``. ``α = (μ X_min)² / (32 X_max)``. ``step`` selects where it is
    evaluated, not the states ``t2`` is found in (found by a review: a zoomed chart's window found a ``t2`` of
    its own, and the envelope moved with the zoom).

    The same expression holds for a mean-loss run in its own ``L`` and ``t`` (``L_sum = n L_mean`` and
    ``τ = t/n`` cancel). Attrs carry the ``status`` (:func:`envelope_status`); NaN everywhere when the
    theorem does not apply.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step,)``, named ``loss_envelope``; attrs ``kind="theory"``, ``status``, ``long_name``,
        ``units``.
    """
    sel = select(ds, step)
    alpha = envelope_alpha(ds)
    status = _worst(envelope_status(ds), alpha.attrs["status"])
    a = float(alpha) if status == OK or status.startswith("approximate") else np.nan
    ph = t2(ds, None, drop=drop)  # (the run's: whatever states are selected)
    times = time_coord(sel).astype(np.float64)
    L2 = xr.where(ds["step"] == ph["t2_step"], ds["loss"].astype(np.float64), np.nan).max("step")
    env = L2 / (L2 * a * (times - ph["t2_time"]) + 1.0)
    out = xr.where(times >= ph["t2_time"], env, np.nan)
    out.name = "loss_envelope"
    out.attrs.update(kind="theory", status=status, long_name="O(1/t) loss envelope from t2", units="loss")
    return out


@doc_entries(*QUANTITY_PARAMETERS, DROP_ENTRY)
def envelope_ratio_max(ds: xr.Dataset, step: StepSel = None, *, drop: float = T2_DROP) -> xr.DataArray:
    """``max_{t_k > t2} L(t_k) / envelope(t_k)``: the O(1/t) theorem holds on the run iff this is ``≤ 1``
    (up to :data:`ENVELOPE_RTOL`). NaN when the theorem does not apply, ``t2`` is not reached or no state
    follows it.

    ``t2`` itself is left out (there the envelope equals ``L(t2)``, the ratio 1 by construction); the
    value says how far below the envelope the loss stays. Attrs: ``status`` of the envelope.

    Returns
    -------
    xr.DataArray
        0-d float64, named ``envelope_ratio_max``; attrs ``kind="measured"``, ``status``, ``long_name``, ``units``.
    """
    sel = select(ds, step)
    env = loss_envelope(ds, step, drop=drop)
    after = time_coord(sel) > t2(ds, step, drop=drop)["t2_time"]
    ratio = xr.where(after, sel["loss"].astype(np.float64) / env, np.nan).max("step", skipna=True)
    out = ratio.drop_vars(["step", "t"], errors="ignore")
    out.name = "envelope_ratio_max"
    out.attrs.update(kind="measured", status=env.attrs["status"],
                     long_name="max over t ≥ t2 of L(t) / (L(t2)/(L(t2) α (t - t2) + 1))", units="1")
    return out


RATE_RULE = ("holds iff L(t) ≤ L(t2)/(L(t2)·α·(t − t2) + 1)·(1 + 1e-6) at every recorded t > t2, "
             "α = (μ X_min)²/(32 X_max), t2 = first step with L ≤ 0.95·L(first state); applies only where the "
             "theorem's hypotheses hold: μ > 0, both layers train, full-batch GD, S+ and S- each hold a neuron at "
             "the measured t1 (balanced init and exp loss, else noted as approximate)")
"""The O(1/t) test, written out for tables and reports."""


def rate_verdict(status: str, ratio: float, t1_step: float, t2_step: float, frac_pos_t1: float,
                 frac_neg_t1: float) -> tuple[str, str]:
    """Verdict of the ``O(1/t)`` theorem on one run: ``("holds" | "fails" | "not applicable" |
    "undecided", reason)`` by :data:`RATE_RULE`.

    ``status``: :func:`envelope_status`; ``ratio``: :func:`envelope_ratio_max`; ``frac_pos_t1``,
    ``frac_neg_t1``: fractions of neurons in ``S+``, ``S-`` at the measured ``t1``.

    Parameters
    ----------
    status
        The envelope's status (:func:`envelope_status`).
    ratio
        :func:`envelope_ratio_max` of the run.
    t1_step, t2_step
        The empirical ``t1`` and ``t2`` in optimizer steps (NaN when not reached).
    frac_pos_t1, frac_neg_t1
        Fractions of neurons in ``S+`` and ``S-`` at the measured ``t1``.

    Returns
    -------
    tuple of str
        ``(verdict, reason)``, the verdict one of ``"holds"``, ``"fails"``, ``"not applicable"``, ``"undecided"``.
    """
    if not (status == OK or status.startswith("approximate")):
        return "not applicable", status.removeprefix("not applicable: ")
    if not np.isfinite(t1_step):
        return "not applicable", "t1 not reached: the rate is proven only after the alignment phase"
    if not (frac_pos_t1 > 0 and frac_neg_t1 > 0):
        return "not applicable", (f"S+ and S- do not both hold a neuron at t1 (S+: {frac_pos_t1:.0%}, "
                                  f"S-: {frac_neg_t1:.0%} of neurons)")
    note = "" if status == OK else f" ({status})"
    if not np.isfinite(t2_step) or not np.isfinite(ratio):
        return "undecided", "t2 not reached (the loss never fell 5 %) or no recorded state after it" + note
    if ratio <= 1.0 + ENVELOPE_RTOL:
        return "holds", f"max L/envelope over t > t2 = {ratio:.4g} ≤ 1" + note
    return "fails", f"max L/envelope over t > t2 = {ratio:.4g} > 1" + note


@quantity(requires=TWO_LAYER)
def stable_rank_bound(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``||W||_F²/||W||_2² ≤ 2 + 4√h ε W_max² / ||W(t)||_2²`` with ``W_max = max_j ||w_j(0)|| / ε``
    (the row-norm maximum of ``W0``); tends to 2 as ``||W||_2`` grows. Dims ``(step,)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step,)``, named ``stable_rank_bound`` (NaN where the theorem does not apply); attrs
        ``kind="theory"``, ``status``, ``long_name``, ``units``.
    """
    return stable_rank_bound_from(ds, spectral_norm_sq(ds, step))


def stable_rank_bound_from(ds: xr.Dataset, spectral_norm_sq: xr.DataArray) -> xr.DataArray:
    """:func:`stable_rank_bound` from given values of ``||W(t)||_2²`` (e.g. only the final one):
    ``2 + c / ||W(t)||_2²`` with ``c = 4√h ε W_max² = 4√h max_j ||w_j(0)||² / ε``.

    Parameters
    ----------
    ds
        A run's dataset (its config, data and first recorded ``W`` are read).
    spectral_norm_sq
        Values of ``||W(t)||_2²``, any dims (e.g. a 0-d final value, or a ``(step,)`` series).

    Returns
    -------
    xr.DataArray
        float64 with the dims of ``spectral_norm_sq``, named ``stable_rank_bound`` (NaN where the theorem does not
        apply); attrs ``kind="theory"``, ``status``, ``long_name``, ``units``.
    """
    eps = epsilon(ds)
    status = _worst(eps.attrs["status"], _mu_status(ds)[1], gradient_flow_status(ds), _init_note(ds))
    W0 = first_weights(ds)
    wmax0_sq = float((W0**2).sum("feature").max())  # max_j ||w_j(0)||² = ε² W_max²
    h = ds.sizes["neuron"]
    e = float(eps)
    usable = status == OK or status.startswith("approximate")
    coef = 4.0 * math.sqrt(h) * wmax0_sq / e if usable and e > 0 else np.nan  # (NaN where the theorem does not apply)
    out = 2.0 + coef / spectral_norm_sq
    out.name = "stable_rank_bound"
    out.attrs.update(kind="theory", status=status, long_name="stable-rank bound 2 + 4√h ε W_max²/||W||_2²",
                     units="1")
    return out


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def theory(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """All theory scalars: ``ζ1``, ``ζ2``, ``ε``, ``t1`` scale (and the uncomputed bound), ``t2`` scale,
    ``α``, the stable-rank limit 2.

    Returns
    -------
    xr.Dataset
        0-d theory scalars ``zeta1``, ``zeta2``, ``epsilon``, ``envelope_alpha``, ``t1_scale_time``, ``t1_scale_step``,
        ``t1_bound_time``, ``t2_scale_time``, ``t2_scale_step`` and ``stable_rank_limit`` (attrs as :func:`zeta1`'s).
    """
    out = xr.Dataset({"zeta1": zeta1(ds), "zeta2": zeta2(ds), "epsilon": epsilon(ds),
                      "envelope_alpha": envelope_alpha(ds)})
    out = out.merge(t1_scale(ds)).merge(t2_scale(ds))
    out["stable_rank_limit"] = _scalar(2.0, _worst(two_layer_status(ds), _mu_status(ds)[1], gradient_flow_status(ds),
                                                   _init_note(ds)), "stable-rank limit (t → ∞)")
    return out
