"""Per-neuron directions over time, for following chosen neurons: angles to the class sums, to their
initial direction, and (2-D data) in the plane. One numpy kernel per time chunk of ``W``."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select, weights
from trajscope.analysis.geometry import class_sums

ANGLES = ("to_target", "to_init", "polar")


def angles_block(W: np.ndarray, v: np.ndarray, W0: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``(k, h, D), (k, h), (h, D), (2, D) -> (k, h, 3)``: the :data:`ANGLES` in degrees.

    With ``S = [x+, x-]`` (class sums), per state and neuron:
    ``to_target = arccos(<w_j, x_s> / (||w_j|| ||x_s||))``, ``s = sign v_j`` (NaN when ``v_j = 0`` or
    ``w_j = 0``); ``to_init = arccos(<w_j, w_j(t0)> / (||w_j|| ||w_j(t0)||))``; ``polar =
    atan2(w_j2, w_j1)`` for ``D = 2`` (NaN otherwise, and for ``w_j = 0``). Cosines are clipped to
    ``[-1, 1]`` before ``arccos``.
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
