"""Every per-step series of the summary from ONE kernel per time chunk of ``W`` (one read of ``W``).

:func:`step_series` applies :func:`fused_block` to each time chunk: it reads that chunk of ``W`` and
``v`` once and returns, per recorded state, the cone fractions, the aligned fraction, the target and
mean-neuron alignment, the norms and spectra, and the balance drift. The individual functions
(:mod:`~trajscope.analysis.cones`, :mod:`~trajscope.analysis.alignment`,
:mod:`~trajscope.analysis.spectra`, :mod:`~trajscope.analysis.invariants`) compute the same numbers one
quantity at a time, each with its own graph; the fused kernel performs the same floating-point
operations in the same order, so its series equal theirs (tested). ``t1``, the final values and the
maximum drift are then cheap reductions over these small series. The summary runs the kernel with
``detail="none"`` (cones, norms, drift: one ``X Wᵀ`` and one norm pass per chunk) and once more on the
last state alone for the final alignment and spectra.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, inputs, select, weights
from trajscope.analysis._kernels import _batches, _kernel, singular_values_block
from trajscope.analysis.geometry import _onehot, class_counts, class_sums
from trajscope.analysis.invariants import initial_balance
from trajscope.analysis.registry import TWO_LAYER, quantity
from trajscope.store.errors import UserError

SERIES: tuple[str, ...] = (
    "aligned_fraction", "all_aligned",
    "frac_S_pos", "frac_S_neg", "frac_dead", "frac_other",
    "target_alignment_mean", "target_alignment_min",
    "mean_alignment_pos", "mean_alignment_neg",
    "band_min_pos", "band_min_neg", "band_max_pos", "band_max_neg",
    "count_pos", "count_neg",
    "frobenius_norm_sq", "spectral_norm_sq", "stable_rank", "effective_rank",
    "max_balance_drift",
    "cone_agreement_mean", "cone_agreement_min",
)
"""Names of the per-step series, in the order of the last axis of :func:`fused_block`'s output."""

_IX = {name: i for i, name in enumerate(SERIES)}
DETAIL: tuple[str, ...] = (
    "target_alignment_mean", "target_alignment_min", "mean_alignment_pos", "mean_alignment_neg",
    "band_min_pos", "band_min_neg", "band_max_pos", "band_max_neg",
    "spectral_norm_sq", "stable_rank", "effective_rank",
)
"""The series that ``detail="last"`` computes only at the last step of each chunk, ``"none"`` nowhere."""


@_kernel
def fused_block(W: np.ndarray, v: np.ndarray, X: np.ndarray, onehot: np.ndarray, S: np.ndarray,
                s_sq: np.ndarray, b0: np.ndarray, n_pos: int, n_neg: int, detail: str = "all") -> np.ndarray:
    """All per-step series of one time chunk: ``(k, h, D), (k, h) -> (k, len(SERIES))`` float64.

    Parameters
    ----------
    W, v
        The chunk's weights ``w_j(t)`` and output weights ``v_j(t)``.
    X, onehot
        Samples ``(n, D)`` and the class indicator ``(n, 2)`` (columns ``y = +1``, ``y = -1``).
    S, s_sq
        Class sums ``x±`` ``(2, D)`` (float64) and ``||x±||²`` ``(2,)``.
    b0
        ``δ_j(t_0) = v_j(t_0)² - ||w_j(t_0)||²`` at the run's first recorded state ``(h,)``.
    n_pos, n_neg
        Class sizes ``n±``.
    detail
        ``"all"``: every series at every step. ``"last"``: the alignment and spectral series
        (:data:`DETAIL`) only at the chunk's last step, NaN elsewhere; ``"none"``: NaN everywhere (the
        cone, norm and drift series stay complete either way).

    Returns
    -------
    np.ndarray
        float64 ``(k, len(SERIES))``: per state, the series in :data:`SERIES` order (NaN where ``detail`` skips
        them).

    Notes
    -----
    With activation counts ``c±_j = Σ_{i∈I±} 1[<x_i, w_j> > 0]``, cone codes (``S+``, ``S-``,
    ``S_dead``, other) and ``V± = {j : ±v_j > 0}``, per step:

    - ``aligned_fraction = (1/h) Σ_j 1[w_j ∈ S_{sign v_j} ∪ S_dead]``, ``all_aligned`` its ``= 1``
    - ``frac_*``: fraction of neurons in each cone; ``count_± = |V±|``
    - ``target_alignment_mean/min``: nan-mean/min over ``j`` of ``cos(w_j, x_{sign v_j})``
    - ``mean_alignment_±``: ``cos(w̄±, x±)``, ``w̄± = mean_{j∈V±} w_j``; ``band_min/max_±``:
      ``min/max_{j∈V±} cos(w_j, x±)``
    - ``frobenius_norm_sq = Σ_j ||w_j||²``; ``spectral_norm_sq = σ_1²``; ``stable_rank`` their ratio;
      ``effective_rank = exp(-Σ_k p_k log p_k)``, ``p_k = σ_k / Σ_l σ_l`` (``σ`` from ``eigvalsh`` of
      ``W Wᵀ`` or ``Wᵀ W``, the smaller)
    - ``max_balance_drift = max_j |δ_j(t) - δ_j(t_0)|``, ``δ_j = v_j² - ||w_j||²``
    - ``cone_agreement_mean/min``: mean/min over ``j`` of the cone agreement
      (:func:`~trajscope.analysis.cones.cone_agreement`), ``max(g_j, d_j)`` with ``g_j`` the fraction of
      samples whose activation matches ``S_{sign v_j}`` and ``d_j = 1 - (c+_j + c-_j)/n`` (0 for ``v_j = 0``)

    Each is computed with the same floating-point operations as the per-quantity kernels
    (:mod:`~trajscope.analysis._kernels`) and xarray expressions, so the results are equal.
    """
    k, h, D = W.shape
    out = np.full((k, len(SERIES)), np.nan)
    counts = np.empty((k, h, 2), np.int32)
    dtype = np.result_type(W.dtype, X.dtype)
    Xt = np.ascontiguousarray(X.astype(dtype, copy=False).T)
    oh = onehot.astype(np.float32, copy=False)
    for b in _batches(k, h * X.shape[0]):  # activation counts, as activation_counts_block
        P = W[b].astype(dtype, copy=False) @ Xt
        counts[b] = np.rint((P > 0).astype(np.float32) @ oh).astype(np.int32)
    # ||w_j||² in float64: equal to neuron_stats_block's (einsum casts in its buffer, no float64 copy of W)
    sq = np.einsum("khd,khd->kh", W, W, dtype=np.float64)
    finite = np.isfinite(sq)  # a neuron of a diverged state is in no cone (as cones.finite_neurons)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos, neg = counts[..., 0], counts[..., 1]
        code = np.where(~finite, 3, np.where((pos == 0) & (neg == 0), 2, np.where(
            (pos == n_pos) & (neg == 0), 0, np.where((pos == 0) & (neg == n_neg), 1, 3))))
        ok = (code == 2) | ((v > 0) & (code == 0)) | ((v < 0) & (code == 1))
        out[:, _IX["aligned_fraction"]] = ok.mean(axis=1)
        out[:, _IX["all_aligned"]] = ok.all(axis=1)
        for c, name in enumerate(("frac_S_pos", "frac_S_neg", "frac_dead", "frac_other")):
            out[:, _IX[name]] = (code == c).mean(axis=1)
        n_all = n_pos + n_neg
        agree = np.maximum(np.where(v > 0, (pos + (n_neg - neg)) / n_all,
                                    np.where(v < 0, (neg + (n_pos - pos)) / n_all, 0.0)),
                           (n_all - pos - neg) / n_all)
        agree = np.where(finite, agree, np.nan)
        out[:, _IX["cone_agreement_mean"]] = agree.mean(axis=1)
        out[:, _IX["cone_agreement_min"]] = agree.min(axis=1)
        out[:, _IX["count_pos"]] = (v > 0).sum(axis=1)
        out[:, _IX["count_neg"]] = (v < 0).sum(axis=1)
        frob = np.sum(sq, axis=1)  # (NaN for a diverged state, as frobenius_norm_sq)
        out[:, _IX["frobenius_norm_sq"]] = frob
        drift = (v.astype(np.float64) ** 2 - sq) - b0
        out[:, _IX["max_balance_drift"]] = np.max(np.abs(drift), axis=1)  # NaN with any NaN neuron (as the quantity)
        rows = {"all": slice(None), "last": slice(k - 1, k), "none": None}[detail]
        if rows is not None:
            _detail(out, W[rows], v[rows], sq[rows], frob[rows], S, s_sq, rows)
    return out


def _detail(out: np.ndarray, W: np.ndarray, v: np.ndarray, sq: np.ndarray, frob: np.ndarray, S: np.ndarray,
            s_sq: np.ndarray, rows: slice) -> None:
    """Fill the :data:`DETAIL` series of ``out[rows]`` (alignment and spectra) for the states ``W``."""
    k, h, D = W.shape
    dots = np.empty((k, h, 2))
    wbar = np.empty((k, 2, D))
    S64 = np.ascontiguousarray(S.astype(np.float64, copy=False).T)
    for b in _batches(k, 2 * h * D):
        w = W[b].astype(np.float64, copy=False)
        dots[b] = w @ S64  # as neuron_stats_block
        m = np.stack([v[b] > 0, v[b] < 0], axis=1).astype(np.float64)  # as class_mean_block
        wbar[b] = (m @ w) / m.sum(-1, keepdims=True)
    o = out[rows]  # a view: writes go to ``out``
    # cos(w_j, x±) as cos_to_class_sums: dots / ||w_j|| (NaN if 0) / ||x±||
    norm = np.sqrt(sq)
    cos = dots / np.where(norm > 0, norm, np.nan)[..., None] / np.sqrt(s_sq)
    target = np.where(v > 0, cos[..., 0], np.where(v < 0, cos[..., 1], np.nan))
    o[:, _IX["target_alignment_mean"]] = _nanmean(target)
    o[:, _IX["target_alignment_min"]] = _nanreduce(np.nanmin, target)
    mean = np.nansum(wbar * S[None], axis=-1) / np.sqrt(np.nansum(wbar**2, axis=-1) * s_sq)
    o[:, _IX["mean_alignment_pos"]], o[:, _IX["mean_alignment_neg"]] = mean[:, 0], mean[:, 1]
    for j, (member, lab) in enumerate(((v > 0, "pos"), (v < 0, "neg"))):
        band = np.where(member, cos[..., j], np.nan)
        o[:, _IX[f"band_min_{lab}"]] = _nanreduce(np.nanmin, band)
        o[:, _IX[f"band_max_{lab}"]] = _nanreduce(np.nanmax, band)
    sv = singular_values_block(W)
    spec = sv[:, 0] ** 2
    p = sv / np.sum(sv, axis=1, keepdims=True)  # (a diverged state's NaN kept, as effective_rank)
    ent = -np.sum(np.where(p > 0, p * np.log(p), np.where(np.isnan(p), np.nan, 0.0)), axis=1)
    o[:, _IX["spectral_norm_sq"]] = spec
    o[:, _IX["stable_rank"]] = frob / spec
    o[:, _IX["effective_rank"]] = np.exp(ent)


def _nanreduce(fn, a: np.ndarray) -> np.ndarray:
    """``fn(a, axis=1)`` without the all-NaN warning (all-NaN rows give NaN)."""
    out = np.full(a.shape[0], np.nan)
    some = ~np.isnan(a).all(axis=1)
    out[some] = fn(a[some], axis=1)
    return out


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN, as a sum over the count (NaN for all-NaN rows)."""
    n = (~np.isnan(a)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.nansum(a, axis=1) / n, np.nan)


@quantity(requires=TWO_LAYER, pointwise=lambda kwargs: kwargs.get("detail", "all") == "all")
def step_series(ds: xr.Dataset, step: StepSel = None, *, detail: str = "all",
                chunk_steps: int | None = None) -> xr.Dataset:
    """All per-step series of the summary in one pass over ``W``: one kernel per time chunk.

    Returns a lazy dataset of ``(step,)`` variables named as in :data:`SERIES` (definitions in
    :func:`fused_block`); each equals the corresponding per-quantity function, e.g.
    ``aligned_fraction`` = :func:`~trajscope.analysis.cones.aligned_fraction`, ``frac_S_pos`` =
    ``cone_fractions(...).sel(cone="S+")``, ``mean_alignment_pos`` =
    ``mean_neuron_alignment(...)["mean"].sel(label=1)``, ``max_balance_drift`` =
    :func:`~trajscope.analysis.invariants.max_balance_drift`. ``detail="last"`` computes the
    :data:`DETAIL` series (alignment, spectra) only at the last step of each time chunk (NaN elsewhere),
    ``detail="none"`` nowhere: the cost per chunk is then about one ``X Wᵀ`` and one norm pass.
    ``chunk_steps``: rechunk the (small) series along ``step`` to that many states per dask chunk
    before splitting them into variables, so that reductions over them take few tasks.

    Parameters
    ----------
    detail
        ``"all"`` (default), ``"last"`` or ``"none"``: where the :data:`DETAIL` series are computed (see above).
    chunk_steps
        States per dask chunk of the series (``None``, the default: as ``W``'s chunks; no effect on in-memory data).

    Returns
    -------
    xr.Dataset
        One variable of dims ``(step,)`` per name in :data:`SERIES`: float64, but ``all_aligned`` bool and
        ``count_pos``, ``count_neg`` int64; attr ``detail``.

    Raises
    ------
    UserError
        When ``detail`` is not ``"all"``, ``"last"`` or ``"none"``.
    """
    if detail not in ("all", "last", "none"):
        raise UserError(f"detail={detail!r}: choose 'all', 'last' or 'none'")
    sel = select(ds, step)
    n = class_counts(ds)
    s = class_sums(ds)
    s_sq = (s**2).sum("feature")  # as in mean_neuron_alignment
    b0 = initial_balance(ds)  # δ(t_0) at the run's first state, whatever the range (so the series is pointwise)
    W = weights(sel)
    v = sel["v"]
    if W.chunks is not None and v.chunks is not None:
        v = v.chunk({"step": W.chunks[0], "neuron": -1})
    data = xr.apply_ufunc(
        fused_block, W, v, inputs(ds), _onehot(ds), s, s_sq, b0,
        kwargs={"n_pos": int(n.sel(label=1)), "n_neg": int(n.sel(label=-1)), "detail": detail},
        input_core_dims=[["neuron", "feature"], ["neuron"], ["sample", "feature"], ["sample", "label"],
                         ["label", "feature"], ["label"], ["neuron"]],
        output_core_dims=[["series"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"series": len(SERIES)}},
    )
    if chunk_steps is not None and data.chunks is not None:
        data = data.chunk({"step": chunk_steps})
    out = xr.Dataset({name: data.isel(series=i, drop=True) for i, name in enumerate(SERIES)})
    out["all_aligned"] = out["all_aligned"] > 0
    for lab, sign in (("pos", "+"), ("neg", "-")):
        out[f"mean_alignment_{lab}"].attrs["long_name"] = f"cos(w̄{sign}, x{sign})"
    for name in ("count_pos", "count_neg"):
        out[name] = out[name].astype(np.int64)
    out.attrs["detail"] = detail
    return out
