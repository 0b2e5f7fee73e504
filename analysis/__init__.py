"""trajscope.analysis: the paper's quantities, computed lazily from a stored run.

Every public function takes an ``xr.Dataset`` shaped like ``trajscope.open_run``'s and an optional
``step=slice(a, b, s)`` (``a``, ``b``: step-coordinate values, both included; ``s``: stride over the
recorded states), and returns a lazy ``xr.DataArray``/``xr.Dataset``. :data:`QUANTITIES` and
:data:`PLOT_KINDS` name them for the CLI and the HTTP API; ``ds.traj`` exposes them as methods.
"""

from __future__ import annotations

from collections.abc import Callable

import xarray as xr

from trajscope.analysis import (
    alignment,
    cones,
    direction_field,
    geometry,
    invariants,
    phases,
    spectra,
    summary as _summary,
    theory,
)
from trajscope.analysis._common import select

summary = _summary.summary

QUANTITIES: dict[str, Callable[..., xr.DataArray | xr.Dataset]] = {
    # data geometry
    "data_geometry": geometry.data_geometry,
    "class_counts": geometry.class_counts,
    "class_sums": geometry.class_sums,
    "class_centres": geometry.class_centres,
    "sample_norms": geometry.sample_norms,
    "mu": geometry.separation_mu,
    "gram": geometry.gram,
    # alignment
    "neuron_norms": alignment.neuron_norms,
    "cos_to_class_sums": alignment.cos_to_class_sums,
    "target_alignment": alignment.target_alignment,
    "mean_neuron_alignment": alignment.mean_neuron_alignment,
    # cones
    "activation_counts": cones.activation_counts,
    "cone_membership": cones.cone_membership,
    "cone_fractions": cones.cone_fractions,
    "in_target_or_dead": cones.in_target_or_dead,
    "aligned_fraction": cones.aligned_fraction,
    # phases
    "all_aligned": phases.all_aligned,
    "t1": phases.t1,
    "t2": phases.t2,
    "post_t2_slope": phases.post_t2_slope,
    "phases": phases.phases,
    # spectra
    "singular_values": spectra.singular_values,
    "spectral_norm_sq": spectra.spectral_norm_sq,
    "frobenius_norm_sq": spectra.frobenius_norm_sq,
    "stable_rank": spectra.stable_rank,
    "effective_rank": spectra.effective_rank,
    "spectra": spectra.spectra,
    # invariants
    "balance": invariants.balance,
    "balance_drift": invariants.balance_drift,
    "max_balance_drift": invariants.max_balance_drift,
    "sign_flips": invariants.sign_flips,
    # theory (labelled kind="theory")
    "theory": theory.theory,
    "zeta1": theory.zeta1,
    "zeta2": theory.zeta2,
    "epsilon": theory.epsilon,
    "t1_scale": theory.t1_scale,
    "t2_scale": theory.t2_scale,
    "envelope_alpha": theory.envelope_alpha,
    "loss_envelope": theory.loss_envelope,
    "stable_rank_bound": theory.stable_rank_bound,
    # beyond the paper's figures
    "direction_field_error": direction_field.direction_field_error,
    # everything at once (computed)
    "summary": _summary.summary,
}
"""Quantity name → ``fn(ds, step=None) -> xr.DataArray | xr.Dataset``. Stable names (API routes)."""


def __getattr__(name: str):
    if name == "PLOT_KINDS":
        from trajscope.analysis.plots import PLOT_KINDS

        return PLOT_KINDS
    raise AttributeError(f"module 'trajscope.analysis' has no attribute {name!r}")


__all__ = ["QUANTITIES", "PLOT_KINDS", "select", "summary"]
