"""``/api/runs/{run_id}/analysis``: every quantity of ``trajscope.analysis.QUANTITIES`` as JSON."""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any, Callable, Iterator

import xarray as xr
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from trajscope.analysis import select
from trajscope.api import registry, selectors
from trajscope.api.deps import Run, RunDep, State
from trajscope.api.models import AnalysisResult, ErrorBody, Listing
from trajscope.api.serialize import dumps, jsonable, nbytes_of
from trajscope.api.work import once
from trajscope.store import UserError
from trajscope.store.errors import object_store_error
from trajscope.store.integrity import is_checksum_error

log = logging.getLogger("trajscope.api")
router = APIRouter(prefix="/api/runs/{run_id}/analysis", tags=["analysis"],
                   responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}})

STEP_HELP = "optimizer steps a:b:s (both ends included, stride over recorded states); default all"


def step_slice(text: str | None) -> slice | None:
    """The ``step`` query parameter as the ``slice`` the analysis functions take."""
    sel = selectors.parse("step", text)
    if sel.kind == "list":
        if not sel.scalar:
            raise UserError(f"step={text}: the analysis takes a range a:b:s or a single step, not a list")
        return slice(sel.values[0], sel.values[0])
    return sel.as_slice()


#: what ``concurrent.futures`` raises when a pool takes no more work (shut down, or the interpreter exiting)
POOL_SHUT_DOWN = frozenset({"cannot schedule new futures after shutdown",
                            "cannot schedule new futures after interpreter shutdown"})


@contextlib.contextmanager
def analysis_errors(run: Run, what: str) -> Iterator[None]:
    """An analysis failing on this run becomes a 422 naming it, never a 500; user errors, HTTP errors, corrupt
    stored data and an object store's refusals go on to their own mappings (api.errors)."""
    try:
        yield
    except (UserError, HTTPException):
        raise
    except Exception as err:  # noqa: BLE001 - an analysis that cannot run on this run is not a server crash
        if is_checksum_error(err) or object_store_error(err) is not None:
            raise
        if isinstance(err, RuntimeError) and str(err) in POOL_SHUT_DOWN:
            # the server is stopping (SIGTERM) and its thread pools take no more work: one line, not a traceback
            # per running computation (found by a review)
            log.warning("%s on run %s stopped: the server is shutting down", what, run.run_id)
            raise HTTPException(503, "the server is shutting down: retry in a moment") from None
        log.exception("%s failed on run %s", what, run.run_id)
        raise HTTPException(422, f"{what} could not be computed for run {run.run_id!r}: "
                                 f"{type(err).__name__}: {err}") from None


def compute(result: Any) -> Any:
    """A lazy analysis result computed: a DataArray or Dataset, or (what ``narrow`` may make of a Dataset) a dict
    of its variables, in one go, as the Dataset's (what they share, a read of ``W``..., is computed once)."""
    if isinstance(result, (xr.DataArray, xr.Dataset)):
        return result.compute()
    if isinstance(result, dict):
        import dask

        return dict(zip(result, dask.compute(*result.values())))
    return result


def call(run: Run, fn: Callable, what: str, step: slice | None, kwargs: dict[str, Any], *,
         narrow: Callable[[Any], Any] | None = None, max_bytes: int | None = None, lazy: bool = False) -> Any:
    """Run an analysis function on the run's dataset; its failures become 4xx, never 500.

    Before the (lazy) result is computed, ``narrow`` may cut it to what the response needs, and a result
    over ``max_bytes`` (as JSON, from its sizes alone) is refused with a 413: a request never makes the
    server compute what it would not send. ``lazy`` returns it uncomputed (the caller computes it piece by
    piece, within :func:`analysis_errors`)."""
    ds = run.dataset()
    if step is not None:
        if ds.sizes.get("step", 0) == 0:
            raise UserError(f"run {run.run_id!r} has no committed states yet")
        try:
            select(ds, slice(step.start, step.stop))  # a range with no recorded state: the analysis's own words
        except UserError as err:
            raise UserError(f"step: {err}") from None  # (naming the parameter)
    if ds.sizes.get("step", 0) == 0:
        raise HTTPException(422, f"run {run.run_id!r} has no committed states yet: retry when it has")
    with analysis_errors(run, what):
        if step is not None and registry.accepts_step(fn):
            kwargs = {**kwargs, "step": step}
        result = fn(ds, **kwargs)
        if narrow is not None:
            result = narrow(result)
        if max_bytes is not None and nbytes_of(result) > max_bytes:
            raise HTTPException(413, f"{what} over the whole selection is over the cap of {max_bytes // 2**20} MiB: "
                                     "narrow it with step=a:b:s (e.g. a stride ::10)")
        return result if lazy else compute(result)


@router.get("", response_model=Listing, summary="The analysis quantities available")
def list_quantities(run: RunDep) -> dict[str, Any]:
    items = registry.quantities(run.dataset())
    return {"run_id": run.run_id,
            "items": {name: f"/api/runs/{run.run_id}/analysis/{name}" for name in sorted(items)},
            "params": {name: registry.options(fn) for name, fn in sorted(items.items())}}


@router.get("/{quantity}", response_model=AnalysisResult, summary="One analysis quantity (JSON)")
async def quantity_result(
    run: RunDep,
    state: State,
    quantity: str,
    request: Request,
    step: Annotated[str | None, Query(description=STEP_HELP)] = None,
) -> Response:
    fn = _lookup(registry.quantities(await run_in_threadpool(run.dataset)), quantity, "analysis quantity", run.run_id)
    extra = {k: v for k, v in request.query_params.items() if k != "step"}
    kwargs = registry.bind(fn, extra, f"quantity {quantity!r}")
    sl = step_slice(step)
    key = run.cache_key("analysis", quantity, str(sl), tuple(sorted(kwargs.items())))

    def build() -> bytes:
        result = call(run, fn, f"quantity {quantity!r}", sl, kwargs, max_bytes=state.max_response_bytes)
        return dumps({"run_id": run.run_id, "quantity": quantity, "committed_steps": run.committed,
                      "params": jsonable({"step": None if sl is None else [sl.start, sl.stop, sl.step], **kwargs}),
                      "result": jsonable(result)})

    body = state.responses.get(key)  # a hit is answered on the event loop
    hit = body is not None
    if not hit:
        cached, built = await once(request, state, key, state.responses.get_or_build, key, build, len)
        body, hit = (cached, True) if built is None else built
    return Response(body, media_type="application/json", headers={"X-Trajscope-Cache": "hit" if hit else "miss"})


def _lookup(items: dict[str, Callable], name: str, what: str, run_id: str) -> Callable:
    try:
        return registry.lookup(items, name, what, run_id)
    except LookupError as err:
        raise HTTPException(404, str(err)) from None
