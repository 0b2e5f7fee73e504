"""Error responses of the API: one JSON shape, one status per kind of failure, and no error that kills
the connection.

Every error body is ``{"detail": "<what was wrong and how to fix it>", ...}`` (:class:`ErrorBody`).

- 400 — a bad query or path value (:class:`UserError`): the client can fix the request.
- 404 — no such run or key, or a path that resolves outside the root (``RunNotFound``,
  ``KeyNotServed``, ``PathOutsideRoot``): not served; a link leaving the root is not told apart from a
  missing file.
- 401/403 — a delete without the right token, or on a read-only server (checked before the run).
- 422 — request validation by FastAPI: ``detail`` plus ``errors`` (:class:`ValidationErrorBody`); and a run
  whose group document no reader can use (``MalformedRun``: not a JSON object, ``committed_steps: "5k"``):
  the run named is there but is no usable trajscope run. Listings skip such a run. Likewise someone else's
  Zarr group under the root (``NotARun``), which listings show with status ``unknown``.
- 503 — stored data fails its checksum (:class:`~trajscope.store.integrity.CorruptData`): the request
  is valid and the resource exists, but the server cannot serve it until the run is repaired or
  recorded again. It is a server-side condition (5xx), distinct from a bug (500), that an operator can
  end (``trajscope fsck``); a 4xx would blame the client, and 409/422 say the *request* conflicts or is
  malformed. The body names the run, the variables and the chunks.
- 502 — the object store behind the root refused a request or could not be reached (no credentials,
  access denied, no endpoint): neither the client's fault nor a bug.
- 500 — a bug, logged with its traceback.

Why no error may break the connection: Starlette's outermost ``ServerErrorMiddleware`` answers an
unhandled exception with a 500 and then *re-raises* it, and uvicorn closes the transport of any request
whose app raised after the response started, so the next request on that keep-alive connection was
reset. :class:`CatchAll` sits inside it, answers the error itself and returns normally; it re-raises
only when the response had already started (a half-sent body can only be ended by closing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from typing import Any

from cachetools import TTLCache
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trajscope.api.state import public_root
from trajscope.store import COMMITTED, UserError
from trajscope.store.layout import RUN_UID
from trajscope.store.errors import object_store_error
from trajscope.store.integrity import CorruptData, corrupt_data, is_checksum_error

log = logging.getLogger("trajscope.api")

#: statuses of UserError subclasses, by class name (a class absent from this version of the store
#: simply never matches); any other UserError is a 400
USER_ERROR_STATUS = {"RunNotFound": 404, "KeyNotServed": 404, "PathOutsideRoot": 404, "RunLocked": 409, "RunNotReady": 409,
                     "MalformedRun": 422, "NotARun": 422}
CORRUPT_STATUS = 503


#: the longest error message sent; longer ones (echoing a 100 KB key back: found by a review) are cut
MAX_DETAIL = 2000


def error(status: int, detail: str, headers: dict | None = None, **extra: Any) -> JSONResponse:
    """The JSON error response every route uses."""
    if len(detail) > MAX_DETAIL:
        detail = f"{detail[:MAX_DETAIL]}… ({len(detail) - MAX_DETAIL} more characters cut)"
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def without_root_path(request: Request, message: str) -> str:
    """``message`` with the served root's absolute path replaced by its public name (``runs/.locks/r.lock``):
    a store error names the paths it refuses, and responses never say where the root lies (found by a review:
    a lock file planted as a link answered a 404 naming the absolute path)."""
    state = getattr(request.app.state, "trajscope", None)
    if state is None or not state.root.is_local:
        return message
    public = public_root(state.root)
    for path in {state.root.location.rstrip(os.sep), os.path.realpath(state.root.location)}:
        if path and path != os.sep:
            message = message.replace(path, public)
    return message


def user_error_status(exc: UserError) -> int:
    for cls in type(exc).__mro__:
        if cls.__name__ in USER_ERROR_STATUS:
            return USER_ERROR_STATUS[cls.__name__]
    return 400


def corrupt_response(exc: CorruptData) -> JSONResponse:
    """503 naming the run, the variables and the chunks that fail their checksum."""
    return error(CORRUPT_STATUS, str(exc), run_id=exc.run_id, variables=exc.variables,
                 chunks=[c.key for c in exc.chunks])


async def locate_corruption(scope: Scope, exc: BaseException) -> CorruptData:
    """A checksum failure raised while serving ``scope`` as :class:`CorruptData` naming the chunks.

    The run comes from the route's ``run_id``; the variable the route names (``name``) is checked
    first. The run is re-read in a worker thread (one pass over its committed chunks at worst)."""
    if isinstance(exc, CorruptData):
        return exc
    params = scope.get("path_params") or {}
    app = scope.get("app")
    run_id = params.get("run_id")
    state = getattr(getattr(app, "state", None), "trajscope", None)
    if not run_id or state is None:
        return CorruptData(str(run_id or "?"), [])
    name = params.get("name")
    try:
        return await run_in_threadpool(_located, state, run_id, [name] if name else None)
    except Exception:  # noqa: BLE001 - naming the chunk is a courtesy; the 503 stands without it
        log.exception("could not locate the corrupt chunks of run %s", run_id)
        return CorruptData(run_id, [])


#: seconds a located corruption is reused for the same run version: the requests of one burst (a page load,
#: many clients) share one scan; a chunk corrupted or restored since is seen by the next scan (a finished run's
#: version never changes: a longer reuse named an old chunk for a new failure, found by a review)
CORRUPTION_TTL = 5.0
_corruptions: TTLCache = TTLCache(maxsize=64, ttl=CORRUPTION_TTL)
_locating: dict[tuple, threading.Lock] = {}
_corruptions_guard = threading.Lock()


def _located(state: Any, run_id: str, names: list[str] | None) -> CorruptData:
    """:func:`corrupt_data` once per run version and variables, however many requests fail on it at once
    (found by a review: every 503 of a corrupt 1.6 GB run scanned all its chunks again, 40 requests 40 scans);
    reused for :data:`CORRUPTION_TTL` seconds."""
    attrs = state.root.read_attrs(run_id)
    key = (state.root.location, run_id, attrs.get(COMMITTED), attrs.get("updated"), attrs.get(RUN_UID),
           tuple(names or ()))
    with _corruptions_guard:
        gate = _locating.setdefault(key, threading.Lock())
    with gate:
        try:
            with _corruptions_guard:
                found = _corruptions.get(key)
            if found is None:
                found = corrupt_data(state.root, run_id, names)
                with _corruptions_guard:
                    _corruptions[key] = found
            return found
        finally:
            with _corruptions_guard:
                _locating.pop(key, None)


def allowed_methods(request: Request) -> list[str]:
    """The methods the app's routes declare for ``request``'s path (sorted).

    Walks the routes by their path patterns, into FastAPI's included routers (``effective_candidates``)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()

    def walk(routes) -> None:
        for route in routes:
            nested = getattr(route, "effective_candidates", None)
            if callable(nested):
                walk(nested())
                continue
            pattern, allowed = getattr(route, "path_regex", None), getattr(route, "methods", None)
            if pattern is not None and allowed and pattern.match(path):
                methods.update(allowed)

    walk(request.app.router.routes)
    return sorted(methods)


def validation_errors(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One readable line and the list of ``{loc, msg, type}`` of a validation failure."""
    errors, parts = [], []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = ".".join(x for x in loc if x not in ("query", "path", "header", "body")) or "request"
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{where}: {msg}")
        errors.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    return "; ".join(parts) or "invalid request", errors


class CatchAll:
    """ASGI middleware: answer any exception a handler did not (corruption 503, otherwise 500) without
    re-raising, so the connection stays open for the next request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:  # what still runs when the server's graceful shutdown is over (uvicorn cancels
            if not started:  # it): a 503 saying so, not a bare 500 and a logged traceback (found by a review)
                with contextlib.suppress(Exception):
                    await error(503, "the server is shutting down: retry in a moment",
                                {"Retry-After": "5", "Connection": "close"})(scope, receive, send)
            return
        except Exception as exc:  # noqa: BLE001 - the point of this middleware
            if started:
                raise
            if is_checksum_error(exc):
                response = corrupt_response(await locate_corruption(scope, exc))
            elif (refused := object_store_error(exc)) is not None:  # the server's storage, not the request: 502
                log.error("object store error on %s: %s", scope.get("path"), refused)
                response = error(502, refused)
            elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):  # (found by a review of the
                log.error("permission denied on %s: %s", scope.get("path"), exc)  # images: a 500 "report it")
                uid = getattr(os, "getuid", lambda: "?")()
                response = error(503, f"the server's user (uid {uid}) may not read the served root ({exc.strerror}): "
                                      "give it read access to the root's folders and files")
            else:
                log.error("unhandled error on %s", scope.get("path"), exc_info=exc)
                response = error(500, f"internal error ({type(exc).__name__}): please report it with the request")
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the error handlers and :class:`CatchAll` on ``app``."""

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        return error(user_error_status(exc), without_root_path(request, str(exc)))

    @app.exception_handler(CorruptData)
    async def _corrupt(request: Request, exc: CorruptData) -> JSONResponse:
        return corrupt_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = validation_errors(exc)
        return error(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.url.path!r}: see /docs for the API"
        elif exc.status_code == 405:  # Starlette's Allow names the first route of the path only (found by a
            allowed = allowed_methods(request)  # review: GET /api/runs/R's, not the DELETE beside it)
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
                detail = f"method {request.method} is not allowed on {request.url.path!r}: use {' or '.join(allowed)}"
        return error(exc.status_code, detail, headers)

    app.add_middleware(CatchAll)
