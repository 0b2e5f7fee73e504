"""``/docs`` served offline, and an OpenAPI document that says what the error handlers send.

* Swagger UI's assets are a packaged copy of the npm package ``swagger-ui-dist`` (version in
  ``static/swagger/VERSION``, Apache-2.0, its ``LICENSE`` and ``NOTICE`` beside it), served from
  ``/docs/swagger/``: ``/docs`` renders with no request to any other host (FastAPI's default page
  loads them from a CDN and its favicon from another site). ReDoc (also CDN-only) is not offered.
* FastAPI publishes every 422 as ``{"detail": [ {loc, msg, type}, ... ]}`` while
  :mod:`trajscope.api.errors` sends ``{"detail": "one line", "errors": [...]}``; :func:`openapi`
  rewrites the 422 responses to :class:`~trajscope.api.models.ValidationErrorBody`, and declares the
  500 and 503 bodies every route may send, so the document and the bodies agree.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from trajscope.api.models import CorruptDataBody, ErrorBody, ValidationErrorBody

router = APIRouter(include_in_schema=False)

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain; charset=utf-8",
    "NOTICE": "text/plain; charset=utf-8",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain; charset=utf-8",
    "VERSION": "text/plain; charset=utf-8",
}
PREFIX = "/docs/swagger"


@router.get("/docs")
def docs() -> Response:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="trajscope API",
        swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js", swagger_css_url=f"{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{PREFIX}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # the online validator badge would call out
    )


@router.get(PREFIX + "/{name}")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no docs asset {name!r}")
    data = resources.files("trajscope.api").joinpath("static", "swagger", name).read_bytes()
    return Response(data, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})


def _schema_ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the error bodies :mod:`trajscope.api.errors` really sends."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ValidationErrorBody, CorruptDataBody):
        for name, schema in model.model_json_schema(ref_template="#/components/schemas/{model}").pop(
                "$defs", {}).items():
            schemas.setdefault(name, schema)
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas[model.__name__].pop("$defs", None)
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "Validation Error",
                                    "content": {"application/json": {"schema": _schema_ref(ValidationErrorBody)}}}
            if "{run_id}" in path:
                responses.setdefault("503", {"description": "Stored data of the run fails its checksum",
                                             "content": {"application/json": {
                                                 "schema": _schema_ref(CorruptDataBody)}}})
            responses.setdefault("500", {"description": "Internal error (a bug)",
                                         "content": {"application/json": {"schema": _schema_ref(ErrorBody)}}})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    """Serve ``/docs`` offline and publish the corrected OpenAPI document."""
    app.include_router(router)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
