"""The FastAPI application: :func:`create_app` wires the routers, the state and the error handlers."""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import trajscope
from trajscope.api import routes_analysis, routes_dashboard, routes_plots, routes_runs, routes_vars, routes_zarr
from trajscope.api import routes_series
from trajscope.api.state import DEFAULT_ATTRS_TTL, DEFAULT_CACHE_BYTES, DEFAULT_MAX_RESPONSE_BYTES, ApiState, ByteLRU
from trajscope.store import RunNotFound, StoreRoot, UserError

log = logging.getLogger("trajscope.api")


def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "header", "body")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(
    root: str | os.PathLike | StoreRoot | None = None,
    token: str | None = None,
    *,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    attrs_ttl: float = DEFAULT_ATTRS_TTL,
) -> FastAPI:
    """The trajscope HTTP API over the store ``root`` (a directory or fsspec URL).

    ``token`` enables ``DELETE /api/runs/{run_id}`` for requests that present it as a bearer token;
    without it the API is read-only. ``max_response_bytes`` caps slices and analysis results (413
    beyond); ``cache_bytes`` bounds the cache of slices, analyses and figures; ``attrs_ttl`` is the
    longest a run's root attributes (its ``committed_steps``) are reused before they are read again.
    """
    store_root = root if isinstance(root, StoreRoot) else StoreRoot(root)
    app = FastAPI(
        title="trajscope",
        version=trajscope.__version__,
        description="Runs, slices, analyses, figures and the raw Zarr store of recorded training trajectories.",
    )
    app.state.trajscope = ApiState(store_root, token=token or None, max_response_bytes=max_response_bytes,
                                   responses=ByteLRU(cache_bytes), attrs_ttl=attrs_ttl)

    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.url.path!r}: see /docs for the API"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}): please report it with the request")

    for module in (routes_runs, routes_vars, routes_analysis, routes_plots, routes_zarr, routes_dashboard):
        app.include_router(module.router)
    app.include_router(routes_series.router)
    return app
