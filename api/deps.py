"""FastAPI dependencies: the app state and a run (validated id, attributes, cached dataset).

Both are ``async``: a request whose run attributes are cached (see :meth:`ApiState.cached_attrs`)
resolves its run on the event loop without a thread-pool hop; otherwise the read goes to a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import xarray as xr
from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from trajscope.api.state import ApiState
from trajscope.store import COMMITTED, RunNotFound, UserError, validate_run_id
from trajscope.store.layout import RUN_UID
from trajscope.store.snapshot import inside_root


async def get_state(request: Request) -> ApiState:
    """The :class:`ApiState` of the app serving ``request``."""
    return request.app.state.trajscope


State = Annotated[ApiState, Depends(get_state)]


@dataclass
class Run:
    """A run as one request sees it: the attributes taken once at the start of the request (read
    fresh, or cached as :meth:`ApiState.cached_attrs` allows)."""

    run_id: str
    attrs: dict[str, Any]
    state: ApiState

    @property
    def committed(self) -> int:
        return int(self.attrs.get(COMMITTED, 0))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def version(self) -> tuple:
        """Changes whenever the run commits, finishes or is rewritten (``run_uid``: also when it is deleted and
        created again under the same id within the one second that ``created`` and ``updated`` resolve)."""
        return (self.status, self.committed, self.attrs.get("updated"), self.attrs.get("created"),
                self.attrs.get(RUN_UID))

    def dataset(self) -> xr.Dataset:
        """The lazy dataset trimmed to :attr:`committed` (cached per version)."""
        return self.state.dataset(self.run_id, self.version)

    def cache_key(self, *parts: Any) -> tuple:
        return (self.run_id, self.version, *parts)


def load_run(state: ApiState, run_id: str) -> Run:
    """Validate ``run_id`` and read its attributes now (404 when there is no such run)."""
    validate_run_id(run_id)
    if not inside_root(state.root, run_id):
        raise RunNotFound(f"run {run_id!r} resolves outside the served root; it is not served")
    try:
        attrs = state.read_attrs(run_id)
    except RunNotFound:
        raise RunNotFound(f"no run {run_id!r} under the served root: GET /api/runs lists the runs") from None
    except ValueError as err:  # unreadable JSON
        raise UserError(f"run {run_id!r} has unreadable metadata: {err}") from None
    return Run(run_id, attrs, state)


async def get_run(state: State,
                  run_id: Annotated[str, Path(description="run id, as listed by GET /api/runs")]) -> Run:
    validate_run_id(run_id)
    attrs = state.cached_attrs(run_id)
    if attrs is not None:
        return Run(run_id, attrs, state)
    return await run_in_threadpool(load_run, state, run_id)


RunDep = Annotated[Run, Depends(get_run)]
