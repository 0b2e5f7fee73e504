"""Pydantic response models (they are also the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx/5xx: ``detail`` says what was wrong and how to fix it."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str] = Field(description="where: ['query', 'step'], ['path', 'run_id'], ['header', ...]")
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    """422: a parameter failed validation; ``detail`` says it in one line, ``errors`` item by item."""

    errors: list[ValidationIssue] = Field(default_factory=list)


class CorruptDataBody(ErrorBody):
    """503: stored data of the run fails its crc32c checksum; it is not served until repaired."""

    run_id: str
    variables: list[str] = Field(description="variables with a failing chunk")
    chunks: list[str] = Field(description="store keys of the failing chunks (e.g. W/c/1/0/0)")


class RunSummary(BaseModel):
    run_id: str
    status: str = Field(description="running, complete, failed or interrupted")
    committed_steps: int = Field(description="recorded states a reader may trust")
    capacity: int = Field(description="recorded states the run has room for")
    planned_states: int | None = Field(None, description="recorded states the run is meant to hold (its capacity), "
                                                         "null while a run of unknown length records")
    progress: float | None = Field(description="committed_steps / planned_states (null when that is unknown)")
    created: str | None
    updated: str | None
    size_bytes: int | None
    config: dict[str, Any] = Field(description="the config flattened to dotted keys (scalar leaves)")
    error: str | None = None
    writer_gone: bool = Field(False, description="status is running but no writer holds the run (its producer was "
                                                 "killed): nothing more will come until `trajscope resume` continues it")
    tags: list[str] = Field(default_factory=list, description="the run's tags (`trajscope tag`), sorted")
    note: str | None = Field(None, description="the run's note (`trajscope tag --note`)")
    not_finite: dict[str, str] = Field(default_factory=dict, description="end values that were not finite, as text "
                                       "(`{\"final_loss\": \"nan\"}`: the run diverged); JSON holds them as null")
    final_loss: float | None = Field(None, description="the loss at the last committed state, stored when the run "
                                                       "ended (null while it runs, for a run that records no loss, "
                                                       "or when it was not finite: see not_finite)")
    links: dict[str, str]


class RunList(BaseModel):
    root: str = Field(description="name of the served root (its last path component; never its absolute path)")
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
    status: str = Field(description="ok, or `root unavailable` (with a 503) when the served root cannot be listed")
    version: str
    root: str = Field(description="name of the served root (its last path component; never its absolute path)")
    writable: bool
    analysis: bool
    root_error: str | None = Field(None, description="why the served root cannot be listed (no bucket, no credentials)")
