"""Registers the ``ds.traj`` accessor without importing the analysis (nor dask) until it is used.

xarray calls the registered object with the dataset on first access of ``ds.traj``; here that is a
function that imports :mod:`trajscope.analysis.accessor` then and returns its ``TrajAccessor``.
"""

from __future__ import annotations

import xarray as xr


def _traj(ds: xr.Dataset):
    from trajscope.analysis.accessor import TrajAccessor

    return TrajAccessor(ds)


if not hasattr(xr.Dataset, "traj"):
    xr.register_dataset_accessor("traj")(_traj)
