"""Spectra of ``W(t)``: singular values, norms, stable rank and effective rank."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select, weights
from trajscope.analysis._kernels import singular_values_block
from trajscope.analysis.alignment import neuron_stats
from trajscope.analysis.registry import TWO_LAYER, quantity
from trajscope.store.errors import UserError


@quantity(requires=TWO_LAYER, pointwise=True)
def singular_values(ds: xr.Dataset, step: StepSel = None, *, method: str = "gram") -> xr.DataArray:
    """Singular values ``σ_1(t) ≥ … ≥ σ_r(t)`` of ``W(t)``, ``r = min(h, D)``; dims ``(step, sv)``.

    Computed chunk by chunk in float64: ``method="gram"`` takes ``σ_k = sqrt(λ_k(W Wᵀ))`` (fast,
    absolute accuracy about ``1e-8 σ_1``); ``method="svd"`` uses batched ``numpy.linalg.svd``.

    Parameters
    ----------
    method
        ``"gram"`` (default: eigenvalues of the Gram matrix) or ``"svd"`` (``numpy.linalg.svd``).

    Returns
    -------
    xr.DataArray
        float64, descending along ``sv``; dims ``(step, sv)`` with ``sv`` coordinate ``1 … r``, named
        ``singular_values``.

    Raises
    ------
    UserError
        When ``method`` is neither ``"gram"`` nor ``"svd"``.
    """
    if method not in ("gram", "svd"):
        raise UserError(f"method must be 'gram' or 'svd', not {method!r}")
    W = weights(select(ds, step))
    r = min(W.sizes["neuron"], W.sizes["feature"])
    out = xr.apply_ufunc(
        singular_values_block,
        W,
        kwargs={"method": method},
        input_core_dims=[["neuron", "feature"]],
        output_core_dims=[["sv"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"sv": r}},
    )
    out = out.assign_coords(sv=np.arange(1, r + 1))
    out.name = "singular_values"
    return out


@quantity(requires=TWO_LAYER)
def spectral_norm_sq(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``||W(t)||_2² = σ_1(t)²``; dims ``(step,)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step,)``, named ``spectral_norm_sq``.
    """
    out = singular_values(ds, step).isel(sv=0, drop=True) ** 2
    out.name = "spectral_norm_sq"
    return out


@quantity(requires=TWO_LAYER)
def frobenius_norm_sq(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``||W(t)||_F² = Σ_jk W_jk(t)²``; dims ``(step,)``.

    Returns
    -------
    xr.DataArray
        float64 (NaN for a state with a non-finite weight), dims ``(step,)``, named ``frobenius_norm_sq``.
    """
    out = neuron_stats(ds, step).sel(stat="sq_norm", drop=True).sum("neuron", skipna=False)  # (NaN: diverged)
    out.name = "frobenius_norm_sq"
    return out


@quantity(requires=TWO_LAYER)
def stable_rank(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Stable rank ``||W(t)||_F² / ||W(t)||_2²`` (between 1 and ``rank W``); dims ``(step,)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step,)``, named ``stable_rank``.
    """
    out = frobenius_norm_sq(ds, step) / spectral_norm_sq(ds, step)
    out.name = "stable_rank"
    return out


@quantity(requires=TWO_LAYER)
def effective_rank(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Effective rank of Roy & Vetterli (2007): ``exp(-Σ_k p_k log p_k)``, ``p_k = σ_k / Σ_l σ_l``.

    Terms with ``p_k = 0`` contribute 0; NaN for a state whose weights are not finite; dims ``(step,)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step,)``, named ``effective_rank``.
    """
    s = singular_values(ds, step)
    p = s / s.sum("sv", skipna=False)
    with np.errstate(divide="ignore", invalid="ignore"):  # (a diverged state, NaN singular values: NaN)
        ent = -(xr.where(p > 0, p * np.log(p), 0.0).where(p.notnull())).sum("sv", skipna=False)
    out = np.exp(ent)
    out.name = "effective_rank"
    return out


@quantity(requires=TWO_LAYER)
def spectra(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Singular values, ``||W||_2²``, ``||W||_F²``, stable rank and effective rank in one dataset.

    Returns
    -------
    xr.Dataset
        ``singular_values`` (dims ``(step, sv)``), ``spectral_norm_sq``, ``frobenius_norm_sq``, ``stable_rank`` and
        ``effective_rank`` (dims ``(step,)``), as the functions of the same names compute them.
    """
    return xr.Dataset(
        {
            "singular_values": singular_values(ds, step),
            "spectral_norm_sq": spectral_norm_sq(ds, step),
            "frobenius_norm_sq": frobenius_norm_sq(ds, step),
            "stable_rank": stable_rank(ds, step),
            "effective_rank": effective_rank(ds, step),
        }
    )
