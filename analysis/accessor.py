"""The ``ds.traj`` accessor: every entry of :data:`trajscope.analysis.QUANTITIES` as a method.

``ds.traj.stable_rank(step=slice(0, None, 10))``, ``ds.traj.summary()``, ``ds.traj.plot("loss")``,
``ds.traj.config`` and ``ds.traj.attrs`` (the run's attributes decoded);
on any run ``ds.traj.frobenius_norms()``, ``ds.traj.distance_from_init()``, ``ds.traj.quantities()``.
It is registered on ``xr.Dataset`` by ``import trajscope`` (a lazy factory in ``trajscope/_traj.py``);
a quantity that does not apply to the run raises a message naming those that do.
"""

from __future__ import annotations

import functools
from typing import Any

import xarray as xr

from trajscope.analysis import QUANTITIES, select
from trajscope.analysis.registry import applicable, check_applies
from trajscope.store.dataset_attrs import committed_part, decode_attrs, run_attr
from trajscope.store.errors import UserError


class TrajAccessor:
    """Analysis of a run (see :mod:`trajscope.analysis`)."""

    def __init__(self, ds: xr.Dataset):
        # only the committed states: a live or killed run opened with plain xr.open_zarr reaches past them
        self._ds = committed_part(ds)

    @property
    def attrs(self) -> dict[str, Any]:
        """The run's attributes decoded: ``config``, ``schema``, ``data_info``, ``tags``... as Python objects.

        ``ds.attrs`` itself holds them as JSON text so that ``ds.to_netcdf()`` works
        (see :mod:`trajscope.store.dataset_attrs`).
        """
        return decode_attrs(self._ds.attrs)

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved config (``{}`` when the run has none), e.g. ``ds.traj.config["train"]["lr"]``."""
        return run_attr(self._ds, "config") or {}

    def sel(self, step: slice | None = None) -> xr.Dataset:
        """The dataset restricted to ``step=slice(a, b, s)`` (see :func:`trajscope.analysis.select`)."""
        return select(self._ds, step)

    def plot(self, kind: str, step: slice | None = None, **kwargs: Any):
        """Draw the figure ``kind`` (a key of ``PLOT_KINDS``); returns the matplotlib Figure."""
        from trajscope.analysis.plots import plot

        if kind in applicable(self._ds, "plot") or kind not in self.plot_kinds(all_kinds=True):
            return plot(self._ds, kind, step=step, **kwargs)
        check_applies("plot", kind, self._ds)

    def quantities(self) -> list[str]:
        """Names of the quantities that apply to this run."""
        return sorted(applicable(self._ds))

    def plot_kinds(self, all_kinds: bool = False) -> list[str]:
        """Names of the figures that apply to this run (``all_kinds``: every registered one)."""
        from trajscope.analysis.plots import PLOT_KINDS

        return sorted(PLOT_KINDS) if all_kinds else sorted(applicable(self._ds, "plot"))

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(QUANTITIES))


def _method(name: str, fn):
    @functools.wraps(fn)
    def method(self: TrajAccessor, step: slice | None = None, **kwargs: Any):
        check_applies("quantity", name, self._ds)
        if self._ds.sizes.get("step", 1) == 0:  # (found by a review: IndexError, "zero-size array" from numpy)
            live = self._ds.attrs.get("status") == "running"
            raise UserError(f"quantity {name!r} needs at least one recorded state; this dataset has none"
                            + (" yet (the run's first chunk is not committed): retry when it is" if live else ""))
        try:
            return fn(self._ds, step, **kwargs)
        except (ValueError, KeyError, IndexError) as err:
            if "step" in self._ds.dims:
                raise
            # (found by a review: ds.isel(step=5).traj... ended in xarray's "Dimensions {'step'} do not exist")
            raise UserError(f"quantity {name!r} reads states along the dim 'step', which this dataset does not have "
                            "(one state taken with isel(step=k)? keep the dim: isel(step=[k]), or pass step=k)") from err

    method.__name__ = name
    return method


for _name, _fn in QUANTITIES.items():
    setattr(TrajAccessor, _name, _method(_name, _fn))
