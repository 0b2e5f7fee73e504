"""The FastAPI application: :func:`create_app` wires the routers, the state and the error handlers."""

from __future__ import annotations

import os

from fastapi import FastAPI

import trajscope
from trajscope.api import docs, errors, routes_analysis, routes_dashboard, routes_plots, routes_runs, routes_vars, routes_zarr
from trajscope.api import routes_series
from trajscope.api.guards import OneValueEach
from trajscope.api.state import DEFAULT_ATTRS_TTL, DEFAULT_CACHE_BYTES, DEFAULT_MAX_RESPONSE_BYTES, ApiState, ByteLRU
from trajscope.api.work import install_scheduler, stop_if_asked
from trajscope.store import StoreRoot


def create_app(
    root: str | os.PathLike | StoreRoot | None = None,
    token: str | None = None,
    *,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    attrs_ttl: float = DEFAULT_ATTRS_TTL,
    max_computations: int = 0,
) -> FastAPI:
    """The trajscope HTTP API over the store ``root`` (a directory or fsspec URL).

    ``token`` enables ``DELETE /api/runs/{run_id}`` for requests that present it as a bearer token;
    without it the API is read-only. ``max_response_bytes`` caps slices and analysis results (413
    beyond); ``cache_bytes`` bounds the cache of slices, analyses and figures; ``attrs_ttl`` is the
    longest a run's root attributes (its ``committed_steps``) are reused before they are read again;
    ``max_computations`` the analyses, series, figures and slices computed at once (0: one per usable core, at
    least 2; :mod:`trajscope.api.work`).
    """
    store_root = root if isinstance(root, StoreRoot) else StoreRoot(root)
    app = FastAPI(
        title="trajscope",
        version=trajscope.__version__,
        description="Runs, slices, analyses, figures and the raw Zarr store of recorded training trajectories.",
        docs_url=None, redoc_url=None,  # /docs is served offline by trajscope.api.docs
    )
    app.state.trajscope = ApiState(store_root, token=token or None, max_response_bytes=max_response_bytes,
                                   responses=ByteLRU(cache_bytes, interrupt=stop_if_asked), attrs_ttl=attrs_ttl,
                                   max_computations=max_computations)

    install_scheduler()  # (dask's scheduler for this process: a request's computation stops when its client goes)
    errors.install(app)
    app.add_middleware(OneValueEach)
    docs.install(app)
    for module in (routes_runs, routes_vars, routes_analysis, routes_plots, routes_zarr, routes_dashboard):
        app.include_router(module.router)
    app.include_router(routes_series.router)
    return app
