"""``/zarr/{run_id}/{key}``: the run's store, read-only, for ``xr.open_zarr("http://host/zarr/RUN")``.

GET and HEAD, single byte ranges (``Range: bytes=a-b``, ``a-``, ``-n``; a ``Range`` of another unit, or with
``If-Range``, is ignored: :func:`honoured_range`). A range of a chunk of a local
root is read with ``os.pread`` (only the range) from the descriptor
:func:`trajscope.store.served.open_chunk_file` opened after the store's checks: the file read is the file
checked, whatever is renamed or linked meanwhile. (Starlette's ``FileResponse``, used before, reopens a
*path*, which left a window for a link swapped in between the check and the open.) Whole keys are read
in one piece and sent in one piece (bench/api_versions.py: faster than streaming an 8 MiB chunk). The root ``zarr.json`` is a
snapshot consolidated on the fly and trimmed to ``committed_steps`` (see
:mod:`trajscope.store.snapshot`), so a remote reader sees a consistent view of a live run.

A run that is gone answers ``410`` for its arrays' keys, chunks and metadata, which a client asks for only
after it opened the run (a ``404`` would read as fill values in the client's zarr: NaN for a run deleted
under an open dataset); its root ``zarr.json`` and zarr's v2 probes stay ``404`` (opening a run that does not
exist says "not found"); a chunk the run has but behind a link out of the root is ``503``, for the same
reason. ``/zarr/{run_id}@{run_uid}``
serves the same keys while the run is the one created with that ``run_uid`` and ``410`` once it was deleted
or replaced (created again under its id): nothing ties a plain ``/zarr/{run_id}`` request to the run the
client opened.
"""

from __future__ import annotations

import html
import os
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response

from trajscope.api.deps import Run, State, load_run
from trajscope.api.models import ErrorBody
from trajscope.store.errors import PathOutsideRoot, RunNotFound, RunNotReady
from trajscope.store.layout import RUN_UID, never_fully_created
from trajscope.store.served import open_chunk_file
from trajscope.store.snapshot import METADATA_KEY, KeyNotServed, member_names, parse_key, read_key

router = APIRouter(prefix="/zarr", tags=["zarr"], responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody},
                                                              409: {"model": ErrorBody}, 410: {"model": ErrorBody},
                                                              416: {"model": ErrorBody}})
_UID = re.compile(r"[0-9a-f]{32}")
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$", re.IGNORECASE)
#: more digits than any object size has; longer numbers are refused before ``int()`` (which raises
#: past 4300 digits and would be slow well before)
MAX_RANGE_DIGITS = 19


def honoured_range(header: str | None, if_range: str | None) -> str | None:
    """The ``Range`` header this server acts on, ``None`` for the whole key (RFC 9110 §14.2, §13.1.5, found by a
    review): one of another unit than ``bytes`` (case-insensitive), or of none, is ignored; so is any sent with
    ``If-Range``, whose validator never matches here (no ``ETag`` or ``Last-Modified`` is sent: a live run's last
    chunk is rewritten, and a client resuming a download must not join two versions of it)."""
    if header is None or if_range is not None:
        return None
    unit, equals, _ = header.partition("=")
    return header if equals and unit.strip().lower() == "bytes" else None


def byte_range(header: str, size: int) -> tuple[int, int]:
    """``[start, end)`` of a single-range ``Range`` header; 416 when it cannot be satisfied."""
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise HTTPException(416, f"Range {header!r} is not supported: use one range bytes=a-b, bytes=a- or bytes=-n",
                            headers={"Content-Range": f"bytes */{size}"})
    first, last = match.groups()
    if max(len(first), len(last)) > MAX_RANGE_DIGITS:
        raise HTTPException(416, f"Range has a number of more than {MAX_RANGE_DIGITS} digits: this key has {size} bytes",
                            headers={"Content-Range": f"bytes */{size}"})
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise HTTPException(416, f"Range {header!r} is outside the {size} bytes of this key",
                            headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _gone(run_id: str) -> HTTPException:
    return HTTPException(410, f"no run {run_id!r}: a reader that opened it saw it deleted since (410, not 404, so "
                              f"that its zarr does not read fill values); open it again if it was recorded again")


def _replaced(run_id: str, uid: str, now: Any) -> HTTPException:
    # (not "was deleted and created again" alone: a mistyped run_uid gets this answer too; found by a review)
    return HTTPException(410, f"run {run_id!r} has run_uid {now}, not {uid}: the run this link names was deleted "
                              f"(and one of that name created since), or the link is mistyped; open "
                              f"/zarr/{run_id}@{now} for the run there now")


def _opened_key(key: str | None) -> bool:
    """An array's metadata or chunk: a key a client asks for only after it opened the run."""
    try:
        return key is not None and parse_key(key).kind in ("array", "chunk")
    except KeyNotServed:
        return False


def _served_run(state: State, name: str, key: str | None) -> Run:
    """The run of ``/zarr/{name}`` (``RUN`` or ``RUN@RUN_UID``) whose ``key`` is asked for (None: the bare
    URL): ``410`` where a client that opened it would otherwise read fill values or another run's chunks."""
    run_id, pinned, uid = name.partition("@")
    uid = uid.lower()  # (hex digits in either case; the store writes them in lower case)
    if pinned and not _UID.fullmatch(uid):
        raise HTTPException(400, f"/zarr/{name}: after @ comes the run's run_uid, 32 hex digits "
                                 f"(GET /api/runs/{run_id} gives its zarr link)")
    try:
        run = load_run(state, run_id)
    except RunNotFound:
        if pinned or _opened_key(key):
            raise _gone(run_id) from None
        raise  # (opening: the root zarr.json, and zarr's v2 probes .zattrs/.zgroup, stay 404s)
    if pinned and run.attrs.get(RUN_UID) != uid:
        raise _replaced(run_id, uid, run.attrs.get(RUN_UID))
    if never_fully_created(run.attrs):  # its arrays and static data may not exist yet: nothing is served
        raise RunNotReady(run_id)
    return run


def _still_served(state: State, run: Run) -> None:
    """``410`` when the run whose chunk was just read was deleted, or replaced, meanwhile (the bytes read may
    be the new run's): on a local root the stamp of its ``zarr.json`` is compared (a fresh read when it
    changed), on an object store its attributes are read again (a cached entry has no stamp: found by a
    review to let a remote root's check pass unread)."""
    try:
        attrs = (state.cached_attrs(run.run_id) if state.root.is_local else None) or state.read_attrs(run.run_id)
    except RunNotFound:
        raise _gone(run.run_id) from None
    if attrs.get(RUN_UID) != run.attrs.get(RUN_UID):
        raise _replaced(run.run_id, str(run.attrs.get(RUN_UID)), attrs.get(RUN_UID))


def _media(key: str) -> str:
    return "application/json" if key.rsplit("/", 1)[-1] == METADATA_KEY else "application/octet-stream"


_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
          "application/json": {"schema": {"type": "object"}}}


@router.head("/{run_id}/{key:path}", include_in_schema=False)
@router.get("/{run_id}/{key:path}", summary="A key of the run's Zarr store (GET and HEAD, byte ranges)",
            responses={200: {"description": "the key's bytes (metadata keys are JSON; the empty key, the group's "
                                            "listing, is HTML)",
                             "content": {**_BYTES, "text/html": {"schema": {"type": "string"}}}},
                       206: {"description": "the requested byte range", "content": _BYTES}})
def zarr_key(
    state: State,
    request: Request,
    run_id: str,
    key: str,
    range: Annotated[str | None, Header(description="bytes=a-b (one range)")] = None,
    if_range: Annotated[str | None, Header(description="ignored with its Range: no validator of this server "
                                                       "matches")] = None,
) -> Response:
    range = honoured_range(range, if_range)
    run = _served_run(state, run_id, key)
    run_id = run.run_id
    if key.strip("/") == "":  # the group's listing (zarr over fsspec's HTTP, consolidated=False: a reader lists
        # members; a URL given with a trailing slash asks for RUN//: found by a review)
        return _listing(state, run, request.method)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    fd = None
    try:
        info = parse_key(key)
        if range is not None:  # a range of a local chunk: only those bytes are read, from the checked file
            fd = open_chunk_file(state.root, run.run_id, key, info)
        if fd is None:  # a whole key is one read and one send (measured faster than streaming it)
            data = read_key(state.root, run.run_id, key, info)
    except KeyNotServed as err:
        raise HTTPException(404, str(err)) from None
    except PathOutsideRoot as err:
        # (found by a review: a chunk's 404 was read by zarr as fill values, NaN without a word; an array's metadata,
        # listed by /zarr/RUN/, as an array absent, the variable dropped without a word)
        if info.kind in ("chunk", "array"):
            raise HTTPException(503, f"{err}: it is not served (503, not 404, so that a zarr reader does not read "
                                     "fill values, or no array, where the run may have data)") from None
        raise
    except (KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
        _still_served(state, run)  # (a 404 of a run deleted meanwhile would read as fill values)
        if info.kind == "array" and info.array in member_names(state.root, run.run_id):  # (found by a review: a
            # FIFO or a lost file there dropped the variable from a listing reader's dataset without a word)
            raise HTTPException(503, f"run {run_id!r} has the array {info.array!r} (its metadata lists it), and its "
                                     f"{key!r} cannot be read (missing, or not a regular file): not served (503, not "
                                     f"404, so that a zarr reader does not take the array for absent); `trajscope "
                                     f"fsck {run_id}` says more") from None
        raise HTTPException(404, f"run {run_id!r} has no key {key!r} in its committed snapshot") from None
    if fd is not None:
        try:
            size = os.fstat(fd).st_size
            start, end = byte_range(range, size)
            data = b"" if request.method == "HEAD" else os.pread(fd, end - start, start)
        finally:
            os.close(fd)
    if info.kind == "chunk":  # read from the run that was checked, not from one created since under its id
        _still_served(state, run)
    if fd is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=206, headers=headers, media_type=_media(key))
        return Response(data, status_code=206, headers=headers, media_type=_media(key))
    size = len(data)
    status = 200
    if range is not None:
        start, end = byte_range(range, size)
        data = data[start:end]
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        status = 206
    headers["Content-Length"] = str(len(data))
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=_media(key))
    return Response(data, status_code=status, headers=headers, media_type=_media(key))


def _listing(state: State, run: Run, method: str) -> Response:
    """``/zarr/RUN/``: the run's arrays as links, the one listing fsspec's HTTP file system reads (found by a
    review: ``xr.open_zarr(url, consolidated=False)`` found no member and gave an empty dataset, no error)."""
    names = member_names(state.root, run.run_id)
    links = "".join(f'<li><a href="{html.escape(name)}">{html.escape(name)}</a></li>' for name in names)
    page = f"<!doctype html><title>{html.escape(run.run_id)}</title><ul>{links}</ul>\n".encode()
    headers = {"Cache-Control": "no-cache", "Content-Length": str(len(page))}
    return Response(b"" if method == "HEAD" else page, headers=headers, media_type="text/html")


@router.head("/{run_id}", include_in_schema=False)
@router.get("/{run_id}", include_in_schema=False)
def zarr_run(state: State, run_id: str) -> Response:
    """The bare run URL: point readers at the group metadata."""
    _served_run(state, run_id, None)
    raise HTTPException(404, f"open this URL with xr.open_zarr('.../zarr/{run_id}'); its keys are "
                             f"/zarr/{run_id}/zarr.json and below")
