"""An xarray backend, so ``xr.open_dataset(path, engine="trajscope")`` trims live runs like :func:`open_run`.

Registered under the ``xarray.backends`` entry point in ``pyproject.toml``, in the style of xarray's own
``BackendEntrypoint`` classes. Remote runs take fsspec ``storage_options`` as ``xr.open_zarr`` does::

    xr.open_dataset("s3://bucket/runs/r1.zarr", engine="trajscope",
                    storage_options={"endpoint_url": "http://127.0.0.1:9000"})
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import xarray as xr
from xarray.backends import BackendEntrypoint

from trajscope.store.errors import UserError
from trajscope.store.layout import RUN_SUFFIX
from trajscope.store.reader import open_run
from trajscope.store.root import StoreRoot


class TrajscopeBackendEntrypoint(BackendEntrypoint):
    """Open a trajscope run (``<run_id>.zarr``, local path or fsspec URL), trimmed to its committed steps."""

    description = "Open trajscope runs, trimmed to committed_steps (safe on runs being written)"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "storage_options")

    def open_dataset(
        self,
        filename_or_obj,
        *,
        drop_variables: str | Iterable[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> xr.Dataset:
        location = os.fspath(filename_or_obj).rstrip("/")
        parent, _, name = location.rpartition("/")
        if not name.endswith(RUN_SUFFIX):
            raise UserError(f"{location!r} is not a run: engine='trajscope' opens a <run_id>{RUN_SUFFIX} group")
        ds = open_run(name[: -len(RUN_SUFFIX)], StoreRoot(parent or ".", storage_options))
        if drop_variables:
            ds = ds.drop_vars([drop_variables] if isinstance(drop_variables, str) else list(drop_variables))
        return ds

    def guess_can_open(self, filename_or_obj) -> bool:
        """Never guessed: plain ``xr.open_zarr`` stays the default for ``.zarr``; ask for ``engine="trajscope"``."""
        return False
