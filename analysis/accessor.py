"""The ``ds.traj`` accessor: every entry of :data:`trajscope.analysis.QUANTITIES` as a method.

``ds.traj.stable_rank(step=slice(0, None, 10))``, ``ds.traj.summary()``, ``ds.traj.plot("loss")``.
"""

from __future__ import annotations

import functools
from typing import Any

import xarray as xr

from trajscope.analysis import QUANTITIES, select


@xr.register_dataset_accessor("traj")
class TrajAccessor:
    """Analysis of a two-layer run (see :mod:`trajscope.analysis`)."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    def sel(self, step: slice | None = None) -> xr.Dataset:
        """The dataset restricted to ``step=slice(a, b, s)`` (see :func:`trajscope.analysis.select`)."""
        return select(self._ds, step)

    def plot(self, kind: str, step: slice | None = None, **kwargs: Any):
        """Draw the figure ``kind`` (a key of ``PLOT_KINDS``); returns the matplotlib Figure."""
        from trajscope.analysis.plots import plot

        return plot(self._ds, kind, step=step, **kwargs)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(QUANTITIES))


def _method(name: str, fn):
    @functools.wraps(fn)
    def method(self: TrajAccessor, step: slice | None = None, **kwargs: Any):
        return fn(self._ds, step, **kwargs)

    method.__name__ = name
    return method


for _name, _fn in QUANTITIES.items():
    setattr(TrajAccessor, _name, _method(_name, _fn))
