"""``/`` (the dashboard: static HTML + JS, no build step), ``/static/*`` and ``/health``."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException, Response

import trajscope
from trajscope.api import registry
from trajscope.api.deps import State
from trajscope.api.models import Health
from trajscope.api.state import public_root
from trajscope.api.work import off_loop

router = APIRouter(tags=["dashboard"])

MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", "LICENSE": "text/plain; charset=utf-8",
         # the licences' notices are served with their assets (found by a review: Swagger UI's NOTICE was a 404)
         "NOTICE": "text/plain; charset=utf-8", ".LICENSE.txt": "text/plain; charset=utf-8"}


def _files() -> dict[str, str]:
    """Every shipped static file (``app.js``, ``vendor/uPlot.iife.min.js``, ...) and its media type.

    Only these names are ever served: a request cannot name a path outside the package's folder."""
    out: dict[str, str] = {}
    top = resources.files("trajscope.api").joinpath("static")
    stack = [(top, "")]
    while stack:
        folder, prefix = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append((entry, f"{prefix}{entry.name}/"))
                continue
            media = next((m for suffix, m in MEDIA.items() if entry.name.endswith(suffix)), None)
            if media:
                out[prefix + entry.name] = media
    return out


STATIC = _files()


def _static(name: str) -> bytes:
    return resources.files("trajscope.api").joinpath("static", *name.split("/")).read_bytes()


@router.get("/", include_in_schema=False)
def dashboard() -> Response:
    return Response(_static("index.html"), media_type=STATIC["index.html"], headers={"Cache-Control": "no-cache"})


@router.get("/static/{name:path}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, f"no static file {name!r}")
    cache = "max-age=86400" if name.startswith("vendor/") else "no-cache"  # vendored files change with the package
    return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": cache})


@router.get("/health", response_model=Health, summary="Liveness: version, root, whether deletes are enabled",
            responses={503: {"model": Health, "description": "the served root cannot be listed"}})
async def health(state: State, response: Response) -> Health:
    # answered on the event loop while the last check of the root stands, else checked in a thread of its own:
    # never behind slow requests (found by a review: 40 of them made it answer after 32 s)
    fresh, problem = state.checked_root_problem()
    if not fresh:  # (a missing bucket, or no credentials, read "ok": found by a review)
        problem = await off_loop(state, state.root_problem)
    if problem is not None:
        response.status_code = 503
    return Health(status="ok" if problem is None else "root unavailable", version=trajscope.__version__,
                  root=public_root(state.root), writable=bool(state.token),
                  analysis=bool(registry.quantities() or registry.plot_kinds()), root_error=problem)
