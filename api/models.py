"""Pydantic response models (they are also the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx/5xx: ``detail`` says what was wrong and how to fix it."""

    detail: str


class RunSummary(BaseModel):
    run_id: str
    status: str = Field(description="running, complete, failed or interrupted")
    committed_steps: int = Field(description="recorded states a reader may trust")
    capacity: int = Field(description="recorded states the run was created for")
    progress: float | None = Field(description="committed_steps / capacity")
    created: str | None
    updated: str | None
    size_bytes: int | None
    config: dict[str, Any] = Field(description="the config flattened to dotted keys (scalar leaves)")
    error: str | None = None
    links: dict[str, str]


class RunList(BaseModel):
    root: str
    runs: list[RunSummary]


class VariableInfo(BaseModel):
    name: str
    dims: list[str]
    shape: list[int]
    chunks: list[int] | None
    dtype: str
    coordinate: bool


class RunDetail(RunSummary):
    attrs: dict[str, Any]
    variables: list[VariableInfo]


class VarSlice(BaseModel):
    """A slice of one variable (``format=json``). NaN and infinities are sent as ``null``."""

    run_id: str
    name: str
    dims: list[str]
    shape: list[int]
    dtype: str
    coords: dict[str, list[Any]] = Field(description="coordinate values of the selection, per dimension")
    values: Any


class DataArrayBody(BaseModel):
    name: str | None
    dims: list[str]
    shape: list[int]
    coords: dict[str, Any]
    attrs: dict[str, Any]
    values: Any


class AnalysisResult(BaseModel):
    run_id: str
    quantity: str
    committed_steps: int
    params: dict[str, Any]
    result: Any = Field(description="a DataArray body, {'variables': {...}, 'attrs': {...}} for a Dataset, "
                        "or a plain JSON value")


class Listing(BaseModel):
    """Names served for a run (analysis quantities or plot kinds) and their URLs."""

    run_id: str
    items: dict[str, str]
    unavailable: dict[str, str] = Field(default_factory=dict, description="items this run cannot show, and why")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="extra query parameters each item accepts")


class Health(BaseModel):
    status: str
    version: str
    root: str
    writable: bool
    analysis: bool
