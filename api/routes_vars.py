"""``/api/runs/{run_id}/vars/{name}``: slices of a variable as JSON or ``.npy``."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response

from trajscope.api import selectors
from trajscope.api.deps import Run, RunDep, State
from trajscope.api.models import ErrorBody, VarSlice
from trajscope.api.state import ApiState
from trajscope.api.serialize import JSON_BYTES_PER_VALUE, array_values, dumps, npy_bytes
from trajscope.api.work import compute, synchronous_get
from trajscope.store import UserError

router = APIRouter(prefix="/api/runs/{run_id}/vars", tags=["variables"])

FORMATS = ("json", "npy")
SELECTOR_HELP = ("integer, list (1,4,9) or range a:b:s; positional (0-based, half-open) for every dimension "
                 "but step")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@router.get(
    "/{name}",
    summary="A slice of one variable",
    response_model=VarSlice,
    responses={200: {"content": {"application/x-npy": {}}}, 400: {"model": ErrorBody}, 404: {"model": ErrorBody},
               413: {"model": ErrorBody}},
)
async def var_slice(
    run: RunDep,
    state: State,
    name: str,
    request: Request,
    step: Annotated[str | None, Query(description="optimizer steps: a value, a list, or a:b:s with both "
                                      "ends included and a stride over recorded states")] = None,
    neuron: Annotated[str | None, Query(description=SELECTOR_HELP)] = None,
    sample: Annotated[str | None, Query(description=SELECTOR_HELP)] = None,
    feature: Annotated[str | None, Query(description=SELECTOR_HELP)] = None,
    format: Annotated[str, Query(description="json (dims, coords and values) or npy (the values; dims in the "
                                 "X-Trajscope-Dims header)")] = "json",
) -> Response:
    if format not in FORMATS:
        raise UserError(f"format={format!r} is not supported: use one of {', '.join(FORMATS)}")
    raw = {"step": step, "neuron": neuron, "sample": sample, "feature": feature}
    # any other dimension by its name (module runs: fc1.weight.dim0=3); "v" is the dashboard's cache tag
    raw.update({k: v for k, v in request.query_params.items() if k not in raw and k not in ("format", "v")})
    key = run.cache_key("var", name, format, tuple(sorted((k, v) for k, v in raw.items() if v)))
    media = "application/json" if format == "json" else "application/x-npy"
    cached = state.responses.get(key)  # a hit is answered on the event loop, with the bytes of the miss
    if cached is not None:
        return Response(cached[0], media_type=media, headers={**cached[1], "X-Trajscope-Cache": "hit"})
    zarr_url = f"{str(request.base_url).rstrip('/')}/zarr/{run.run_id}"  # (for the 413's hint)
    body, headers = await compute(request, state, _build, run, state, name, raw, format, key, zarr_url)
    return Response(body, media_type=media, headers={**headers, "X-Trajscope-Cache": "miss"})


def _build(run: Run, state: ApiState, name: str, raw: dict[str, str | None], format: str,
           key: tuple, zarr_url: str) -> tuple[bytes, dict[str, str]]:
    """Read, shape and cache the slice (in a worker thread)."""
    ds = run.dataset()
    if name not in ds.variables:
        raise HTTPException(404, f"run {run.run_id!r} has no variable {name!r}: variables are "
                                 f"{', '.join(sorted(map(str, ds.variables)))}")
    var = ds[name]
    for dim, text in raw.items():
        if text is not None and dim not in var.dims:
            raise UserError(f"{dim}={text[:40]} does not apply: {name} has dimensions "
                            f"({', '.join(map(str, var.dims))}); select along any of them by name")
    index = {}
    for dim in var.dims:
        sel = selectors.parse(dim, raw.get(dim))
        if dim == "step":
            index[dim] = selectors.by_step(sel, np.asarray(ds["step"].values))
        else:
            index[dim] = selectors.positional(dim, sel, var.sizes[dim])
    n = 1
    for dim, idx in index.items():
        n *= selectors.count(idx, var.sizes[dim])
    per_value = var.dtype.itemsize if format == "npy" else JSON_BYTES_PER_VALUE
    if n * per_value > state.max_response_bytes:
        raise HTTPException(413, (
            f"the selection of {name} has {n:,} values (about {_human(n * per_value)} as {format}), over the "
            f"cap of {_human(state.max_response_bytes)}: narrow it with "
            + ", ".join(f"{d}=a:b:s" for d in var.dims)
            + (" (e.g. a stride step=::10)" if "step" in var.dims else "")
            + ("" if format == "npy" else ", or use format=npy")
            + f", or read the run lazily with xr.open_zarr('{zarr_url}')"))  # (a bare /zarr/… path opens
        # nothing in a client: found by a review)
    picked = var.isel(index)
    values = np.asarray(picked.compute(scheduler=synchronous_get).values)
    headers = {"X-Trajscope-Dims": ",".join(map(str, picked.dims)),
               "X-Trajscope-Shape": ",".join(map(str, values.shape)),
               "X-Trajscope-Committed-Steps": str(run.committed)}
    if format == "npy":
        body = npy_bytes(values)
    else:
        coords = {}
        for dim in picked.dims:
            if dim in picked.coords:
                coords[str(dim)] = array_values(picked[dim].values)
            else:
                coords[str(dim)] = array_values(np.arange(var.sizes[dim])[index[dim]])
        for cname, c in picked.coords.items():
            if cname not in coords and c.ndim <= 1:
                coords[str(cname)] = array_values(c.values)
        body = dumps({"run_id": run.run_id, "name": name, "dims": [str(d) for d in picked.dims],
                      "shape": list(values.shape), "dtype": str(values.dtype), "coords": coords,
                      "values": array_values(values)})
    state.responses.put(key, (body, headers), len(body))
    return body, headers
