"""Reading runs: :func:`open_run` (a lazy dataset trimmed to the committed steps) and the catalog."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import xarray as xr

from trajscope.store.export import drop_chunk_encoding
from trajscope.store.layout import COMMITTED, STEP_DIM
from trajscope.store.root import StoreRoot, resolve_run


def open_run(
    run: str | os.PathLike,
    root: str | os.PathLike | StoreRoot | None = None,
    *,
    chunks: dict | str | None = None,
) -> xr.Dataset:
    """Open a run as a lazy :class:`xarray.Dataset`, trimmed to its committed steps.

    Parameters
    ----------
    run
        A run id (looked up under ``root``) or the path/URL of a ``<run_id>.zarr`` group.
    root
        Store root (local directory or fsspec URL); default ``$TRAJSCOPE_ROOT`` or ``./runs``.
    chunks
        Dask chunks; default: the stored chunks (one time chunk per dask block).

    The root attributes are read first and fresh, then the arrays; every time-varying variable is cut
    to ``committed_steps``, so a run that is being written is seen as a consistent snapshot. Finished
    runs are opened through their consolidated metadata, live ones through fresh metadata.
    """
    store_root, run_id = resolve_run(run, root)
    attrs = store_root.read_attrs(run_id)
    committed = int(attrs.get(COMMITTED, 0))
    consolidated = attrs.get("status") != "running" and "finished" in attrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's note that consolidated v3 metadata is not in the spec
        ds = xr.open_zarr(
            store_root.zarr_store(run_id, read_only=True),
            consolidated=consolidated,
            chunks={} if chunks is None else chunks,
            zarr_format=3,
        )
    ds = drop_chunk_encoding(ds.isel({STEP_DIM: slice(0, committed)}))  # so ds.sel(...).to_zarr(...) works
    ds.attrs = dict(attrs)
    ds.attrs["run_id"] = run_id
    ds.attrs["root"] = store_root.location
    return ds


@dataclass
class RunInfo:
    """One line of the catalog."""

    run_id: str
    status: str
    committed_steps: int
    capacity: int
    created: str | None
    updated: str | None
    size_bytes: int
    config: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-ready)."""
        return asdict(self)


def describe_run(run: str, root: str | os.PathLike | StoreRoot | None = None, *, with_size: bool = True) -> RunInfo:
    """Status, progress and config of one run, from its root attributes alone (cheap)."""
    store_root, run_id = resolve_run(run, root)
    attrs = store_root.read_attrs(run_id)
    return RunInfo(
        run_id=run_id,
        status=str(attrs.get("status", "unknown")),
        committed_steps=int(attrs.get(COMMITTED, 0)),
        capacity=int(attrs.get("capacity", 0)),
        created=attrs.get("created"),
        updated=attrs.get("updated"),
        size_bytes=store_root.size_bytes(run_id) if with_size else 0,
        config=attrs.get("config", {}),
        error=attrs.get("error"),
    )


def list_runs(root: str | os.PathLike | StoreRoot | None = None, *, with_size: bool = True) -> list[RunInfo]:
    """Every run under ``root``, sorted by id. Runs whose metadata cannot be read are skipped."""
    store_root = root if isinstance(root, StoreRoot) else StoreRoot(root)
    infos = []
    for run_id in store_root.run_ids():
        try:
            infos.append(describe_run(run_id, store_root, with_size=with_size))
        except (KeyError, ValueError):
            continue
    return infos
