"""Per-neuron directions over time, for following chosen neurons: angles to the class sums, to their
initial direction, and (2-D data) in the plane."""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select, weights
from trajscope.analysis.alignment import cos_to_class_sums


def _degrees(cos: xr.DataArray) -> xr.DataArray:
    return np.degrees(np.arccos(cos.clip(-1.0, 1.0)))


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
    cos = cos_to_class_sums(ds, step)
    v = sel["v"]
    target = xr.where(v > 0, cos.sel(label=1, drop=True), xr.where(v < 0, cos.sel(label=-1, drop=True), np.nan))
    W = weights(sel).astype(np.float64)
    W0 = weights(ds.isel(step=0, drop=True)).astype(np.float64)
    norms = np.sqrt((W**2).sum("feature"))
    norm0 = np.sqrt((W0**2).sum("feature"))
    cos0 = (W * W0).sum("feature") / (norms * norm0).where(norms * norm0 > 0)
    out = xr.Dataset({"to_target": _degrees(target), "to_init": _degrees(cos0)})
    out["to_target"].attrs.update(long_name="angle between w_j and x_sign(v_j)", units="degree")
    out["to_init"].attrs.update(long_name="angle between w_j(t) and w_j(t0)", units="degree")
    if ds.sizes.get("feature") == 2:
        polar = np.degrees(np.arctan2(W.isel(feature=1, drop=True), W.isel(feature=0, drop=True)))
        out["polar"] = polar.where(norms > 0)
        out["polar"].attrs.update(long_name="direction of w_j in the plane", units="degree")
    return out.transpose("step", "neuron")
