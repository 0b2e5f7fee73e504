"""``/api/runs/{run_id}/series/{quantity}``: per-step series for charts, min–max downsampled on the server.

A *quantity* is a per-step variable of the run (``loss``) or a quantity of the analysis registry that
applies to the run and whose result has a ``step`` dim (``step_series``, ``cone_fractions``,
``singular_values``, ``row_angles``…; registered ``series=False`` when it has none: ``mu``, ``t1``…);
``GET /api/runs/{run_id}/series`` lists them, read from the run and the registry (nothing here names a
quantity). Its columns (other dims flattened, e.g.
``cone_fractions[S+]``) over the selected steps are reduced to at most ``2 · points`` rows by
:func:`trajscope.analysis.downsample.minmax_downsample`, so a spike survives every zoom level.
``format=csv|npy`` returns the same table as a file (the dashboard's downloads).

A quantity registered ``pointwise`` asked for a step range (the dashboard's live tails and zooms) of at
most :data:`MEMORY_STATES` states and :data:`MEMORY_BYTES` is computed on those states and the run's
first state loaded in memory: the same numbers without building a lazy graph over the whole run.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any, Callable

import numpy as np
import xarray as xr
from fastapi import APIRouter, HTTPException, Query, Request, Response

from trajscope.api import registry, selectors
from trajscope.api.deps import Run, RunDep, State
from trajscope.api.models import ErrorBody
from trajscope.api.routes_analysis import analysis_errors, call, compute, step_slice
from trajscope.api.serialize import array_values, dumps, jsonable, npy_bytes
from trajscope.api.work import once
from trajscope.analysis.registry import is_pointwise, is_series
from trajscope.store import UserError

router = APIRouter(prefix="/api/runs/{run_id}/series", tags=["series"],
                   responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}})

FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "npy": "application/x-npy"}
MAX_POINTS = 20_000
MAX_COLUMNS = 64
#: response header of ``format=npy``: the names of its columns, a JSON list (``["step", "W", ...]``)
COLUMNS_HEADER = "X-Trajscope-Columns"
MAX_VALUES = 2**20  # 2 · points · columns: bounds a response at roughly 20 MiB of JSON
OWN = {"step", "points", "scale", "neuron", "row", "tail", "first", "format", "v"}
MEMORY_STATES = 8192
MEMORY_BYTES = 64 * 2**20


def _quantities(ds) -> dict[str, Callable]:
    """The registry's quantities that apply to the run (all of them where the registry cannot tell)."""
    try:
        return registry.quantities(ds)
    except TypeError:  # a registry without per-run requirements
        return registry.quantities()


def _applicable(ds) -> dict[str, Callable]:
    """The applicable quantities that are per-step series (see :func:`trajscope.analysis.registry.is_series`)."""
    return {name: fn for name, fn in _quantities(ds).items() if is_series(fn)}


def _variable(name: str) -> Callable:
    from trajscope.analysis import select

    def fn(ds, step=None):
        return select(ds, step)[name]
    fn.stored_variable = name  # type: ignore[attr-defined]  (what table() tells a variable from a quantity by)
    return fn


def per_step_variables(ds: xr.Dataset) -> list[str]:
    """The names of the variables recorded per state (those with a ``step`` dimension), sorted."""
    return sorted(str(k) for k, v in ds.data_vars.items() if "step" in v.dims)


def source(run: Run, quantity: str) -> Callable:
    """The function computing ``quantity`` on the run's dataset (404 naming what exists). An applicable
    quantity comes first: a variable named like it (a module run's extra ``distance_from_init``) is read with
    ``/vars`` (``/analysis`` and the dashboard's charts mean the quantity by that name too)."""
    ds = run.dataset()
    items = _applicable(ds)
    if quantity in items:
        return items[quantity]
    per_step = per_step_variables(ds)
    if quantity in per_step:
        return _variable(quantity)
    if quantity in _quantities(ds):  # applies, but has no step dim: nothing computed to say so
        raise HTTPException(422, f"{quantity!r} is not a per-step series (it has no step dim): "
                                 f"use GET /api/runs/{run.run_id}/analysis/{quantity}")
    raise HTTPException(404, f"unknown series {quantity!r} for run {run.run_id!r}: available are the run's "
                             f"per-step variables ({', '.join(per_step)}) and the analysis quantities with a step "
                             f"dim that apply to it (GET /api/runs/{run.run_id}/series)")


def _with_rows(fn: Callable, dim: str, index: Any) -> Callable:
    """``fn`` on the rows ``index`` of dim ``dim`` only (their numbers kept as the dim's coordinate)."""
    def sub(ds, step=None, **kwargs):
        sub_ds = ds.isel({dim: index})
        if dim not in ds.coords:  # keep the rows' numbers in the column names
            sub_ds = sub_ds.assign_coords({dim: np.arange(ds.sizes[dim])[index]})
        return fn(sub_ds, step=step, **kwargs)
    return sub


def state_bytes(ds: xr.Dataset) -> int:
    """Bytes of one recorded state (every variable with a ``step`` dim)."""
    return sum(v.dtype.itemsize * (v.size // max(1, v.sizes["step"])) for v in ds.data_vars.values()
               if "step" in v.dims)


def _in_memory(fn: Callable, load: Callable) -> Callable:
    """``fn`` (a ``pointwise`` quantity) on the selected states and the run's first state, loaded by
    ``load(ds, index)``, when the selection ``step=slice(a, b)`` is small; else on the lazy dataset."""
    def on_states(ds, step=None, **kwargs):
        steps = ds["step"].values
        lo = 0 if step.start is None else int(np.searchsorted(steps, step.start, "left"))
        hi = steps.size if step.stop is None else int(np.searchsorted(steps, step.stop, "right"))
        if hi <= lo or hi - lo > MEMORY_STATES or (hi - lo) * state_bytes(ds) > MEMORY_BYTES:  # (none selected:
            return fn(ds, step=step, **kwargs)  # the whole run's steps say why)
        index = np.r_[0, np.arange(max(lo, 1), hi)] if hi > 0 else np.arange(0)
        return fn(load(ds, index), step=step, **kwargs)
    return on_states


def loader(run: Run, state: Any) -> Callable:
    """``load(ds, index)``: the states ``index`` of the run in memory, shared by the requests of one
    live update (cached by run version and states; built once when several ask at the same time)."""
    def load(ds, index: np.ndarray):
        key = run.cache_key("states", int(index[0]) if index.size else -1, int(index[-1]) if index.size else -1,
                            int(index.size))
        per_step = per_step_variables(ds)

        def build():  # only the per-step variables: static ones (X, y) stay lazy, read if a quantity needs them
            states = ds.isel(step=index)
            return states.assign(states[per_step].load().data_vars)

        value, _ = state.responses.get_or_build(key, build, lambda d: sum(d[n].nbytes for n in per_step))
        return value
    return load


def table(run: Run, quantity: str, step: slice | None, neuron: str | None, tail: int | None,
          kwargs: dict[str, Any], first: int | None = None, row: str | None = None,
          load: Callable | None = None) -> tuple[Any, Callable]:
    """``(result, finish)``: ``quantity`` over the selection as the analysis returns it, lazy (only the first
    ``first`` columns when given; only the neurons ``neuron`` or the rows ``row`` of the parameter named by
    ``kwargs["parameter"]``), and ``finish(computed)`` giving ``(steps, columns, attrs)`` of it, or of a piece
    of it, once computed. ``load(ds, index)`` (see :func:`loader`) lets a small step range of a ``pointwise``
    quantity be computed in memory."""
    from trajscope.analysis.downsample import column_count, columns, first_columns
    from trajscope.analysis.registry import parameter_names

    fn = fn_source = source(run, quantity)
    ds = run.dataset()
    if tail is not None:
        steps = ds["step"].values
        if steps.size == 0:
            raise HTTPException(422, f"run {run.run_id!r} has no committed states yet: retry when it has")
        step = slice(int(steps[max(0, steps.size - tail)]), None, None)
    variable = hasattr(fn_source, "stored_variable")  # a stored variable (W, loss, fc1.weight...), not a quantity
    if neuron is not None:
        if "neuron" not in ds.dims:
            raise UserError(f"neuron={neuron}: run {run.run_id!r} has no neuron dimension")
        if variable and "neuron" not in ds[quantity].dims:  # (it would be ignored)
            raise UserError(f"neuron={neuron}: variable {quantity!r} has no neuron dimension "
                            f"(its dims: {', '.join(map(str, ds[quantity].dims))})")
        if not variable and not any("neuron" in ds[n].dims for n in parameter_names(ds)):  # (an extra's dim)
            raise UserError(f"neuron={neuron}: no parameter of run {run.run_id!r} has a neuron dimension, so it "
                            f"would select nothing of {quantity!r}: pick rows of a matrix parameter with "
                            f"parameter=NAME&row=0:8")
        index = selectors.positional("neuron", selectors.parse("neuron", neuron), ds.sizes["neuron"])
        fn = _with_rows(fn, "neuron", [index] if isinstance(index, int) else index)
    if row is not None:
        name = kwargs.get("parameter") or (quantity if variable else None)  # a variable's own rows
        if not name or name not in ds.data_vars or ds[name].ndim < 3 or ds[name].dims[0] != "step":
            matrices = [n for n in parameter_names(ds) if ds[n].ndim >= 3 and ds[n].dims[0] == "step"]
            if not name:
                why = "name it with parameter=NAME"
            elif name not in ds.data_vars:
                why = f"{name!r} is no variable of the run (give one name, not a pattern)"
            else:
                why = f"{name!r} is not a matrix (dims {', '.join(map(str, ds[name].dims))})"
            raise UserError(f"row={row} selects rows of a matrix parameter: {why}; the run's matrix parameters "
                            f"are {', '.join(matrices) or 'none'}")
        dim = ds[name].dims[1]
        if dim == "neuron" and neuron is not None:  # both would select along one dim, the second of the first
            raise UserError(f"neuron={neuron} and row={row} both select {name}'s neurons: give one of them")
        index = selectors.positional("row", selectors.parse("row", row), ds.sizes[dim])
        fn = _with_rows(fn, dim, [index] if isinstance(index, int) else index)
    if load is not None and is_pointwise(fn_source, kwargs) and step is not None and step.step is None:
        fn = _in_memory(fn, load)

    def narrow(result):
        """Checked and cut before anything is computed: the series kept, never more than the limit."""
        if not hasattr(result, "dims") or "step" not in result.coords:
            raise HTTPException(422, f"{quantity!r} is not a per-step series (it has no step dim): "
                                     f"use GET /api/runs/{run.run_id}/analysis/{quantity}")
        count = column_count(result)
        if count == 0:
            raise HTTPException(422, f"{quantity!r} has no per-step variable: use GET /api/runs/{run.run_id}/analysis/{quantity}")
        if first is None and count > MAX_COLUMNS:
            dims = set(getattr(result, "dims", ()))
            pick = ("pick neurons with neuron=0,3,7 or neuron=0:8" if "neuron" in dims
                    else f"pick rows of {quantity} with row=0:8" if variable and ds[quantity].ndim >= 3
                    else "pick rows of a matrix parameter with parameter=NAME&row=0:8" if "parameter" in kwargs
                    else "")
            raise UserError(f"{quantity!r} has {count} series, over the limit of {MAX_COLUMNS}: keep the first "
                            "few with first=16" + (f", or {pick}" if pick else ""))
        return result if first is None else first_columns(result, first)

    result = call(run, fn, f"series {quantity!r}", step, kwargs, narrow=narrow, lazy=True)
    rows_kept = neuron is not None or row is not None

    def finish(computed: Any) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, dict]]:
        """``(steps, columns, attrs)`` of the result (or of a piece of it) once computed."""
        cols = columns(computed, quantity)
        if first is not None:
            cols = dict(list(cols.items())[:first])
        variables = (computed if isinstance(computed, dict) else computed.data_vars
                     if hasattr(computed, "data_vars") else {str(computed.name or quantity): computed})
        attrs = {str(k): jsonable({a: v.attrs[a] for a in ("long_name", "units", "kind", "status") if a in v.attrs})
                 for k, v in variables.items()}
        steps = next(iter(computed.values())) if isinstance(computed, dict) else computed
        if rows_kept:  # θ's total over the kept rows only is no total of θ (a review)
            from trajscope.analysis.generic import SELECTED, TOTAL

            cols = {(SELECTED if k == TOTAL else k): v for k, v in cols.items()}
            attrs = {(SELECTED if k == TOTAL else k): v for k, v in attrs.items()}
        return np.asarray(steps["step"].values), cols, attrs

    return result, finish


def state_steps(result: Any) -> np.ndarray:
    """The ``step`` coordinate of a (lazy) series result: in memory, nothing is computed."""
    one = next(iter(result.values())) if isinstance(result, dict) else result
    return np.asarray(one["step"].values)


def step_chunk(result: Any) -> int:
    """The longest dask chunk along ``step`` of a (lazy) series result's variables (0 when none is chunked)."""
    longest = 0
    for da in (result.values() if isinstance(result, dict) else
               result.data_vars.values() if hasattr(result, "data_vars") else [result]):
        # (the variable's own chunks: ``DataArray.chunksizes`` also takes its coordinates', and raises when the ``t``
        # coordinate is chunked otherwise than the data, as in a run past 65,536 states; found by a review: a 500)
        chunks = getattr(getattr(da, "variable", None), "chunksizes", {}) or {}
        if "step" in chunks:
            longest = max(longest, max(chunks["step"], default=0))
    return int(longest)


def piece_of(result: Any, start: int, stop: int) -> Any:
    """The states ``start:stop`` (positions) of a (lazy) series result."""
    if isinstance(result, dict):
        return {k: v.isel(step=slice(start, stop)) for k, v in result.items()}
    return result.isel(step=slice(start, stop))


#: states of a series computed at once when it is downsampled: a long run's series is computed and reduced piece
#: by piece, so a request holds about this many states of its columns, not the whole run's (found by a review: 1 GB
#: of server memory for the dashboard's step_series of a run of 10^6 states of 16 bytes)
PIECE_STATES = 65_536


def downsampled(run: Run, quantity: str, result: Any, finish: Callable, points: int, scale: str) -> tuple:
    """``(names, Downsampled, steps, attrs)`` of a series: computed whole when it is short, else piece by piece
    (:func:`~trajscope.analysis.downsample.pieces`, cut at bucket edges, so the result is the whole's)."""
    from trajscope.analysis.downsample import bucket_index, concat, minmax_downsample, pieces

    steps = state_steps(result)
    whole = steps.size <= max(PIECE_STATES, 2 * points)
    buckets = None if whole else bucket_index(steps, points, scale)
    # pieces of whole time chunks at least: a kernel computes a chunk's states at once (step_series), so a piece
    # inside a chunk would compute that chunk again for every piece of it
    spans = [(0, steps.size)] if whole else pieces(buckets, max(PIECE_STATES, step_chunk(result)))
    parts, names, attrs = [], None, {}
    for start, stop in spans:
        with analysis_errors(run, f"series {quantity!r}"):
            piece_steps, cols, attrs = finish(compute(result if whole else piece_of(result, start, stop)))
        if names is None:
            names = list(cols)
            check_size(points, len(names))
        parts.append(minmax_downsample(piece_steps, np.stack([cols[c] for c in names], axis=1), points, scale,
                                       buckets=None if whole else buckets[start:stop]))
    return names, concat(parts), steps, attrs


def check_size(points: int, ncols: int) -> None:
    if 2 * points * ncols > MAX_VALUES:
        raise UserError(f"points={points} for {ncols} series is over the limit of {MAX_VALUES} values per "
                        f"response: ask for at most points={MAX_VALUES // (2 * ncols)}")


@router.get("/{quantity}", summary="A per-step series, min–max downsampled to about `points` points",
            responses={200: {"content": {"text/csv": {}, "application/x-npy": {}}}})
async def series(
    run: RunDep,
    state: State,
    quantity: str,
    request: Request,
    step: Annotated[str | None, Query(description="optimizer steps a:b (both ends included); default all")] = None,
    points: Annotated[int, Query(ge=1, le=MAX_POINTS, description="buckets (chart width in pixels): at most "
                                                                   "2·points rows come back")] = 1000,
    scale: Annotated[str, Query(pattern="^(linear|log)$", description="bucket spacing along the steps")] = "linear",
    neuron: Annotated[str | None, Query(description="neurons to keep first: 3, 0,4,9 or 0:8")] = None,
    row: Annotated[str | None, Query(description="rows of the matrix parameter named by `parameter` to keep "
                                                 "first (row_angles): 3, 0,4,9 or 0:8")] = None,
    tail: Annotated[int | None, Query(ge=1, description="only the last `tail` recorded states (live updates)")] = None,
    first: Annotated[int | None, Query(ge=1, le=MAX_COLUMNS, description="keep only the first `first` series "
                                                                         "(e.g. the largest singular values)")] = None,
    format: Annotated[str, Query(pattern="^(json|csv|npy)$", description="json, csv or npy (columns step, "
                                                                          "then each series)")] = "json",
) -> Response:
    fn_kwargs = {k: v for k, v in request.query_params.items() if k not in OWN}
    if tail is not None and step is not None:  # (found by a review: tail= silently won)
        raise UserError("tail= and step= together: give one (tail=N: the last N recorded states; step=a:b: a range)")
    sl = step_slice(step)
    key = run.cache_key("series", quantity, str(sl), points, scale, neuron, row, tail, first, format,
                        tuple(sorted(fn_kwargs.items())))

    def build() -> bytes:
        fn = source(run, quantity)
        kwargs = registry.bind(fn, fn_kwargs, f"series {quantity!r}") if fn_kwargs else {}
        result, finish = table(run, quantity, sl, neuron, tail, kwargs, first, row, loader(run, state))
        names, out, steps, attrs = downsampled(run, quantity, result, finish, points, scale)
        if format == "npy":  # (its column names kept before it, for the header: a \0 ends the JSON text)
            return (json.dumps(["step", *names]).encode() + b"\0"
                    + npy_bytes(np.column_stack([out.x.astype(np.float64), out.values])))
        if format == "csv":  # (a column name with a comma, fc2.weight[0,1], is quoted)
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(["step", *names])
            writer.writerows([str(int(x)), *("" if np.isnan(v) else repr(float(v)) for v in row)]
                             for x, row in zip(out.x, out.values))
            return text.getvalue().encode()
        return dumps({
            "run_id": run.run_id, "quantity": quantity, "status": run.status, "committed_steps": run.committed,
            "selection": {"first": int(steps[0]) if steps.size else None,
                          "last": int(steps[-1]) if steps.size else None, "states": int(steps.size)},
            "points": points, "scale": scale, "exact": out.exact,
            "x": out.x.tolist(), "series": {n: array_values(out.values[:, i]) for i, n in enumerate(names)},
            "attrs": attrs,
        })

    body = state.responses.get(key)
    hit = body is not None
    if not hit:  # (another request computing the same: waited for on the event loop)
        cached, built = await once(request, state, key, state.responses.get_or_build, key, build, len)
        body, hit = (cached, True) if built is None else built
    headers = {"X-Trajscope-Cache": "hit" if hit else "miss"}
    if format == "npy":  # an .npy has no column names: they come as a JSON list in a header (found by a review)
        columns, _, body = bytes(body).partition(b"\0")
        headers[COLUMNS_HEADER] = columns.decode()
    if format != "json":
        headers["Content-Disposition"] = f'attachment; filename="{run.run_id}-{quantity}.{format}"'
    return Response(body, media_type=FORMATS[format], headers=headers)


@router.get("", summary="What the run offers as per-step series: its variables and the applicable quantities")
def listing(run: RunDep) -> dict[str, Any]:
    """``variables`` (per-step variables), ``quantities`` (the applicable analysis quantities with a ``step``
    dim; the others are under ``/analysis``), ``shadowed`` (variables named like one of those quantities: their
    ``/vars`` URL) and ``matrices``: each matrix parameter's row dim, rows and row length (what
    ``row_angles`` follows, rows picked with ``row=``)."""
    from trajscope.analysis.registry import parameter_names

    ds = run.dataset()
    base = f"/api/runs/{run.run_id}/series"
    matrices = {}
    for name in parameter_names(ds):
        da = ds[name]
        if da.ndim >= 3 and da.dims[0] == "step":
            matrices[name] = {"dim": da.dims[1], "rows": int(da.shape[1]), "row_length": int(np.prod(da.shape[2:]))}
    quantities = _applicable(ds)
    variables = per_step_variables(ds)
    return {"run_id": run.run_id, "committed_steps": run.committed,
            "variables": {name: f"{base}/{name}" for name in variables if name not in quantities},
            "quantities": {name: f"{base}/{name}" for name in sorted(quantities)},
            "matrices": matrices,
            # a variable named like a quantity: /series/NAME is the quantity, the variable is read with /vars
            "shadowed": {name: f"/api/runs/{run.run_id}/vars/{name}" for name in variables if name in quantities}}
