"""Check of the early-phase direction field (DESIGN §2) against the recorded trajectory.

For small initialization, ``d/dt (w_j/||w_j||) ≈ R |ℓ'(0)| (v_j/||w_j||) P_{w_j} x_a(w_j)`` with
``x_a(w) = Σ_{i: <x_i, w> > 0} y_i x_i`` and ``P_w = I - w wᵀ/||w||²``; ``R = 1`` (sum) or ``1/n``
(mean), ``|ℓ'(0)| = 1`` (exp) or ``1/2`` (logistic). For a balanced init ``v_j/||w_j|| = sign(v_j)``,
which is the paper's ``sign(v_j) P_w x_a(w)``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis._common import (StepSel, inputs, labels, loss_kind, loss_reduction, need_two_states, select,
                                        time_coord, weights)
from trajscope.analysis._kernels import direction_field_block
from trajscope.analysis.registry import TWO_LAYER, quantity


def _coef(ds: xr.Dataset) -> float:
    r = 1.0 / ds.sizes["sample"] if loss_reduction(ds) == "mean" else 1.0
    return r * (0.5 if loss_kind(ds) == "logistic" else 1.0)


@quantity(requires=TWO_LAYER)
def direction_field_error(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Relative error of the predicted direction change, per pair of consecutive recorded states.

    ``error_j(t_k) = ||m_j - p_j|| / ||p_j||`` with measured ``m_j = (u_j(t_{k+1}) - u_j(t_k)) /
    (t_{k+1} - t_k)``, ``u_j = w_j/||w_j||``, and predicted ``p_j`` as in the module docstring,
    evaluated at ``t_k``. Dims ``(step, neuron)`` (``step`` = the earlier state of the pair);
    ``median_error`` is the median over neurons with a defined error. NaN for dead neurons
    (``p_j = 0``). Meaningful in the early phase (``t < t2``); with a stride the finite difference is
    coarser.

    Returns
    -------
    xr.Dataset
        ``error``: float64, dims ``(step, neuron)``, one state fewer than selected (labelled by the earlier state of
        each pair); ``median_error``: float64, dims ``(step,)``.

    Raises
    ------
    UserError
        When the selection holds fewer than two recorded states.
    """
    sel = select(ds, step)
    W = weights(sel)
    need_two_states("direction_field_error compares consecutive recorded states", ds, sel)
    W0 = W.isel(step=slice(0, -1))
    steps0 = W0["step"].values
    W0 = W0.drop_vars([c for c in W0.coords if c != "step"])
    W1 = W.isel(step=slice(1, None))
    W1 = W1.drop_vars([c for c in W1.coords if c != "step"]).assign_coords(step=steps0)
    if W0.chunks is not None:  # the next states in the same blocks as the states they follow (found by a review:
        W1 = W1.chunk({"step": W0.chunks[W0.get_axis_num("step")]})  # the blocks, one state apart, were unified
        # into twice as many, half of them one state long, and memory grew with the run)
    tt = time_coord(sel).astype(np.float64).values
    dt = xr.DataArray(np.diff(tt), dims="step", coords={"step": steps0})
    v0 = sel["v"].isel(step=slice(0, -1))
    v0 = v0.drop_vars([c for c in v0.coords if c != "step"])
    err = xr.apply_ufunc(
        direction_field_block,
        W0, W1, v0, dt, inputs(ds), xr.DataArray(labels(ds), dims="sample"),
        kwargs={"coef": _coef(ds)},
        input_core_dims=[["neuron", "feature"], ["neuron", "feature"], ["neuron"], [],
                         ["sample", "feature"], ["sample"]],
        output_core_dims=[["neuron"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    err = err.transpose("step", "neuron")
    err.name = "error"
    return xr.Dataset({"error": err, "median_error": err.median("neuron", skipna=True)})
