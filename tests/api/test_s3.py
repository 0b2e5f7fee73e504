"""An object-storage root: runs on a real S3-compatible server (moto, loopback) served over HTTP."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest
import xarray as xr

from trajscope.store import StoreRoot, open_run


@pytest.fixture(scope="module")
def s3_root(s3_env, write_run):
    root = StoreRoot("s3://trajscope/api-tests")
    assert not root.is_local
    data = {"done": write_run(root, "done", steps=24, chunk_steps=8),
            "live": write_run(root, "live", steps=24, chunk_steps=8, finish=None, commit_to=12, seed=3)}
    return root, data


def test_the_root_really_is_on_the_s3_server(s3_root, s3_env):
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_env).list_objects_v2(
        Bucket="trajscope", Prefix="api-tests/done.zarr/")["Contents"]]
    assert "api-tests/done.zarr/zarr.json" in keys and "api-tests/done.zarr/W/c/0/0/0" in keys


def test_s3_root_served_over_http(s3_root, serve):
    root, data = s3_root
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
        assert set(runs) == {"done", "live"} and runs["live"]["committed_steps"] == 12
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["root"] == "s3://…/api-tests"
        assert health.json()["status"] == "ok" and health.json()["root_error"] is None
        body = c.get("/api/runs/done/vars/v", params={"step": "3:5", "neuron": "2"}).json()
        np.testing.assert_array_equal(np.asarray(body["values"], dtype=np.float32), data["done"]["v"][3:6, 2])
        assert c.get("/api/runs/done/plots/loss.png").content.startswith(b"\x89PNG")
        for run_id, steps in (("done", 24), ("live", 12)):
            ds = xr.open_zarr(f"{srv.url}/zarr/{run_id}", zarr_format=3)
            assert ds.sizes["step"] == steps
            xr.testing.assert_identical(ds.drop_attrs().load(), open_run(run_id, root).drop_attrs().load())
        assert c.get("/zarr/live/W/c/2/0/0").status_code == 404  # steps 16..23: not committed
        r = c.get("/zarr/done/W/c/0/0/0", headers={"Range": "bytes=0-7"})
        assert r.status_code == 206 and len(r.content) == 8
        assert c.get("/zarr/done/..%2F..%2Fother/zarr.json").status_code in (400, 404)


def test_a_run_made_by_another_process_is_listed_and_sized_fresh(s3_env, write_run, serve):
    """Found by a review: s3fs caches listings and never expires them, so a long-lived reader (the server, a
    notebook) never listed a run made by another process, and a run's size read 0 once its objects changed.
    The other process is played by boto3, which shares no cache with this one."""
    import boto3

    from trajscope.store import list_runs

    root = StoreRoot("s3://trajscope/fresh-listing")
    write_run(root, "first", steps=8, chunk_steps=8)
    client = boto3.client("s3", endpoint_url=s3_env)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert [r["run_id"] for r in c.get("/api/runs").json()["runs"]] == ["first"]
        size = root.size_bytes("first")
        assert size > 0 and [r.run_id for r in list_runs(root)] == ["first"]
        for obj in client.list_objects_v2(Bucket="trajscope", Prefix="fresh-listing/first.zarr/")["Contents"]:
            client.copy_object(Bucket="trajscope", Key=obj["Key"].replace("first.zarr", "second.zarr"),
                               CopySource={"Bucket": "trajscope", "Key": obj["Key"]})
        client.put_object(Bucket="trajscope", Key="fresh-listing/first.zarr/W/c/9/0/0", Body=b"12345")
        assert [r.run_id for r in list_runs(root)] == ["first", "second"]
        assert [r["run_id"] for r in c.get("/api/runs").json()["runs"]] == ["first", "second"]
        assert root.size_bytes("first") == size + 5


def test_ls_of_a_missing_bucket_says_so(s3_env):
    """Found by a review: a mistyped bucket listed as "no runs", exit 0, like an empty prefix."""
    from tests.workbench.conftest import cli

    missing = cli("ls", "--root", "s3://no-such-bucket/runs", timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "trajscope: error: no bucket 'no-such-bucket' at the object store of s3://no-such-bucket/runs: check its "
        "name, or AWS_ENDPOINT_URL"], missing.stderr
    show = cli("show", "r2", "--root", "s3://no-such-bucket/runs", timeout=120)  # (it said "no run 'r2'")
    assert show.returncode == 2 and "there is no bucket 'no-such-bucket' at its object store" in show.stderr, show.stderr
    empty = cli("ls", "--root", "s3://trajscope/nothing-here", timeout=120)
    assert empty.returncode == 0 and "no runs in s3://trajscope/nothing-here" in empty.stdout, empty.stderr
    # recording there (found by a review: "refused ... check the credentials"; a sweep trained every point first)
    made = cli("produce", "quickstart", "--set", "train.steps=20", "--root", "s3://no-such-bucket/runs", "-q",
               timeout=120)
    assert made.returncode == 2 and "the store root's bucket does not exist" in made.stderr, made.stderr
    swept = cli("sweep", "epsilon", "--quick", "--root", "s3://no-such-bucket/runs", timeout=120)
    assert swept.returncode == 2 and swept.stderr.strip().splitlines()[-1] == (
        "trajscope: error: no bucket 'no-such-bucket' at the object store of s3://no-such-bucket/runs: create it, or "
        "check its name and AWS_ENDPOINT_URL") and "failed" not in swept.stdout, (swept.stdout, swept.stderr)


def test_health_of_a_root_whose_bucket_is_missing_is_503(s3_env, serve):
    """Found by a review: ``serve`` of a mistyped bucket answered ``/health`` 200 "ok" (the container's health
    check passed) while ``ls`` said the bucket does not exist; an empty prefix of a real bucket is healthy."""
    with serve(StoreRoot("s3://no-such-bucket/runs")) as srv:
        r = httpx.get(f"{srv.url}/health", timeout=60)
        assert r.status_code == 503 and r.json()["status"] == "root unavailable", r.text
        assert "bucket does not exist" in r.json()["root_error"] and "no-such-bucket" not in r.text
    with serve(StoreRoot("s3://trajscope/nothing-here")) as srv:
        r = httpx.get(f"{srv.url}/health", timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text


def test_health_asks_about_the_bucket_only_when_the_listing_is_empty(tmp_path, monkeypatch):
    """Found by the review of /health: s3fs reads a refused bucket-level call (a prefix-scoped policy, a network
    blip) as a missing bucket, which made a root that lists fine a 503; a local root that became a file was ok."""
    from trajscope.api.state import ApiState

    root = StoreRoot(f"memory://health-{os.getpid()}")
    monkeypatch.setattr(StoreRoot, "missing_bucket", lambda self: "refused")  # what s3fs answers when refused
    monkeypatch.setattr(StoreRoot, "run_ids", lambda self: ["r1"])
    assert ApiState(root=root).root_problem() is None
    monkeypatch.setattr(StoreRoot, "run_ids", lambda self: [])
    assert "bucket does not exist" in ApiState(root=root).root_problem()
    monkeypatch.undo()
    local = tmp_path / "runs"
    local.mkdir()
    state = ApiState(root=StoreRoot(local))
    assert state.root_problem() is None
    local.rmdir()
    local.write_text("x")
    state._root_checked = None  # (past the 5 s the check stands)
    assert "is a file, not a folder" in state.root_problem()
    local.unlink()  # moved or deleted while served
    state._root_checked = None
    assert "does not exist" in state.root_problem()


def test_the_health_check_of_the_root_stands_for_its_seconds_then_asks_again(monkeypatch):
    """``/health`` is what a container's health check polls: the root is listed at most every
    ``ROOT_CHECK_SECONDS``, and a root that went missing is reported once that time has passed."""
    from trajscope.api import state as state_module
    from trajscope.api.state import ROOT_CHECK_SECONDS, ApiState

    clock = [1000.0]
    listings: list[int] = []
    runs = [["r1"]]
    monkeypatch.setattr(state_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(StoreRoot, "run_ids", lambda self: listings.append(1) or runs[0])
    monkeypatch.setattr(StoreRoot, "missing_bucket", lambda self: "gone")
    state = ApiState(root=StoreRoot(f"memory://health-ttl-{os.getpid()}"))
    assert state.root_problem() is None and len(listings) == 1
    runs[0] = []  # the bucket goes away
    clock[0] += ROOT_CHECK_SECONDS - 0.5
    assert state.root_problem() is None and len(listings) == 1  # the last check still stands
    clock[0] += 1.0
    assert "bucket does not exist" in state.root_problem() and len(listings) == 2
