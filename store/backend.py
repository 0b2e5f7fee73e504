"""An xarray backend, so ``xr.open_dataset(path, engine="trajscope")`` trims live runs like :func:`open_run`.

Registered under the ``xarray.backends`` entry point in ``pyproject.toml``, in the style of xarray's own
``BackendEntrypoint`` classes.
"""

from __future__ import annotations

import os
from typing import Iterable

import xarray as xr
from xarray.backends import BackendEntrypoint

from trajscope.store.reader import open_run


class TrajscopeBackendEntrypoint(BackendEntrypoint):
    """Open a trajscope run (``<run_id>.zarr``, local path or fsspec URL), trimmed to its committed steps."""

    description = "Open trajscope runs, trimmed to committed_steps (safe on runs being written)"
    open_dataset_parameters = ("filename_or_obj", "drop_variables")

    def open_dataset(self, filename_or_obj, *, drop_variables: str | Iterable[str] | None = None) -> xr.Dataset:
        ds = open_run(os.fspath(filename_or_obj))
        if drop_variables:
            ds = ds.drop_vars([drop_variables] if isinstance(drop_variables, str) else list(drop_variables))
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        """Never guessed: plain ``xr.open_zarr`` stays the default for ``.zarr``; ask for ``engine="trajscope"``."""
        return False
