"""The ``/zarr`` pass-through: remote ``xr.open_zarr`` equals local ``open_run``; snapshots of live runs;
HEAD and byte ranges; path tricks never leave the store root."""

from __future__ import annotations

import http.client
import json
import os

import httpx
import numpy as np
import pytest
import xarray as xr

from trajscope.store import RunWriter, StoreRoot, open_run, run_attr
from trajscope.store.errors import UserError


def remote(url: str) -> xr.Dataset:
    return xr.open_zarr(url, zarr_format=3)


def assert_same(remote_ds: xr.Dataset, local_ds: xr.Dataset) -> None:
    xr.testing.assert_identical(remote_ds.drop_attrs().load(), local_ds.drop_attrs().load())
    for key in ("status", "committed_steps", "config"):
        assert run_attr(remote_ds, key) == run_attr(local_ds, key)  # remote: as stored (nested); local: JSON text


@pytest.mark.parametrize("run_id", ["done", "bad"])
def test_open_zarr_over_http_equals_open_run_finished(server, local_root, run_id):
    ds = remote(f"{server.url}/zarr/{run_id}")
    assert_same(ds, open_run(run_id, local_root))


def test_open_zarr_over_http_of_a_live_run_is_trimmed(server, local_root, expected):
    ds = remote(f"{server.url}/zarr/live")
    assert ds.sizes["step"] == 20 and ds.attrs["status"] == "running"
    assert_same(ds, open_run("live", local_root))
    np.testing.assert_array_equal(ds["W"].values, expected["live"]["W"].values)


@pytest.mark.parametrize("run_id", ["done", "live"])
def test_open_zarr_over_http_without_consolidated_metadata_lists_the_arrays(server, local_root, run_id):
    """Found by a review: ``consolidated=False`` over HTTP found no member (zarr lists the group: ``GET
    /zarr/RUN/`` was a 404) and gave an empty dataset with no error. The listing names the snapshot's arrays."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no member zarr cannot read, e.g. the run's .all_chunks_stored)
        ds = xr.open_zarr(f"{server.url}/zarr/{run_id}", zarr_format=3, consolidated=False)
        slash = xr.open_zarr(f"{server.url}/zarr/{run_id}/", zarr_format=3, consolidated=False)  # (it asks for RUN//)
    local = open_run(run_id, local_root)
    assert set(ds.data_vars) == set(local.data_vars) and ds.sizes == local.sizes
    xr.testing.assert_identical(ds.drop_attrs().load(), local.drop_attrs().load())
    xr.testing.assert_identical(slash.drop_attrs().load(), local.drop_attrs().load())
    page = httpx.get(f"{server.url}/zarr/{run_id}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<a href="W">W</a>' in page.text and "zarr.json" not in page.text


def test_snapshot_metadata_and_chunks_past_the_commit(client, local_root):
    meta = client.get("/zarr/live/zarr.json").json()
    arrays = meta["consolidated_metadata"]["metadata"]
    assert arrays["W"]["shape"] == [20, 6, 4] and arrays["X"]["shape"] == [10, 4]
    assert client.get("/zarr/live/W/zarr.json").json()["shape"] == [20, 6, 4]  # non-consolidated readers too
    # on disk the array still has its capacity (48): the trim is the server's
    assert json.loads(local_root.read_bytes("live", "W/zarr.json"))["shape"] == [48, 6, 4]
    assert client.get("/zarr/live/W/c/2/0/0").status_code == 200  # steps 16..23, starts before 20
    r = client.get("/zarr/live/W/c/3/0/0")  # steps 24..31: written to disk but not committed
    assert r.status_code == 404 and "'W/c/3/0/0'" in r.json()["detail"]


def test_live_run_grows_between_snapshots(tmp_path, write_run, serve):
    root = StoreRoot(tmp_path)
    data = write_run(root, "grow", steps=32, chunk_steps=8, finish=None, commit_to=8)
    with serve(root) as srv:
        first = remote(f"{srv.url}/zarr/grow")
        assert first.sizes["step"] == 8
        writer = RunWriter.reopen(root, "grow")
        try:
            writer.commit(24)
        finally:
            writer.lock.release()
        second = remote(f"{srv.url}/zarr/grow")
        assert second.sizes["step"] == 24
        np.testing.assert_array_equal(second["W"].values, data["W"][:24])
        np.testing.assert_array_equal(first["loss"].values, data["loss"][:8])  # the old snapshot stays valid
        assert httpx.get(f"{srv.url}/api/runs/grow/vars/loss").json()["coords"]["step"][-1] == 23


def test_a_run_being_created_is_refused_not_served_as_fill_values(tmp_path, write_run, serve):
    """A run whose creation never completed (or is under way) has no arrays or static data to read yet:
    every key of it is a 409 saying so, as ``open_run`` refuses it, instead of 404s that a remote
    ``xr.open_zarr`` would read as fill values."""
    root = StoreRoot(tmp_path)
    write_run(root, "half", steps=8, chunk_steps=8)
    attrs = root.read_attrs("half")
    root.write_attrs("half", {**attrs, "status": "creating"})  # as a producer killed while creating leaves it
    with serve(root) as srv:
        for key in ("zarr.json", "W/zarr.json", "X/c/0/0", "W/c/0/0/0"):
            r = httpx.get(f"{srv.url}/zarr/half/{key}")
            assert r.status_code == 409 and "being created" in r.json()["detail"], (key, r.text)
        with pytest.raises(Exception):
            remote(f"{srv.url}/zarr/half").load()
        # every route, and open_run, say the same (found by a review: a 400 "its producer stopped ... start it
        # again", while a producer that holds the run was creating it)
        for path in ("", "/vars/loss", "/series/loss", "/analysis/stable_rank", "/plots/loss.png"):
            r = httpx.get(f"{srv.url}/api/runs/half{path}")
            assert r.status_code == 409 and "is being created, or its producer stopped" in r.json()["detail"], (path, r.text)
    with pytest.raises(UserError, match="is being created, or its producer stopped while creating it: .*open it again"):
        open_run("half", tmp_path)


def test_a_remote_reader_of_a_deleted_or_replaced_run_gets_an_error_not_other_numbers(tmp_path, write_run, serve):
    """Found by a review: an ``xr.open_zarr`` over HTTP held across ``rm`` read NaN (the chunks' 404s are fill
    values to zarr) and across ``rm`` + a new run of the same id read the new run's chunks. A gone run's keys
    are 410s; ``/zarr/RUN@RUN_UID`` (the dashboard's line, ``links.zarr_pinned``) is 410 once replaced."""
    root = StoreRoot(tmp_path)
    old = write_run(root, "same", steps=32, chunk_steps=8, seed=0)
    with serve(root) as srv:
        pinned = httpx.get(f"{srv.url}/api/runs/same").json()["links"]["zarr_pinned"]
        uid = root.read_attrs("same")["run_uid"]
        assert pinned == f"/zarr/same@{uid}"
        plain, held = remote(f"{srv.url}/zarr/same"), remote(f"{srv.url}{pinned}")
        np.testing.assert_array_equal(held["W"].isel(step=slice(0, 8)).values, old["W"][:8])
        root.delete("same")
        for ds in (plain, held):  # deleted: an error, never NaN
            with pytest.raises(Exception, match="410"):
                ds["W"].isel(step=slice(8, 16)).values
        r = httpx.get(f"{srv.url}/zarr/same/W/c/1/0/0")
        assert r.status_code == 410 and "saw it deleted since" in r.json()["detail"]
        assert httpx.get(f"{srv.url}/zarr/same/zarr.json").status_code == 404  # (opening it: not found)
        new = write_run(root, "same", steps=32, chunk_steps=8, seed=1)
        with pytest.raises(Exception, match="410"):  # pinned to the old run: never the new one's numbers
            held["W"].isel(step=slice(16, 24)).values
        r = httpx.get(f"{srv.url}{pinned}/W/c/2/0/0")
        assert r.status_code == 410 and "the run this link names was deleted" in r.json()["detail"]
        assert root.read_attrs("same")["run_uid"] in r.json()["detail"]  # it names the new run's URL
        now = root.read_attrs("same")["run_uid"]  # (found by a review: hex in capitals was "not 32 hex digits")
        assert httpx.get(f"{srv.url}/zarr/same@{now.upper()}/zarr.json").status_code == 200
        again = remote(f"{srv.url}{httpx.get(f'{srv.url}/api/runs/same').json()['links']['zarr_pinned']}")
        np.testing.assert_array_equal(again["W"].values, new["W"])
        r = httpx.get(f"{srv.url}/zarr/same@nothex/zarr.json")
        assert r.status_code == 400 and "32 hex digits" in r.json()["detail"]


def test_head_and_byte_ranges(client):
    full = client.get("/zarr/done/W/c/0/0/0")
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    head = client.head("/zarr/done/W/c/0/0/0")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(full.content) and not head.content
    part = client.get("/zarr/done/W/c/0/0/0", headers={"Range": "bytes=4-13"})
    assert part.status_code == 206 and part.content == full.content[4:14]
    assert part.headers["content-range"] == f"bytes 4-13/{len(full.content)}"
    tail = client.get("/zarr/done/W/c/0/0/0", headers={"Range": "bytes=-4"})  # the crc32c
    assert tail.status_code == 206 and tail.content == full.content[-4:]
    r = client.get("/zarr/done/W/c/0/0/0", headers={"Range": f"bytes={len(full.content)}-"})
    assert r.status_code == 416 and "outside" in r.json()["detail"]
    r = client.get("/zarr/done/W/c/0/0/0", headers={"Range": "bytes=0-1,4-5"})
    assert r.status_code == 416 and "one range" in r.json()["detail"]
    assert client.head("/zarr/done/W/c/9/0/0").status_code == 404
    # RFC 9110 (found by a review): the unit is case-insensitive; a Range of another unit is ignored, and so is one
    # sent with If-Range (this server sends no validator, so none matches): the whole key, 200
    upper = client.get("/zarr/done/W/c/0/0/0", headers={"Range": "BYTES=4-13"})
    assert upper.status_code == 206 and upper.content == full.content[4:14]
    for headers in ({"Range": "items=0-1"}, {"Range": "bytes=0-9", "If-Range": '"bogus"'},
                    {"Range": "bytes=0-9", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"}):
        r = client.get("/zarr/done/W/c/0/0/0", headers=headers)
        assert r.status_code == 200 and r.content == full.content and "content-range" not in r.headers, headers


@pytest.mark.parametrize("key, words", [
    (".zgroup", ["'.zgroup'", "zarr.json"]),
    ("W/c/0/0", ["3 dimensions"]),
    ("W/c/a/b/c", ["'W/c/a/b/c'"]),
    ("nothing/zarr.json", ["'nothing/zarr.json'"]),
    ("W/c/0/0/0/extra", ["'W/c/0/0/0/extra'"]),
    # zero-padded indices name no file zarr writes (a review: W/c/00/0/0 was read as chunk (0, 0, 0), absent at
    # that path, so a healthy run answered 503 "corrupt")
    ("W/c/00/0/0", ["'W/c/00/0/0'"]),
    ("loss/c/000000000000", ["'loss/c/000000000000'"]),
])
def test_unknown_keys_are_404_naming_the_key(client, key, words):
    r = client.get(f"/zarr/done/{key}")
    assert r.status_code == 404
    for word in words:
        assert word in r.json()["detail"]


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (httpx would normalise dot segments before sending)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def secret_root(tmp_path_factory, write_run):
    """A root whose run has a chunk symlinked to a file outside it, plus a run directory symlinked out."""
    base = tmp_path_factory.mktemp("secret")
    secret = base / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-OUTSIDE-THE-ROOT")
    root = StoreRoot(base / "runs")
    write_run(root, "linked", steps=8, chunk_steps=8)
    chunk = os.path.join(root.location, "linked.zarr", "loss", "c", "0")
    os.unlink(chunk)
    os.symlink(secret, chunk)
    outside = StoreRoot(base / "elsewhere")
    write_run(outside, "escape", steps=8, chunk_steps=8)
    os.symlink(os.path.join(outside.location, "escape.zarr"), os.path.join(root.location, "escape.zarr"))
    return root


@pytest.mark.parametrize("path", [
    "/zarr/linked/../../secret.txt",
    "/zarr/linked/..%2F..%2Fsecret.txt",
    "/zarr/linked/loss/..%2F..%2F..%2Fsecret.txt",
    "/zarr/linked/%2Fetc%2Fpasswd",
    "/zarr/linked//etc/passwd",
    "/zarr/..%2Fsecret.txt/zarr.json",
    "/zarr/%2E%2E/zarr.json",
    "/zarr/linked/loss/c/0",
    "/zarr/linked/loss/c/0%00",
    "/zarr/escape/zarr.json",
    "/zarr/escape/loss/c/0",
    "/api/runs/escape",
    "/api/runs/..%2Fsecret.txt",
    "/api/runs/linked/vars/..%2F..%2Fsecret.txt",
    "/static/..%2F..%2F..%2Fsecret.txt",
])
def test_path_tricks_never_read_outside_the_root(secret_root, serve, path):
    with serve(secret_root) as srv:
        status, body = raw_get(srv.url, path)
        if path == "/zarr/linked/loss/c/0":  # a chunk the run has, behind the link: 503 (a 404 reads as fill values)
            assert status == 503, (path, status, body[:200])
        else:
            assert 400 <= status < 500, (path, status, body[:200])
        assert b"TOP-SECRET" not in body
        detail = json.loads(body)["detail"]
        assert detail  # says what was wrong
        runs = httpx.get(f"{srv.url}/api/runs").json()["runs"]
        assert [r["run_id"] for r in runs] == ["linked"]  # the symlinked-out run is not listed


def test_a_run_that_never_existed_opens_as_not_found_and_the_check_reads_an_object_store_again(tmp_path, serve):
    """Found by the review of the 410s: zarr's v2 probes (``.zattrs``) of a run that never existed read 410
    "deleted", and on an object-store root the check after a chunk read took the attributes from the cache
    it had just filled (never read again)."""
    from fastapi import HTTPException

    from trajscope.api.deps import load_run
    from trajscope.api.routes_zarr import _still_served
    from trajscope.api.state import ApiState

    with serve(StoreRoot(tmp_path)) as srv:
        for key, status in ((".zattrs", 404), (".zgroup", 404), ("zarr.json", 404), ("W/c/0/0/0", 410)):
            assert httpx.get(f"{srv.url}/zarr/nope/{key}").status_code == status, key
        with pytest.raises(Exception) as err:
            xr.open_zarr(f"{srv.url}/zarr/nope")
        assert "410" not in str(err.value)
    remote_root = StoreRoot(f"memory://still-served-{os.getpid()}")
    from tests.api.conftest import make_run  # noqa: E402  (the API tests' writer)

    make_run(remote_root, "r", steps=8, chunk_steps=8)
    state = ApiState(root=remote_root)
    run = load_run(state, "r")  # (fills the attributes' cache)
    remote_root.delete("r")
    with pytest.raises(HTTPException) as gone:
        _still_served(state, run)
    assert gone.value.status_code == 410
