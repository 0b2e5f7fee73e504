"""``/`` (the dashboard: static HTML + JS, no build step), ``/static/*`` and ``/health``."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Response

import trajscope
from trajscope.api import registry
from trajscope.api.deps import State
from trajscope.api.models import Health
from trajscope.api.state import public_root

router = APIRouter(tags=["dashboard"])

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


def _static(name: str) -> bytes:
    return resources.files("trajscope.api").joinpath("static", name).read_bytes()


@router.get("/", include_in_schema=False)
def dashboard() -> Response:
    return Response(_static("index.html"), media_type=STATIC["index.html"], headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, f"no static file {name!r}")
    return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


@router.get("/health", response_model=Health, summary="Liveness: version, root, whether deletes are enabled")
def health(state: State) -> Health:
    return Health(status="ok", version=trajscope.__version__, root=public_root(state.root),
                  writable=bool(state.token), analysis=bool(registry.quantities() or registry.plot_kinds()))
