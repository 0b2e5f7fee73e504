"""Data geometry of DESIGN §2: class sums and centres, norms, the separation ``μ``, the Gram matrix.

These depend on ``X`` and ``y`` only (one state's worth of data); they are lazy when ``X`` is.
The class dimension is ``label`` with coordinate ``[+1, -1]``.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, inputs, labels
from trajscope.analysis.registry import TWO_LAYER, ignores_step, quantity

LABELS = np.array([1, -1], dtype=np.int8)


def _onehot(ds: xr.Dataset) -> xr.DataArray:
    y = labels(ds)
    m = np.stack([(y == 1), (y == -1)], axis=1).astype(np.float64)
    return xr.DataArray(m, dims=("sample", "label"), coords={"label": LABELS})


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def class_counts(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Class sizes ``n±``.

    ``n+ = |I+| = #{i : y_i = +1}``, ``n- = |I-| = #{i : y_i = -1}``; dims ``(label,)``.

    Returns
    -------
    xr.DataArray
        int64, dims ``(label,)`` with ``label`` coordinate ``[1, -1]``, named ``class_counts``.
    """
    out = _onehot(ds).sum("sample").astype(np.int64)
    out.name = "class_counts"
    return out


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def class_sums(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Class sums ``x± = Σ_{i∈I±} x_i``; dims ``(label, feature)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(label, feature)`` with ``label`` coordinate ``[1, -1]``, named ``class_sums``; lazy when ``X``
        is.
    """
    X = inputs(ds).astype(np.float64)
    out = xr.dot(_onehot(ds), X, dim="sample")
    out.name = "class_sums"
    return out.transpose("label", "feature")


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def class_centres(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Class centres ``x̄± = x± / n±``; dims ``(label, feature)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(label, feature)`` with ``label`` coordinate ``[1, -1]``, named ``class_centres``.
    """
    out = class_sums(ds) / class_counts(ds)
    out.name = "class_centres"
    return out


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def sample_norms(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Norms ``||x_i||``; dims ``(sample,)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(sample,)``, named ``sample_norms``.
    """
    X = inputs(ds).astype(np.float64)
    out = np.sqrt((X**2).sum("feature"))
    out.name = "sample_norms"
    return out


@ignores_step
def x_max(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``X_max = max_i ||x_i||``.

    Returns
    -------
    xr.DataArray
        0-d float64, named ``X_max``.
    """
    out = sample_norms(ds).max("sample")
    out.name = "X_max"
    return out


@ignores_step
def x_min(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``X_min = min_i ||x_i||``.

    Returns
    -------
    xr.DataArray
        0-d float64, named ``X_min``.
    """
    out = sample_norms(ds).min("sample")
    out.name = "X_min"
    return out


def _signed_unit(ds: xr.Dataset) -> da.Array:
    """Rows ``y_i x_i / ||x_i||`` as a dask array chunked by sample blocks (for pairwise reductions)."""
    X = inputs(ds).astype(np.float64)
    Z = X * xr.DataArray(labels(ds).astype(np.float64), dims="sample") / sample_norms(ds)
    Zd = Z.transpose("sample", "feature").data
    Zd = Zd if isinstance(Zd, da.Array) else da.from_array(Zd)
    return Zd.rechunk((2048, -1))


@quantity("mu", requires=TWO_LAYER, series=False)
@ignores_step
def separation_mu(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Separation ``μ = min_{i,j} <y_i x_i, y_j x_j> / (||x_i|| ||x_j||)``.

    The data are well separated (Assumption 1) iff ``μ > 0``. Computed blockwise over pairs, so the
    ``n × n`` matrix is never held whole.

    Returns
    -------
    xr.DataArray
        0-d float64 (lazy: a dask array), named ``mu``, with attr ``long_name``.
    """
    Zd = _signed_unit(ds)
    out = xr.DataArray((Zd @ Zd.T).min(), name="mu")
    out.attrs["long_name"] = "data separation μ (Assumption 1 holds iff μ > 0)"
    return out


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def gram(ds: xr.Dataset, step: StepSel = None, *, normalized: bool = True) -> xr.DataArray:
    """Gram matrix of the data, rows and columns sorted by label (``+1`` first, stable order).

    ``G_ij = <x_i, x_j> / (||x_i|| ||x_j||)`` (``normalized=True``) or ``<x_i, x_j>``; dims
    ``(sample, sample_2)``; the ``sample`` coordinates keep the original indices, ``y`` rides along.

    Parameters
    ----------
    normalized
        ``True`` (default): cosines ``G_ij``; ``False``: plain inner products ``<x_i, x_j>``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(sample, sample_2)``, rows and columns in label order; coordinates ``sample`` and
        ``sample_2`` (the original sample indices) and ``y``, ``y_2`` (their labels); named ``gram``.
    """
    y = labels(ds)
    order = np.argsort(-y, kind="stable")
    X = inputs(ds).astype(np.float64).isel(sample=order)
    if normalized:
        X = X / sample_norms(ds).isel(sample=order)
    X = X.assign_coords(sample=order)
    G = xr.dot(X, X.rename(sample="sample_2"), dim="feature")
    G = G.assign_coords(y=("sample", y[order]), y_2=("sample_2", y[order]))
    G.name = "gram"
    return G


@ignores_step
def cos_class_sums(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``cos(x+, x-) = <x+, x-> / (||x+|| ||x-||)`` (about −1 for MNIST 0 vs 1).

    Returns
    -------
    xr.DataArray
        0-d float64, named ``cos_xpos_xneg``.
    """
    s = class_sums(ds)
    p, m = s.sel(label=1), s.sel(label=-1)
    out = (p * m).sum("feature") / np.sqrt((p**2).sum("feature") * (m**2).sum("feature"))
    out = out.drop_vars("label", errors="ignore")
    out.name = "cos_xpos_xneg"
    return out


@quantity(requires=TWO_LAYER, series=False)
@ignores_step
def data_geometry(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """All scalar data-geometry numbers: ``n``, ``n±``, ``D``, ``μ``, Assumption 1, ``X_min``, ``X_max``,
    ``cos(x+, x-)``.

    Returns
    -------
    xr.Dataset
        0-d variables ``n``, ``n_pos``, ``n_neg``, ``D``, ``mu``, ``assumption1`` (bool, ``μ > 0``), ``X_min``,
        ``X_max`` and ``cos_xpos_xneg``.
    """
    counts = class_counts(ds)
    mu = separation_mu(ds)
    return xr.Dataset(
        {
            "n": xr.DataArray(int(ds.sizes["sample"])),
            "n_pos": counts.sel(label=1, drop=True),
            "n_neg": counts.sel(label=-1, drop=True),
            "D": xr.DataArray(int(ds.sizes["feature"])),
            "mu": mu,
            "assumption1": mu > 0,
            "X_min": x_min(ds),
            "X_max": x_max(ds),
            "cos_xpos_xneg": cos_class_sums(ds),
        }
    )


_MU_CACHE: dict[str, float] = {}


def mu_value(ds: xr.Dataset) -> float:
    """``μ`` as a float (computed once per distinct ``X``/``y``; the theory needs it eagerly).

    Parameters
    ----------
    ds
        A run's dataset (only ``X`` and ``y`` are read).

    Returns
    -------
    float
        ``μ`` (computed on the first call for these ``X`` and ``y``, then cached).
    """
    from dask.base import tokenize

    key = tokenize(ds["X"].data, ds["y"].data)
    if key not in _MU_CACHE:
        if len(_MU_CACHE) > 32:
            _MU_CACHE.clear()
        _MU_CACHE[key] = float(separation_mu(ds).compute())
    return _MU_CACHE[key]
