"""Directions of neurons over time, for following chosen ones: angles to the class sums, to their
initial direction, and (rows of two entries) in the plane. :func:`neuron_angles` follows the neurons
``w_j`` of a two-layer run; :func:`row_angles` the rows of any matrix parameter of any run (a two-layer
run's ``W`` included). One numpy kernel per time chunk."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select, weights
from trajscope.analysis._kernels import _kernel
from trajscope.analysis.geometry import class_sums
from trajscope.analysis.registry import MATRICES, TWO_LAYER, features, parameter_names, quantity
from trajscope.store.errors import UserError

ANGLES = ("to_target", "to_init", "polar")


@_kernel
def angles_block(W: np.ndarray, v: np.ndarray, W0: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``(k, h, D), (k, h), (h, D), (2, D) -> (k, h, 3)``: the :data:`ANGLES` in degrees.

    With ``S = [x+, x-]`` (class sums), per state and neuron:
    ``to_target = arccos(<w_j, x_s> / (||w_j|| ||x_s||))``, ``s = sign v_j`` (NaN when ``v_j = 0`` or
    ``w_j = 0``); ``to_init = arccos(<w_j, w_j(t0)> / (||w_j|| ||w_j(t0)||))``; ``polar =
    atan2(w_j2, w_j1)`` for ``D = 2`` (NaN otherwise, and for ``w_j = 0``). Cosines are clipped to
    ``[-1, 1]`` before ``arccos``.

    Parameters
    ----------
    W
        Weights ``w_j`` of ``k`` states, ``(k, h, D)``.
    v
        Output weights ``v_j`` of the same states, ``(k, h)``.
    W0
        Weights at the run's first recorded state ``t0``, ``(h, D)``.
    S
        Class sums ``[x+, x-]``, ``(2, D)``.

    Returns
    -------
    np.ndarray
        float64 ``(k, h, 3)``: ``to_target``, ``to_init`` and ``polar`` in degrees along the last axis.
    """
    W = W.astype(np.float64, copy=False)
    W0 = W0.astype(np.float64, copy=False)
    S = S.astype(np.float64, copy=False)
    k, h, D = W.shape
    out = np.full((k, h, len(ANGLES)), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.sqrt(np.einsum("khd,khd->kh", W, W))
        norm = np.where(norm > 0, norm, np.nan)
        dots = W @ S.T  # (k, h, 2)
        s_norm = np.sqrt((S**2).sum(-1))
        target = np.where(v > 0, dots[..., 0] / s_norm[0], np.where(v < 0, dots[..., 1] / s_norm[1], np.nan)) / norm
        n0 = np.sqrt((W0**2).sum(-1))
        init = np.einsum("khd,hd->kh", W, W0) / (norm * np.where(n0 > 0, n0, np.nan))
        out[..., 0] = np.degrees(np.arccos(np.clip(target, -1.0, 1.0)))
        out[..., 1] = np.degrees(np.arccos(np.clip(init, -1.0, 1.0)))
        if D == 2:
            out[..., 2] = np.where(np.isnan(norm), np.nan, np.degrees(np.arctan2(W[..., 1], W[..., 0])))
    return out


@quantity(requires=TWO_LAYER, pointwise=True)
def neuron_angles(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Angles (degrees) describing each neuron's direction ``w_j(t)``; dims ``(step, neuron)``.

    - ``to_target``: ``∠(w_j, x_{sign v_j(t)}) = arccos cos(w_j, x±)`` (NaN when ``v_j = 0`` or
      ``w_j = 0``): the angle the alignment phase shrinks.
    - ``to_init``: ``∠(w_j(t), w_j(t_0)) = arccos(<w_j(t), w_j(t_0)> / (||w_j(t)|| ||w_j(t_0)||))``
      with ``t_0`` the run's first recorded state (not the selection's), so values do not depend on
      the selection.
    - ``polar`` (only for 2-D data): ``atan2(w_j2, w_j1)`` in ``(-180, 180]``: neurons turning in
      the plane.

    Select neurons first (``ds.isel(neuron=[...])``) to follow a few of them cheaply.

    Returns
    -------
    xr.Dataset
        float64 variables ``to_target``, ``to_init`` and (``D = 2`` only) ``polar`` in degrees, dims ``(step, neuron)``,
        each with attrs ``long_name`` and ``units``.
    """
    sel = select(ds, step)
    W = weights(sel)
    v = sel["v"]
    if W.chunks is not None and v.chunks is not None:
        v = v.chunk({"step": W.chunks[0], "neuron": -1})
    W0 = weights(ds.isel(step=0, drop=True))
    S = class_sums(ds).sel(label=[1, -1])
    data = xr.apply_ufunc(
        angles_block, W, v, W0, S,
        input_core_dims=[["neuron", "feature"], ["neuron"], ["neuron", "feature"], ["label", "feature"]],
        output_core_dims=[["neuron", "angle"]], exclude_dims=set(), dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"angle": len(ANGLES)}},
    )
    names = ANGLES if ds.sizes.get("feature") == 2 else ANGLES[:2]
    out = xr.Dataset({name: data.isel(angle=i, drop=True) for i, name in enumerate(names)})
    out["to_target"].attrs.update(long_name="angle between w_j and x_sign(v_j)", units="degree")
    out["to_init"].attrs.update(long_name="angle between w_j(t) and w_j(t0)", units="degree")
    if "polar" in out:
        out["polar"].attrs.update(long_name="direction of w_j in the plane", units="degree")
    return out.transpose("step", "neuron")


@_kernel
def row_angles_block(P: np.ndarray, P0: np.ndarray) -> np.ndarray:
    """``(k, r, c), (r, c) -> (k, r, 2)``: per state and row ``p_j``, ``to_init`` and ``polar`` in degrees.

    ``to_init = arccos(<p_j, p_j(t0)> / (||p_j|| ||p_j(t0)||))`` (cosine clipped to ``[-1, 1]``; NaN when
    a norm is 0); ``polar = atan2(p_j2, p_j1)`` when ``c = 2`` (NaN otherwise, and for ``p_j = 0``).

    Parameters
    ----------
    P
        Rows ``p_j`` of ``k`` states, ``(k, r, c)``.
    P0
        The rows at the run's first recorded state, ``(r, c)``.

    Returns
    -------
    np.ndarray
        float64 ``(k, r, 2)``: ``to_init`` and ``polar`` in degrees along the last axis.
    """
    P = P.astype(np.float64, copy=False)
    P0 = P0.astype(np.float64, copy=False)
    out = np.full(P.shape[:2] + (2,), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.sqrt(np.einsum("krc,krc->kr", P, P))
        norm = np.where(norm > 0, norm, np.nan)
        n0 = np.sqrt((P0**2).sum(-1))
        cos = np.einsum("krc,rc->kr", P, P0) / (norm * np.where(n0 > 0, n0, np.nan))
        out[..., 0] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        if P.shape[-1] == 2:
            out[..., 1] = np.where(np.isnan(norm), np.nan, np.degrees(np.arctan2(P[..., 1], P[..., 0])))
    return out


def matrix_parameter(ds: xr.Dataset, parameter: str = "") -> str:
    """The matrix parameter named ``parameter`` (exactly), or the run's first one for ``""``.

    Parameters
    ----------
    ds
        A run's dataset (its recorded matrix parameters are listed).
    parameter
        A parameter name (exact, no pattern); ``""`` (default) for the run's first matrix parameter.

    Returns
    -------
    str
        The name of a recorded parameter with two or more dims besides ``step``.

    Raises
    ------
    UserError
        When the run records no matrix parameter, or ``parameter`` is not one of them.
    """
    names = [n for n in parameter_names(ds) if ds[n].ndim >= 3]
    if not names:
        raise UserError("this run records no matrix parameter (one with two or more dims besides step)")
    if not parameter:
        return names[0]
    if parameter not in names:
        raise UserError(f"parameter={parameter!r} is not a matrix parameter of this run: use one of {', '.join(names)}")
    return parameter


@quantity(requires=MATRICES, pointwise=True)
def row_angles(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Angles (degrees) following each row ``p_j(t)`` of one matrix parameter ``P`` (rows along its first
    axis, the other axes flattened); dims ``(step, ROW)`` with ``ROW`` the parameter's first own dim.

    - ``to_init``: ``∠(p_j(t), p_j(t_0)) = arccos(<p_j(t), p_j(t_0)> / (||p_j(t)|| ||p_j(t_0)||))``,
      ``t_0`` the run's first recorded state (whatever the selection);
    - ``polar`` (rows of two entries only): ``atan2(p_j2, p_j1)`` in ``(-180, 180]``;
    - for a two-layer run's ``W`` also ``to_target``, the angle to ``x_sign(v_j)``: the result is then
      :func:`neuron_angles`.

    ``parameter``: the parameter's name (default: the run's first matrix parameter). Select rows first
    (``ds.isel({ROW: [...]})``) to follow a few of them cheaply.

    Parameters
    ----------
    parameter
        Name of a matrix parameter (exact); ``""`` (default) for the run's first one.

    Returns
    -------
    xr.Dataset
        float64 variables ``to_init`` and (rows of two entries only) ``polar`` in degrees, dims ``(step, ROW)``, attr
        ``parameter``; for a two-layer run's ``W``, :func:`neuron_angles`' dataset (``to_target`` added).

    Raises
    ------
    UserError
        When the run records no matrix parameter, or ``parameter`` is not one of them.
    """
    name = matrix_parameter(ds, parameter)
    if name == "W" and "two_layer" in features(ds):
        return neuron_angles(ds, step)
    da = select(ds, step)[name]
    own = [d for d in da.dims if d != "step"]
    row, rest = own[0], own[1:]
    flat = f"{name}.cols"
    if da.chunks is not None:
        da = da.chunk({d: -1 for d in own})
    init = ds[name].isel(step=0, drop=True)
    if len(rest) > 1:
        da = da.stack({flat: rest}).drop_vars([c for c in (flat, *rest) if c in da.coords], errors="ignore")
        init = init.stack({flat: rest}).drop_vars([c for c in (flat, *rest) if c in init.coords], errors="ignore")
    else:
        da, init = da.rename({rest[0]: flat}), init.rename({rest[0]: flat})
    if init.chunks is not None:
        init = init.chunk({d: -1 for d in init.dims})
    data = xr.apply_ufunc(
        row_angles_block, da, init, input_core_dims=[[row, flat], [row, flat]],
        output_core_dims=[[row, "angle"]], dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"angle": 2}},
    )
    names = ("to_init", "polar") if da.sizes[flat] == 2 else ("to_init",)
    out = xr.Dataset({n: data.isel(angle=i, drop=True) for i, n in enumerate(names)}, attrs={"parameter": name})
    out["to_init"].attrs.update(long_name=f"angle between a row of {name} and its initial direction", units="degree")
    if "polar" in out:
        out["polar"].attrs.update(long_name=f"direction of a row of {name} in the plane", units="degree")
    return out.transpose("step", row)
