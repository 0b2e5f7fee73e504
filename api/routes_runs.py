"""``/api/runs``: list, describe and (with a token) delete runs."""

from __future__ import annotations

import errno
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query
from starlette.concurrency import run_in_threadpool

from trajscope.api.deps import RunDep, State, load_run
from trajscope.api.models import ErrorBody, RunDetail, RunList, VariableInfo
from trajscope.api.serialize import jsonable
from trajscope.api.state import ApiState, public_root
from trajscope.store import RunInfo, UserError, describe_run
from trajscope.store.errors import MalformedRun
from trajscope.store.run_attrs import delete_run as remove_run
from trajscope.store.snapshot import inside_root
from trajscope.store.layout import RUN_UID, STATUSES
from trajscope.store.locks import writer_gone, writer_holds, writer_named

REALM = "trajscope"
router = APIRouter(prefix="/api/runs", tags=["runs"], responses={404: {"model": ErrorBody}, 400: {"model": ErrorBody}})


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; keeps scalar leaves and short lists."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(config, (list, tuple)):
        if len(config) <= 8 and all(not isinstance(v, (dict, list)) for v in config):
            out[prefix[:-1]] = jsonable(list(config))
    else:
        out[prefix[:-1]] = jsonable(config)
    return out


def summary(info: RunInfo, size: bool) -> dict[str, Any]:
    base = f"/api/runs/{info.run_id}"
    return {
        "run_id": info.run_id,
        "status": info.status,
        "committed_steps": info.committed_steps,
        "capacity": info.capacity,
        "planned_states": info.planned_states,
        "progress": (info.committed_steps / info.planned_states) if info.planned_states else None,
        "created": info.created,
        "updated": info.updated,
        "size_bytes": info.size_bytes if size else None,
        "config": flatten(info.config),
        "error": info.error,
        "writer_gone": info.writer_gone,
        "tags": info.tags,
        "note": info.note,
        "not_finite": info.not_finite,
        "final_loss": info.final_loss,
        "links": {"self": base, "analysis": f"{base}/analysis", "plots": f"{base}/plots",
                  "zarr": f"/zarr/{info.run_id}", "dashboard": f"/#/run/{info.run_id}"},
    }


@router.get("", response_model=RunList, summary="List the runs under the served root")
def runs(
    state: State,
    status: Annotated[str | None, Query(description=f"keep only runs with this status: {', '.join(STATUSES)}")] = None,
    size: Annotated[bool, Query(description="compute each run's size on storage (slower on object stores)")] = True,
) -> dict[str, Any]:
    if status is not None and status not in STATUSES:
        raise UserError(f"status={status!r} is not a run status: use one of {', '.join(STATUSES)}")
    infos = []
    for run_id in state.root.run_ids():
        if not inside_root(state.root, run_id):
            continue  # a symlink out of the root: never read
        try:
            infos.append(describe_run(run_id, state.root, with_size=size, attrs=state.listed_attrs(run_id)))
        except (KeyError, ValueError, UserError, PermissionError):  # half-created, unreadable, malformed or another
            continue  # user's (found by a review: one such run made the whole listing a 503): skipped, as ls does
    return {"root": public_root(state.root),
            "runs": [summary(i, size) for i in infos if status is None or i.status == status]}


@router.get("/{run_id}", response_model=RunDetail, summary="Describe one run: attributes and variables")
def run_detail(run: RunDep, state: State) -> dict[str, Any]:
    info = describe_run(run.run_id, state.root)
    ds = run.dataset()
    variables = []
    for name, var in ds.variables.items():
        chunks = var.encoding.get("preferred_chunks") or {}
        variables.append(VariableInfo(
            name=str(name), dims=[str(d) for d in var.dims], shape=list(var.shape),
            chunks=[int(chunks[d]) for d in var.dims] if all(d in chunks for d in var.dims) else None,
            dtype=str(var.dtype), coordinate=name in ds.coords))
    body = summary(info, True)
    body["links"].update({f"var:{v.name}": f"/api/runs/{run.run_id}/vars/{v.name}" for v in variables})
    if run.attrs.get(RUN_UID):  # the store of this run only: 410 once it is deleted or created again
        body["links"]["zarr_pinned"] = f"/zarr/{run.run_id}@{run.attrs[RUN_UID]}"
    return {**body, "attrs": jsonable(run.attrs), "variables": variables}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (RFC 6750 §2.1), else ``None``.

    The scheme is case-insensitive; the token is taken exactly as sent (no trimming inside it)."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.lstrip(" ") or None


def check_token(state: ApiState, authorization: str | None) -> None:
    """403 on a read-only server, 401 without the configured bearer token (compared in constant time)."""
    if not state.token:
        raise HTTPException(403, "the API is read-only: start `trajscope serve --token-file F` to allow deletes "
                                 "(the API image: set TRAJSCOPE_TOKEN_FILE to the file)")
    presented = bearer_token(authorization)
    if presented is None:
        raise HTTPException(401, "a bearer token is required: send the header 'Authorization: Bearer TOKEN'",
                            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if not secrets.compare_digest(presented.encode(), state.token.encode()):
        raise HTTPException(401, "the bearer token is not the one this server was started with",
                            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})


def refuse_running(state: ApiState, run_id: str) -> None:
    """The 409 for a ``running`` run asked to be deleted without ``force``: it names the writer its lock names
    (a review found only a force hint for a run whose producer was alive), or says that ``force=true`` deletes
    it where that writer is gone. (A lock file keeps naming a writer that let the run go, so a live process
    named is "stop it first", not a certainty.)"""
    if writer_gone(state.root, run_id):
        raise HTTPException(409, f"run {run_id!r} is marked running but its writer is gone (its producer was "
                                 f"killed): pass force=true to delete it, or resume it first")
    writer = writer_named(state.root, run_id)
    raise HTTPException(409, f"run {run_id!r} is marked running" + (f" and its lock names {writer}, a live process"
                             if writer else "") + ": stop its producer first; if none writes it any more, pass "
                             "force=true (refused, naming the writer, while one holds the run)")


@router.delete("/{run_id}", status_code=200, summary="Delete a run (only with the configured token)",
               responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 409: {"model": ErrorBody}})
async def delete_run(
    state: State,
    run_id: Annotated[str, Path(description="run id, as listed by GET /api/runs")],
    authorization: Annotated[str | None, Header(description="Bearer TOKEN (RFC 6750)")] = None,
    force: Annotated[bool, Query(description="delete a run whose status is running but whose writer is gone "
                                             "(a crashed producer); a run being written is never deleted")] = False,
) -> dict[str, Any]:
    check_token(state, authorization)  # before the run is looked up: no 404 tells a stranger what exists
    try:
        run = await run_in_threadpool(load_run, state, run_id)
    except MalformedRun:  # its document unusable: deleted all the same (a live writer still holds the lock: 409)
        run = None
    if run is not None and run.status == "running" and not force:
        await run_in_threadpool(refuse_running, state, run.run_id)
    run_id = run.run_id if run is not None else run_id
    # under the run's writer lock, as `trajscope rm` deletes: a live writer (one that is creating or resuming the
    # run too) is a 409 RunLocked naming it, and no writer can start while the files go
    try:
        await run_in_threadpool(remove_run, run_id, state.root)
    except PermissionError as err:  # e.g. the producer's user owns the lock file or the run, not the server's
        if await run_in_threadpool(writer_holds, state.root, run_id):  # a live writer first, as for the owner's rm
            writer = writer_named(state.root, run_id)  # (found by a review: force=true on one was this 403)
            raise HTTPException(409, f"run {run_id!r} is being written" + (f" by {writer}" if writer else "") +
                                     "; wait for it to finish or stop it first") from None
        raise HTTPException(403, f"run {run_id!r} cannot be deleted by this server's user ({err.strerror}: "
                                 f"{err.filename}); delete it as its owner with `trajscope rm {run_id}`") from None
    except OSError as err:
        if err.errno != errno.EROFS:  # (found by a review: a root mounted read-only was a 500 and a traceback)
            raise
        raise HTTPException(403, f"run {run_id!r} cannot be deleted: the served root is on a read-only file system "
                                 f"({err.filename}); delete it where the root is mounted writable") from None
    state.forget(run_id)
    return {"deleted": run_id}
