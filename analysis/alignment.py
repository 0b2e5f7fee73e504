"""Alignment of neurons with the class sums (DESIGN §2, the paper's Fig. 5)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select, weights
from trajscope.analysis._kernels import class_mean_block, neuron_stats_block
from trajscope.analysis.geometry import class_sums
from trajscope.analysis.registry import QUANTITY_PARAMETERS, TWO_LAYER, doc_entries, quantity


@doc_entries(*QUANTITY_PARAMETERS)
def neuron_stats(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Per neuron and step: ``||w_j||²``, ``<w_j, x+>``, ``<w_j, x->`` (one pass over ``W``, float64).

    Dims ``(step, neuron, stat)`` with ``stat = ["sq_norm", "dot_pos", "dot_neg"]``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, neuron, stat)`` with ``stat`` coordinate ``["sq_norm", "dot_pos", "dot_neg"]``, named
        ``neuron_stats``; lazy when ``W`` is.
    """
    W = weights(select(ds, step))
    out = xr.apply_ufunc(
        neuron_stats_block, W, class_sums(ds).rename(label="stat"),
        input_core_dims=[["neuron", "feature"], ["stat", "feature"]],
        output_core_dims=[["neuron", "stat"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"stat": 3}}, exclude_dims={"stat"},
    )
    out = out.assign_coords(stat=["sq_norm", "dot_pos", "dot_neg"])
    out.name = "neuron_stats"
    return out.transpose("step", "neuron", "stat")


@quantity(requires=TWO_LAYER)
def neuron_norms(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``||w_j(t)||``; dims ``(step, neuron)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, neuron)``, named ``neuron_norms``.
    """
    out = np.sqrt(neuron_stats(ds, step).sel(stat="sq_norm", drop=True))
    out.name = "neuron_norms"
    return out


@quantity(requires=TWO_LAYER)
def cos_to_class_sums(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``cos(w_j(t), x±) = <w_j, x±> / (||w_j|| ||x±||)``; dims ``(step, neuron, label)``.

    NaN where ``w_j = 0``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, neuron, label)`` with ``label`` coordinate ``[1, -1]`` (``x+``, ``x-``), named
        ``cos_to_class_sums``.
    """
    st = neuron_stats(ds, step)
    s = class_sums(ds)
    s_norm = np.sqrt((s**2).sum("feature"))
    dots = xr.concat([st.sel(stat="dot_pos", drop=True), st.sel(stat="dot_neg", drop=True)], dim="label")
    dots = dots.assign_coords(label=s["label"].values)
    norm = np.sqrt(st.sel(stat="sq_norm", drop=True))
    out = dots / xr.where(norm > 0, norm, np.nan) / s_norm
    out.name = "cos_to_class_sums"
    return out.transpose("step", "neuron", "label")


@quantity(requires=TWO_LAYER)
def target_alignment(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """``cos(w_j(t), x_{sign v_j(t)})``: alignment with the class sum the neuron's sign targets.

    ``x_{+1} = x+``, ``x_{-1} = x-``; NaN where ``v_j = 0``. Dims ``(step, neuron)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, neuron)``, named ``target_alignment``.
    """
    sel = select(ds, step)
    c = cos_to_class_sums(ds, step)
    v = sel["v"]
    out = xr.where(v > 0, c.sel(label=1, drop=True), xr.where(v < 0, c.sel(label=-1, drop=True), np.nan))
    out.name = "target_alignment"
    return out.transpose("step", "neuron")


@quantity(requires=TWO_LAYER)
def mean_neuron_alignment(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Mean-neuron alignment and its min–max band over ``V±(t)``.

    ``V+ = {j : v_j(t) > 0}``, ``V- = {j : v_j(t) < 0}`` (re-evaluated at every step, so correct for a
    non-balanced init), ``w̄± = mean_{j∈V±} w_j``:

    - ``mean``: ``cos(w̄±(t), x±)``; dims ``(step, label)``
    - ``min``/``max``: ``min/max_{j∈V±} cos(w_j(t), x±)`` (the band)
    - ``count``: ``|V±(t)|``

    NaN where ``V±`` is empty.

    Returns
    -------
    xr.Dataset
        Variables ``mean``, ``min``, ``max`` (float64) and ``count`` (integer), each with dims ``(step, label)`` and
        ``label`` coordinate ``[1, -1]`` (``V+``, ``V-``).
    """
    sel = select(ds, step)
    v = sel["v"]
    member = xr.concat([v > 0, v < 0], dim="label").assign_coords(label=np.array([1, -1], dtype=np.int8))
    count = member.sum("neuron")
    wbar = xr.apply_ufunc(
        class_mean_block, weights(sel), v,
        input_core_dims=[["neuron", "feature"], ["neuron"]], output_core_dims=[["label", "feature"]],
        dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"label": 2}},
    ).assign_coords(label=np.array([1, -1], dtype=np.int8))
    s = class_sums(ds)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (wbar * s).sum("feature") / np.sqrt((wbar**2).sum("feature") * (s**2).sum("feature"))
    c = cos_to_class_sums(ds, step)
    band = c.where(member)
    out = xr.Dataset(
        {
            "mean": mean.transpose("step", "label"),
            "min": band.min("neuron").transpose("step", "label"),
            "max": band.max("neuron").transpose("step", "label"),
            "count": count.transpose("step", "label"),
        }
    )
    out["mean"].attrs["long_name"] = "cos(w̄±, x±)"
    return out
