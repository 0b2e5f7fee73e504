"""Hostile input on every route, sent byte for byte over one keep-alive connection to a real uvicorn:
path tricks, encoded slashes and dots, NUL, huge numbers, odd selector values, odd headers. Every
answer is a 2xx or a 4xx with a JSON ``detail`` (never a 5xx, never a traceback, never the absolute
root path), and the connection survives each of them. (Planted symlinks are tested in
tests/api/test_zarr.py and by the store's own tests.)"""

from __future__ import annotations

import http.client
import json

import pytest

from trajscope.store import StoreRoot

from .conftest import make_run, serving

SEGMENTS = ["..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "%00", "a%00b", "%FF%FE", "%C3%A9",
            "x" * 3000, "9" * 400, "-1", "%20", "%5C..%5C..", "done%2Fvars", ".", "~root", "%25%32%65",
            "CON", "a:b", "*", "done.zarr"]
VALUES = ["", "%00", "9" * 5000, "-" + "9" * 30, "1e309", "nan", "inf", "-inf", "0:10:0", "::-1", "5:1",
          "1,,2", ",", "1," * 3000, ":" * 50, "%FF", "%C3%A9", "0x10", "1_000", "%20%20", "true%00",
          "99999999999999999999:1", "-9223372036854775809"]
ROUTES = [
    "/api/runs/{s}",
    "/api/runs/done/vars/{s}",
    "/api/runs/{s}/vars/W",
    "/api/runs/done/analysis/{s}",
    "/api/runs/{s}/analysis",
    "/api/runs/done/plots/{s}",
    "/api/runs/done/plots/{s}.png",
    "/api/runs/{s}/plots",
    "/zarr/{s}/zarr.json",
    "/zarr/done/{s}",
    "/zarr/done/W/c/{s}/0/0",
    "/zarr/done/W/{s}",
    "/docs/swagger/{s}",
    "/static/{s}",
]
QUERIES = [
    "/api/runs?status={v}",
    "/api/runs?size={v}",
    "/api/runs/done/vars/W?step={v}",
    "/api/runs/done/vars/W?neuron={v}&step=0:3",
    "/api/runs/done/vars/output?sample={v}&step=0:3",
    "/api/runs/done/vars/W?format={v}&step=0",
    "/api/runs/done/analysis/stable_rank?step={v}",
    "/api/runs/done/analysis/stable_rank?unknown={v}",
    "/api/runs/done/plots/loss.png?step={v}",
    "/api/runs/done/plots?check={v}",
    "/health?x={v}",
]
HEADERS = [
    ("Range", "bytes=" + "1" * 5000 + "-"), ("Range", "bytes=5-1"), ("Range", "bytes=-0"), ("Range", "bytes=--1"),
    ("Range", "items=0-1"), ("Range", "bytes=0-1,2-3,4-5"), ("Range", "bytes= 1 - 2"), ("Range", "x" * 8000),
    ("If-Range", "garbage"), ("Accept-Encoding", "gzip;q=" + "9" * 500),
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = StoreRoot(tmp_path_factory.mktemp("hostile"))
    make_run(root, "done", steps=16, h=3, D=2, n=4, chunk_steps=8)
    with serving(root, token="hostile-token", max_response_bytes=64 * 1024) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        yield conn, root
        conn.close()


def _send(conn: http.client.HTTPConnection, method: str, path: str, headers=()) -> tuple[int, bytes]:
    conn.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    r = conn.getresponse()
    return r.status, r.read()


def _check(conn, root: StoreRoot, method: str, path: str, headers=()) -> None:
    sock = conn.sock
    status, body = _send(conn, method, path, headers)
    where = (method, path[:120], [h[0] for h in headers])
    assert status < 500, (where, status, body[:300])
    assert b"Traceback" not in body and root.location.encode() not in body, where
    if status >= 400 and method != "HEAD":
        assert body.startswith(b"{") and json.loads(body)["detail"], (where, status, body[:200])
    assert sock is None or conn.sock is sock, ("the connection was closed", where)


@pytest.mark.parametrize("route", ROUTES)
def test_hostile_path_segments(hostile, route):
    conn, root = hostile
    for seg in SEGMENTS:
        _check(conn, root, "GET", route.format(s=seg))


@pytest.mark.parametrize("query", QUERIES)
def test_hostile_query_values(hostile, query):
    conn, root = hostile
    for value in VALUES:
        _check(conn, root, "GET", query.format(v=value))


def test_a_query_parameter_given_twice_is_a_400_naming_it(hostile):
    """Found by a review: ``?step=0:300&step=0:10`` and ``?status=complete&status=running`` took the last value,
    silently (the listing came back empty)."""
    conn, root = hostile
    for path, name in (("/api/runs?status=complete&status=running", "status"),
                       ("/api/runs/done/vars/W?step=0:3&neuron=0&step=0:1", "step"),
                       ("/zarr/done/zarr.json?a=1&a=", "a")):
        _check(conn, root, "GET", path)
        status, body = _send(conn, "GET", path)
        assert status == 400 and f"query parameter {name!r} is given more than once" in json.loads(body)["detail"]
    status, body = _send(conn, "GET", "/api/runs?status=complete")
    assert status == 200 and [r["run_id"] for r in json.loads(body)["runs"]] == ["done"]


def test_hostile_headers(hostile):
    conn, root = hostile
    for header in HEADERS:
        for path in ("/zarr/done/W/c/0/0/0", "/zarr/done/zarr.json", "/api/runs/done"):
            _check(conn, root, "GET", path, [header])
            _check(conn, root, "HEAD", path, [header])


@pytest.mark.parametrize("auth", ["Bearer " + "x" * 10000, "Bearer \x7f", "bearer",
                                  "Bearer hostile-token hostile-token", "Basic aG9zdGlsZS10b2tlbg=="],
                         ids=["10000-char-token", "DEL-char", "scheme-only", "token-twice", "basic-scheme"])
def test_hostile_delete_never_deletes(hostile, auth):
    conn, root = hostile
    for seg in ("done", "..", "%2e%2e", "done%00", "x" * 3000):
        _check(conn, root, "DELETE", f"/api/runs/{seg}", [("Authorization", auth)])
    assert root.exists("done")


def test_unknown_methods_are_4xx(hostile):
    conn, root = hostile
    for method in ("PUT", "POST", "PATCH", "OPTIONS", "TRACE"):
        _check(conn, root, method, "/api/runs/done")
        _check(conn, root, method, "/zarr/done/zarr.json")
