"""Cone membership of the neurons (DESIGN §2): ``S+``, ``S-``, ``S_dead`` or other, per step."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, inputs, select, weights
from trajscope.analysis._kernels import activation_counts_block
from trajscope.analysis.alignment import neuron_stats
from trajscope.analysis.geometry import _onehot, class_counts
from trajscope.analysis.registry import QUANTITY_PARAMETERS, TWO_LAYER, doc_entries, quantity

CONES = ("S+", "S-", "dead", "other")
"""Cone codes: ``0 = S+``, ``1 = S-``, ``2 = S_dead``, ``3 = other``."""


@quantity(requires=TWO_LAYER)
def activation_counts(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Activation counts ``Σ_{i∈I±} a_ij(t)`` with ``a_ij = 1[<x_i, w_j(t)> > 0]``.

    Dims ``(step, neuron, label)``: how many positive (``label=+1``) and negative (``label=-1``)
    samples activate neuron ``j``. Computed chunk by chunk (one ``X Wᵀ`` per step).

    Returns
    -------
    xr.DataArray
        int32, dims ``(step, neuron, label)`` with ``label`` coordinate ``[1, -1]``, named ``activation_counts``.
    """
    W = weights(select(ds, step))
    out = xr.apply_ufunc(
        activation_counts_block,
        W,
        inputs(ds),
        _onehot(ds),
        input_core_dims=[["neuron", "feature"], ["sample", "feature"], ["sample", "label"]],
        output_core_dims=[["neuron", "label"]],
        dask="parallelized",
        output_dtypes=[np.int32],
    )
    out = out.assign_coords(label=np.array([1, -1], dtype=np.int8))
    out.name = "activation_counts"
    return out.transpose("step", "neuron", "label")


@doc_entries(*QUANTITY_PARAMETERS)
def finite_neurons(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Whether ``w_j(t)`` is finite (``||w_j||²`` is, in float64); dims ``(step, neuron)``. A neuron of a diverged
    run (NaN or inf weights) is in no cone: ``<x_i, w_j> > 0`` and ``<x_i, w_j> ≤ 0`` are both false for NaN.

    Returns
    -------
    xr.DataArray
        bool, dims ``(step, neuron)``.
    """
    return np.isfinite(neuron_stats(ds, step).sel(stat="sq_norm", drop=True))


@quantity(requires=TWO_LAYER)
def cone_membership(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Cone of each neuron per step, as a code into :data:`CONES`; dims ``(step, neuron)``, int8.

    - ``S+ = {z : <x_i, z> > 0 ⇔ y_i = +1 ∀i}`` (code 0)
    - ``S- = {z : <x_i, z> > 0 ⇔ y_i = -1 ∀i}`` (code 1)
    - ``S_dead = {z : <x_i, z> ≤ 0 ∀i}`` (code 2; takes precedence when a class is empty)
    - anything else (code 3), a neuron whose weights are not finite included (:func:`finite_neurons`)

    Returns
    -------
    xr.DataArray
        int8 codes 0–3 into :data:`CONES`, dims ``(step, neuron)``, named ``cone``, with attrs ``flag_values`` and
        ``flag_meanings``.
    """
    c = activation_counts(ds, step)
    n = class_counts(ds)
    pos, neg = c.sel(label=1, drop=True), c.sel(label=-1, drop=True)
    n_pos, n_neg = int(n.sel(label=1)), int(n.sel(label=-1))
    code = xr.where(
        ~finite_neurons(ds, step),
        3,
        xr.where((pos == 0) & (neg == 0), 2,
                 xr.where((pos == n_pos) & (neg == 0), 0, xr.where((pos == 0) & (neg == n_neg), 1, 3))),
    ).astype(np.int8)
    code.name = "cone"
    code.attrs.update(flag_values=[0, 1, 2, 3], flag_meanings="S+ S- dead other")
    return code


@quantity(requires=TWO_LAYER)
def in_target_or_dead(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Whether neuron ``j`` is in its target cone ``S_{sign v_j(t)}`` or in ``S_dead``; ``(step, neuron)``.

    A neuron with ``v_j = 0`` counts only when dead.

    Returns
    -------
    xr.DataArray
        bool, dims ``(step, neuron)``, named ``in_target_or_dead``.
    """
    code = cone_membership(ds, step)
    v = select(ds, step)["v"]
    out = (code == 2) | ((v > 0) & (code == 0)) | ((v < 0) & (code == 1))
    out.name = "in_target_or_dead"
    return out


@quantity(requires=TWO_LAYER)
def aligned_fraction(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Fraction of neurons in their target cone or dead: ``(1/h) Σ_j 1[w_j ∈ S_{sign v_j} ∪ S_dead]``.

    Returns
    -------
    xr.DataArray
        float64 in ``[0, 1]``, dims ``(step,)``, named ``aligned_fraction``.
    """
    out = in_target_or_dead(ds, step).mean("neuron")
    out.name = "aligned_fraction"
    return out


@doc_entries(*QUANTITY_PARAMETERS)
def cone_agreement(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """How close each neuron is to its target cone or ``S_dead``, as a fraction of samples; ``(step, neuron)``.

    ``max(g_j, d_j)`` with ``g_j = (c+_j + n- - c-_j)/n`` for ``v_j > 0`` (samples whose activation
    ``1[<x_i, w_j> > 0]`` matches ``S+``: positives active, negatives not), ``(c-_j + n+ - c+_j)/n`` for
    ``v_j < 0``, 0 for ``v_j = 0``, and ``d_j = 1 - (c+_j + c-_j)/n`` (samples inactive, as in ``S_dead``);
    ``c±_j`` are the :func:`activation_counts`. It is 1 exactly when :func:`in_target_or_dead` holds, and
    says how far from it a neuron is when no neuron ever enters a cone. NaN for a neuron whose weights are not
    finite.

    Returns
    -------
    xr.DataArray
        float64 in ``[0, 1]`` (NaN for non-finite neurons), dims ``(step, neuron)``, named ``cone_agreement``.
    """
    c = activation_counts(ds, step)
    n = class_counts(ds)
    pos, neg = c.sel(label=1, drop=True), c.sel(label=-1, drop=True)
    n_pos, n_neg = int(n.sel(label=1)), int(n.sel(label=-1))
    n_all = n_pos + n_neg
    v = select(ds, step)["v"]
    target = xr.where(v > 0, (pos + (n_neg - neg)) / n_all, xr.where(v < 0, (neg + (n_pos - pos)) / n_all, 0.0))
    out = np.maximum(target, (n_all - pos - neg) / n_all).where(finite_neurons(ds, step))  # (NaN: no cone)
    out.name = "cone_agreement"
    return out


@quantity(requires=TWO_LAYER)
def cone_fractions(ds: xr.Dataset, step: StepSel = None) -> xr.DataArray:
    """Fraction of neurons in ``S+``, ``S-``, ``S_dead`` and other per step; dims ``(step, cone)``.

    Returns
    -------
    xr.DataArray
        float64, dims ``(step, cone)`` with ``cone`` coordinate ``["S+", "S-", "dead", "other"]`` (summing to 1 per
        step), named ``cone_fractions``.
    """
    code = cone_membership(ds, step)
    parts = [(code == k).mean("neuron") for k in range(len(CONES))]
    out = xr.concat(parts, dim="cone").assign_coords(cone=list(CONES)).transpose("step", "cone")
    out.name = "cone_fractions"
    return out
