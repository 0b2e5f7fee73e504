"""trajscope.analysis: the paper's quantities, computed lazily from a stored run.

Every public function takes an ``xr.Dataset`` shaped like ``trajscope.open_run``'s and an optional
``step=slice(a, b, s)`` (``a``, ``b``: step-coordinate values, both included; ``s``: stride over the
recorded states), and returns a lazy ``xr.DataArray``/``xr.Dataset``. Each registers itself with the
decorators of :mod:`trajscope.analysis.registry`, declaring what a run needs for it to apply (the
paper's quantities: a two-layer run; the generic ones of :mod:`~trajscope.analysis.generic`: any run
with parameters). :data:`QUANTITIES` and :data:`PLOT_KINDS` hold them all by name, :func:`applicable`
those that apply to one run; ``ds.traj`` exposes them as methods.
"""

from __future__ import annotations

from trajscope.analysis import _dask_keys

_dask_keys.install()  # (before any graph is built: dask's fused task names could collide, see the module)

from trajscope.analysis import (  # noqa: E402,F401  (importing a module registers its quantities)
    alignment,
    cones,
    direction_field,
    generic,
    geometry,
    invariants,
    neurons,
    phases,
    series,
    spectra,
    summary as _summary,
    theory,
)
from trajscope.analysis._common import select  # noqa: E402
from trajscope.analysis.registry import QUANTITIES, applicable, features, parameter_names, requirements  # noqa: E402

summary = _summary.summary


def __getattr__(name: str):
    if name == "PLOT_KINDS":
        from trajscope.analysis.plots import PLOT_KINDS

        return PLOT_KINDS
    raise AttributeError(f"module 'trajscope.analysis' has no attribute {name!r}")


__all__ = ["QUANTITIES", "PLOT_KINDS", "applicable", "features", "parameter_names", "requirements", "select",
           "summary"]
