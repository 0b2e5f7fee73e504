"""``/api/runs/{run_id}/plots/{kind}.png|.svg``: the figures of ``trajscope.analysis.PLOT_KINDS``.

Rendered with matplotlib's Agg backend under one lock, and cached per (run, committed steps, kind,
format, parameters): a finished run's figure is drawn once. With ``check=true`` the listing reports
the kinds that do not apply to the run, found once per run on its first two states (:func:`probe`) plus
any whose drawing already failed; it never draws the run's figures.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Annotated, Any, Callable

from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from trajscope.api import registry
from trajscope.api.deps import Run, RunDep, State
from trajscope.api.models import ErrorBody, Listing
from trajscope.api.routes_analysis import STEP_HELP, _lookup, call, step_slice
from trajscope.api.state import ApiState
from trajscope.api.work import compute, once
from trajscope.store import UserError
from trajscope.store.errors import object_store_error
from trajscope.store.integrity import is_checksum_error
from trajscope.store.layout import RUN_UID

log = logging.getLogger("trajscope.api")

router = APIRouter(prefix="/api/runs/{run_id}/plots", tags=["plots"],
                   responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}})

FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
_RENDER = threading.Lock()


def render(figure: Any, fmt: str) -> bytes:
    """Bytes of a matplotlib Figure (or Axes, or an object with ``savefig``) in ``fmt``; closes it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(figure, (bytes, bytearray)):
        return bytes(figure)
    fig = getattr(figure, "figure", None) if not hasattr(figure, "savefig") else figure
    if fig is None and hasattr(figure, "flat"):  # an array of Axes
        fig = figure.flat[0].figure
    if fig is None or not hasattr(fig, "savefig"):
        raise TypeError(f"the plot function returned {type(figure).__name__}, not a matplotlib figure")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _identity(run: Run) -> tuple:
    """A run as a whole, whatever it has committed: what a figure needs of it does not change as it grows.
    A run still being written is another identity than the same run finished, so a figure that could not be
    drawn from its first few states is tried again once it has ended, and one of a single state is another
    identity than the same run with two (a kind drawn from differences of states needs two)."""
    return (run.run_id, run.attrs.get("created"), run.attrs.get(RUN_UID), run.status == "running",
            min(run.committed, 2))


def _key(run: Run, kind: str, fmt: str, sl: slice | None, kwargs: dict[str, Any]) -> tuple:
    return run.cache_key("plot", kind, fmt, str(sl), tuple(sorted(kwargs.items())))


def figure(run: Run, state: ApiState, kind: str, fn: Callable, fmt: str, sl: slice | None,
           kwargs: dict[str, Any]) -> tuple[bytes, bool]:
    """The figure's bytes and whether they came from the cache; failures are cached too (same run
    version), so a figure that cannot be drawn for a run is not recomputed on every request."""
    key = _key(run, kind, fmt, sl, kwargs)

    def build() -> tuple[int, bytes | str]:
        try:
            result = call(run, fn, f"figure {kind!r}", sl, kwargs)
            with _RENDER:
                return 200, render(result, fmt)
        except HTTPException as err:
            return err.status_code, str(err.detail)
        except UserError as err:
            return 400, str(err)
        except Exception as err:  # noqa: BLE001 - a figure that cannot be drawn is not a server crash
            if is_checksum_error(err) or object_store_error(err) is not None:
                raise  # not cached: corrupt stored data (503) or the object store refusing (502): api.errors
            log.exception("figure %s failed to render for run %s", kind, run.run_id)
            return 422, f"figure {kind!r} could not be drawn for run {run.run_id!r}: {type(err).__name__}: {err}"

    (status, body), hit = state.responses.get_or_build(key, build, lambda v: len(v[1]))
    if status in (400, 422) and sl is None and not kwargs:  # the run cannot show this kind: remembered
        state.figure_failures.setdefault(_identity(run), {})[kind] = str(body)
    if status != 200:
        raise HTTPException(status, body)
    return body, hit


def check_states_drawn(run: Run, kind: str, text: str | None, sl: slice) -> None:
    """A figure over HTTP draws at most :data:`~trajscope.analysis.figure_parts.MAX_POINTS` states: an explicit
    stride that keeps more is refused (413) before anything is read or computed, so one request cannot make
    the server compute, say, the SVD of every state of a long run (a figure is at most a few hundred pixels
    wide; without a stride it thins itself to that many states)."""
    from trajscope.analysis.figure_parts import MAX_POINTS, states_drawn

    count = states_drawn(run.dataset(), sl)
    if count > MAX_POINTS:
        stride = -(-count * sl.step // MAX_POINTS)
        raise HTTPException(413, f"figure {kind!r} with step={text} would draw {count} states, over the limit of "
                                 f"{MAX_POINTS} a figure draws over HTTP: use a stride of at least {stride} "
                                 f"(step=a:b:{stride}), or leave the stride out and the figure thins itself")


def _close(result: Any) -> None:
    import matplotlib.pyplot as plt

    fig = result if hasattr(result, "savefig") else getattr(result, "figure", None)
    if fig is not None:
        plt.close(fig)


def probe(run: Run, kinds: dict[str, Callable]) -> dict[str, str]:
    """Kinds this run cannot show, with the reason: each figure function is called on the run's
    *first two* recorded states only (a kind drawn from differences of states needs two) and nothing is
    rendered, so the cost does not grow with the run; a :class:`UserError` (what a figure raises when
    the run lacks what it needs, e.g. 2-D data, or a second state) marks the kind unavailable, anything
    else is left to the real request."""
    ds = run.dataset()
    steps = ds["step"].values
    first = slice(int(steps[0]), int(steps[min(1, steps.size - 1)]))
    out: dict[str, str] = {}
    for kind, fn in kinds.items():
        try:
            with _RENDER:  # matplotlib's state is shared
                _close(fn(ds, step=first))
        except UserError as err:
            out[kind] = str(err)
        except Exception as err:  # noqa: BLE001 - one state may not be enough: the real request will tell
            if is_checksum_error(err) or object_store_error(err) is not None:
                raise
    return out


@router.get("", response_model=Listing, summary="The figure kinds available")
async def list_plots(
    run: RunDep,
    state: State,
    request: Request,
    check: Annotated[bool, Query(description="list under 'unavailable' the kinds this run cannot show, with the "
                                 "reason (checked once per run on its first two states; never draws a figure)")] = False,
) -> dict[str, Any]:
    kinds = registry.plot_kinds(await run_in_threadpool(run.dataset))
    items = {k: f"/api/runs/{run.run_id}/plots/{k}.png" for k in sorted(kinds)}
    unavailable: dict[str, str] = {}
    if check:  # issue 8 item 8: this drew every figure of the whole run, again after every commit
        if run.committed == 0:
            unavailable = {k: "no committed states yet" for k in items}
        else:  # a computation like any other: under the work limiter, stopped when its client goes
            key = ("plots-probe", *_identity(run), tuple(sorted(kinds)))
            probed = state.responses.get(key)
            if probed is None:
                probed, built = await once(request, state, key, state.responses.get_or_build, key,
                                           lambda: probe(run, kinds), lambda v: 64 * (len(v) + 1))
                if built is not None:
                    probed = built[0]
            unavailable = {**probed, **(state.figure_failures.get(_identity(run)) or {})}
            unavailable = {k: reason for k, reason in unavailable.items() if k in items}
        items = {k: u for k, u in items.items() if k not in unavailable}
    return {"run_id": run.run_id, "items": items, "unavailable": unavailable,
            "params": {k: registry.options(fn) for k, fn in sorted(kinds.items())}}


@router.get("/{filename}", summary="One figure, as KIND.png or KIND.svg",
            responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}})
async def plot(
    run: RunDep,
    state: State,
    filename: str,
    request: Request,
    step: Annotated[str | None, Query(description=STEP_HELP)] = None,
) -> Response:
    kind, dot, fmt = filename.rpartition(".")
    if not dot or fmt not in FORMATS:
        raise HTTPException(404, f"figure {filename!r}: name it KIND.png or KIND.svg "
                                 f"(GET /api/runs/{run.run_id}/plots lists the kinds)")
    fn = _lookup(registry.plot_kinds(await run_in_threadpool(run.dataset)), kind, "figure kind", run.run_id)
    extra = {k: v for k, v in request.query_params.items() if k != "step"}
    kwargs = registry.bind(fn, extra, f"figure {kind!r}")
    sl = step_slice(step)
    # without a stride a figure thins itself; one not drawn over time reads a state or two whatever the stride
    if sl is not None and sl.step is not None and getattr(fn, "over_time", True):
        await run_in_threadpool(check_states_drawn, run, kind, step, sl)
    key = _key(run, kind, fmt, sl, kwargs)
    cached = state.responses.get(key)  # a hit is answered on the event loop
    if cached is None:  # (another request drawing the same: waited for on the event loop)
        cached, built = await once(request, state, key, figure, run, state, kind, fn, fmt, sl, kwargs)
    else:
        built = None
    if built is not None:
        body, hit = built
    elif cached[0] == 200:
        body, hit = cached[1], True
    else:  # a figure this run cannot show, remembered: said as when it was drawn
        body, hit = await compute(request, state, figure, run, state, kind, fn, fmt, sl, kwargs)
    return Response(body, media_type=FORMATS[fmt],
                    headers={"X-Trajscope-Cache": "hit" if hit else "miss", "Cache-Control": "no-cache"})
