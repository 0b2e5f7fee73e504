"""Runs, variables, health and deletes over HTTP against a real uvicorn server."""

from __future__ import annotations

import io
import json
import os

import httpx
import numpy as np
import pytest

from trajscope.store import RunWriter, StoreRoot, open_run


def test_health_and_openapi(client, local_root):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["writable"] is True
    assert body["root"] == os.path.basename(local_root.location)  # its name, never the absolute path
    assert local_root.location not in client.get("/api/runs").text
    spec = client.get("/openapi.json").json()
    for path in ("/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/vars/{name}",
                 "/api/runs/{run_id}/analysis/{quantity}", "/api/runs/{run_id}/plots/{filename}",
                 "/zarr/{run_id}/{key}", "/health"):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/api/runs/done", "DELETE, GET"),  # two routes on one path: Starlette's Allow named the first only
    ("PATCH", "/api/runs/done", "DELETE, GET"),
    ("POST", "/api/runs", "GET"),
    ("POST", "/zarr/done/zarr.json", "GET, HEAD"),
])
def test_a_wrong_method_is_a_405_naming_every_allowed_one(client, method, path, allowed):
    r = client.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allowed, (r.headers, r.text)
    assert r.json()["detail"] == f"method {method} is not allowed on {path!r}: use {allowed.replace(', ', ' or ')}"


def test_list_runs_status_progress_and_filter(client):
    runs = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"done", "live", "bad"}
    assert runs["done"]["status"] == "complete" and runs["done"]["committed_steps"] == 40
    assert runs["live"]["status"] == "running" and runs["live"]["committed_steps"] == 20
    assert runs["live"]["progress"] == pytest.approx(20 / 48)
    assert runs["done"]["config"]["model.width"] == 6 and runs["done"]["size_bytes"] > 0
    running = client.get("/api/runs", params={"status": "running"}).json()["runs"]
    assert [r["run_id"] for r in running] == ["live"]
    r = client.get("/api/runs", params={"status": "sleeping"})
    assert r.status_code == 400 and "status='sleeping'" in r.json()["detail"] and "running" in r.json()["detail"]


def test_describe_run_lists_variables_with_shapes_and_chunks(client):
    body = client.get("/api/runs/live").json()
    assert body["attrs"]["committed_steps"] == 20 and body["attrs"]["status"] == "running"
    variables = {v["name"]: v for v in body["variables"]}
    assert variables["W"]["dims"] == ["step", "neuron", "feature"]
    assert variables["W"]["shape"] == [20, 6, 4]  # trimmed to the committed steps, not the capacity 48
    assert variables["W"]["chunks"] == [8, 6, 4]
    assert variables["step"]["coordinate"] is True and variables["X"]["shape"] == [10, 4]


@pytest.mark.parametrize("query, index", [
    ({"step": "2:9:3", "neuron": "1,4", "feature": "0"}, (slice(2, 10, 3), [1, 4], 0)),
    ({"step": "5"}, (5,)),
    ({"step": "37:", "neuron": "-1"}, (slice(37, None), -1)),
    ({"neuron": ":3", "feature": "::2"}, (slice(None), slice(0, 3), slice(None, None, 2))),
])
def test_slice_of_W_matches_the_stored_values_json(client, expected, query, index):
    body = client.get("/api/runs/done/vars/W", params=query).json()
    want = expected["done"]["W"].values
    want = want[index[0]]
    # apply the remaining selectors one axis at a time (orthogonal indexing, like the API)
    axis = 0 if isinstance(index[0], int) else 1
    for sel in index[1:]:
        want = np.take(want, sel, axis=axis) if not isinstance(sel, slice) else want[(slice(None),) * axis + (sel,)]
        axis += 0 if isinstance(sel, int) else 1
    got = np.asarray(body["values"], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    assert body["shape"] == list(want.shape)


def test_slice_coords_and_dims_come_with_the_values(client, expected):
    body = client.get("/api/runs/done/vars/W", params={"step": "10:20:5", "neuron": "2,3"}).json()
    assert body["dims"] == ["step", "neuron", "feature"]
    assert body["coords"]["step"] == [10, 15, 20]  # a:b includes both ends (step values)
    np.testing.assert_allclose(body["coords"]["t"], expected["done"]["t"].values[[10, 15, 20]])
    assert body["coords"]["neuron"] == [2, 3] and body["coords"]["feature"] == [0, 1, 2, 3]


def test_npy_format_roundtrips_exactly(client, expected):
    r = client.get("/api/runs/live/vars/output", params={"step": "0:19:2", "format": "npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    assert r.headers["x-trajscope-dims"] == "step,sample"
    got = np.load(io.BytesIO(r.content), allow_pickle=False)
    np.testing.assert_array_equal(got, expected["live"]["output"].values[0:20:2])


def test_nan_travels_as_null_in_json(client, expected):
    body = client.get("/api/runs/bad/vars/W", params={"step": "3", "neuron": "0"}).json()
    assert body["values"][0] is None
    np.testing.assert_array_equal(body["values"][1:], expected["bad"]["W"].values[3, 0, 1:])


def test_live_run_slices_stop_at_committed_steps(client, expected):
    body = client.get("/api/runs/live/vars/loss").json()
    assert len(body["values"]) == 20 and body["coords"]["step"][-1] == 19
    r = client.get("/api/runs/live/vars/loss", params={"step": "25"})
    assert r.status_code == 400 and "step=25 is not a recorded step" in r.json()["detail"]
    assert "0 to 19" in r.json()["detail"]


def test_second_identical_slice_is_served_from_cache(client):
    params = {"step": "0:7", "neuron": "0"}
    client.get("/api/runs/done/vars/v", params=params)
    r = client.get("/api/runs/done/vars/v", params=params)
    assert r.headers["x-trajscope-cache"] == "hit"


@pytest.mark.parametrize("path, params, status, words", [
    ("/api/runs/nope", {}, 404, ["'nope'"]),
    ("/api/runs/nope/vars/W", {}, 404, ["'nope'"]),
    ("/api/runs/done/vars/Q", {}, 404, ["'Q'", "variables are"]),
    ("/api/runs/done/vars/W", {"step": "abc"}, 400, ["step='abc'", "a:b:s"]),
    ("/api/runs/done/vars/W", {"step": "0:10:0"}, 400, ["step=0:10:0", "stride"]),
    ("/api/runs/done/vars/W", {"step": "500:600"}, 400, ["step=500:600", "0 to 39"]),
    ("/api/runs/done/vars/W", {"neuron": "6"}, 400, ["neuron=6", "0 to 5"]),
    ("/api/runs/done/vars/W", {"neuron": "10:20"}, 400, ["neuron=10:20", "0 to 5"]),
    ("/api/runs/done/vars/W", {"feature": "1.5"}, 400, ["feature='1.5'"]),
    ("/api/runs/done/vars/loss", {"neuron": "1"}, 400, ["neuron=", "(step)"]),
    ("/api/runs/done/vars/W", {"format": "csv"}, 400, ["format='csv'", "json, npy"]),
    ("/api/runs/-bad/vars/W", {}, 400, ["invalid run id", "'-bad'"]),
    ("/api/runs/bad..id/vars/W", {}, 404, ["no run 'bad..id'"]),
    ("/api/runs/done/nothing", {}, 404, ["no endpoint"]),
    ("/api/runs", {"size": "maybe"}, 422, ["size"]),
])
def test_bad_input_gets_a_4xx_naming_the_problem(client, path, params, status, words):
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


def test_oversized_selection_is_413_with_how_to_narrow(client):
    r = client.get("/api/runs/done/vars/W")  # 40*6*4 values * 20 B > the 16 KiB cap of this server
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "960 values" in detail and "step=a:b:s" in detail and "format=npy" in detail and "open_zarr" in detail
    url = detail.split("xr.open_zarr('")[1].split("'")[0]  # a URL a client can open (a review: a bare path)
    assert url == f"{client.base_url}/zarr/done".replace("//zarr", "/zarr")
    import xarray as xr

    assert xr.open_zarr(url, zarr_format=3)["W"].shape[1:] == (6, 4)
    assert client.get("/api/runs/done/vars/W", params={"step": "::4"}).status_code == 200


def test_delete_needs_the_token(tmp_path, write_run, serve):
    root = StoreRoot(tmp_path)
    write_run(root, "victim", steps=8, chunk_steps=8)
    write_run(root, "busy", steps=8, chunk_steps=8, finish=None)
    with serve(root) as ro:
        r = httpx.delete(f"{ro.url}/api/runs/victim")
        assert r.status_code == 403 and "read-only" in r.json()["detail"] and "--token-file" in r.json()["detail"]
    with serve(root, token="right-token") as srv:
        r = httpx.delete(f"{srv.url}/api/runs/victim")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
        r = httpx.delete(f"{srv.url}/api/runs/victim", headers={"Authorization": "Bearer wrong-token"})
        assert r.status_code == 401 and root.exists("victim")
        r = httpx.delete(f"{srv.url}/api/runs/busy", headers={"Authorization": "Bearer right-token"})
        assert r.status_code == 409 and root.exists("busy")
        assert f"its lock names pid {os.getpid()} on" in r.json()["detail"], r.text  # (this process wrote it)
        # force=true is for a crashed run: one whose writer is alive (here, a resume holding its lock) is never
        # deleted; once that writer is gone it is
        writer = RunWriter.reopen(root, "busy")
        try:
            r = httpx.delete(f"{srv.url}/api/runs/busy", params={"force": "true"},
                             headers={"Authorization": "Bearer right-token"})
            assert r.status_code == 409 and "being written" in r.json()["detail"] and root.exists("busy")
            assert open_run("busy", root).sizes["step"] == 8
        finally:
            writer.lock.release()
        r = httpx.delete(f"{srv.url}/api/runs/busy", params={"force": "true"},
                         headers={"Authorization": "Bearer right-token"})
        assert r.status_code == 200 and not root.exists("busy")
        r = httpx.delete(f"{srv.url}/api/runs/victim", headers={"Authorization": "Bearer right-token"})
        assert r.status_code == 200 and r.json() == {"deleted": "victim"} and not root.exists("victim")
        assert httpx.get(f"{srv.url}/api/runs/victim").status_code == 404
        r = httpx.delete(f"{srv.url}/api/runs/victim", headers={"Authorization": "Bearer right-token"})
        assert r.status_code == 404
        write_run(root, "husk", steps=8, chunk_steps=8)  # what a stopped deletion leaves: no run to the server,
        os.remove(os.path.join(root.run_url("husk"), "zarr.json"))  # which leaves it to `trajscope rm` (README)
        assert root.has_leftovers("husk")
        assert "husk" not in [run["run_id"] for run in httpx.get(f"{srv.url}/api/runs").json()["runs"]]
        assert httpx.get(f"{srv.url}/api/runs/husk").status_code == 404
        r = httpx.delete(f"{srv.url}/api/runs/husk", headers={"Authorization": "Bearer right-token"})
        assert r.status_code == 404 and root.has_leftovers("husk")


@pytest.mark.parametrize("refusal, words", [
    ("EACCES", "trajscope rm victim"),  # the producer's user owns the lock file or the run, not the server's
    ("EROFS", "read-only file system"),  # a root mounted read-only (found by a review: a 500 and a traceback)
])
def test_a_delete_the_servers_user_may_not_do_is_a_403_naming_the_way(tmp_path, write_run, serve, monkeypatch,
                                                                      refusal, words):
    """The run's writer lock (or its files) belongs to another user than the server's, or the root is mounted
    read-only: a 403 saying so (and naming `trajscope rm` for the first), not a 500; the run stays."""
    import errno

    from trajscope.api import routes_runs

    def refused(run_id, root):
        code = getattr(errno, refusal)
        raise (PermissionError if code == errno.EACCES else OSError)(code, os.strerror(code),
                                                                     str(tmp_path / ".locks" / "victim.lock"))

    monkeypatch.setattr(routes_runs, "remove_run", refused)
    root = StoreRoot(tmp_path)
    write_run(root, "victim", steps=8, chunk_steps=8)
    with serve(root, token="right-token") as srv:
        r = httpx.delete(f"{srv.url}/api/runs/victim", headers={"Authorization": "Bearer right-token"})
    detail = r.json()["detail"]
    assert r.status_code == 403 and words in detail.lower() and "victim.lock" in detail, r.text
    assert root.exists("victim")


def test_a_forced_delete_of_another_users_live_run_is_a_409_naming_its_writer(tmp_path, write_run, serve,
                                                                             monkeypatch):
    """Found by a review: `force=true` on a run another user's producer was writing was a 403 ("delete it as its
    owner"), where the README promises a 409 naming the writer (the owner's `rm` is refused too while it writes)."""
    import errno

    from trajscope.api import routes_runs

    from tests.api.dashboard_browser import stops_naming_a_live_writer
    from tests.store.test_lock_handover import hold

    def not_yours(run_id, root):
        raise PermissionError(errno.EACCES, "Permission denied", root.lock_path(run_id))

    monkeypatch.setattr(routes_runs, "remove_run", not_yours)
    root = StoreRoot(tmp_path)
    write_run(root, "live", steps=8, chunk_steps=8, finish=None)
    stops_naming_a_live_writer(root, "live")  # (this process's stand-in flock: the holder below takes its place)
    holder = hold(root, "live", os.getpid(), 60)  # its producer, alive, holding the lock
    try:
        with serve(root, token="t") as srv:
            r = httpx.delete(f"{srv.url}/api/runs/live", params={"force": "true"}, headers={"Authorization": "Bearer t"})
    finally:
        holder.kill()
        holder.wait()
    assert r.status_code == 409 and f"pid {os.getpid()}" in r.json()["detail"], r.text
    assert root.exists("live")


def test_deleting_a_running_run_whose_writer_is_gone_says_force_deletes_it(tmp_path, write_run, serve):
    import socket
    import subprocess
    import sys

    root = StoreRoot(tmp_path)
    write_run(root, "crashed", steps=8, chunk_steps=8, finish=None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(root.lock_path("crashed"), "w") as f:  # as its killed producer left it
        f.write(f"pid {dead.pid} on {socket.gethostname()}\n")
    with serve(root, token="t") as srv:
        r = httpx.delete(f"{srv.url}/api/runs/crashed", headers={"Authorization": "Bearer t"})
        assert r.status_code == 409 and "its writer is gone" in r.json()["detail"] and "force=true" in r.json()["detail"]
        r = httpx.delete(f"{srv.url}/api/runs/crashed", params={"force": "true"}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 200 and not root.exists("crashed")


def test_a_listing_parses_a_run_document_again_only_when_it_changed(tmp_path, write_run, serve, monkeypatch):
    """Found by a review: every poll of /api/runs (the dashboard's, each second with status=running) parsed every
    run's whole document; on a local root an unchanged one is now a stat (a trajscope write is a new inode)."""
    root = StoreRoot(tmp_path)
    for name in ("a", "b", "c"):
        write_run(root, name, steps=8, chunk_steps=8)
    write_run(root, "live", steps=16, chunk_steps=8, finish=None, commit_to=8)
    parsed: list[str] = []
    real = StoreRoot.read_attrs
    monkeypatch.setattr(StoreRoot, "read_attrs", lambda self, run_id, **kw: parsed.append(run_id) or real(self, run_id, **kw))
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        first = c.get("/api/runs", params={"size": "false"}).json()["runs"]
        assert sorted(r["run_id"] for r in first) == ["a", "b", "c", "live"] and sorted(parsed) == ["a", "b", "c", "live"]
        parsed.clear()
        assert [r["run_id"] for r in c.get("/api/runs", params={"status": "running"}).json()["runs"]] == ["live"]
        assert parsed == []  # nothing changed: nothing parsed
        from tests.api.dashboard_browser import commit

        commit(root, "live", 16)
        parsed.clear()  # (the commit's own reads)
        again = {r["run_id"]: r for r in c.get("/api/runs", params={"size": "false"}).json()["runs"]}
        assert parsed == ["live"] and again["live"]["committed_steps"] == 16  # the changed one, read afresh


def test_another_users_run_is_left_out_of_listings_not_failing_them(tmp_path, write_run, serve, monkeypatch,
                                                                   python_env):
    """Found by a review: in a shared root, one run folder of mode 700 owned by another user made `trajscope ls` an
    error and `GET /api/runs` a 503 saying the whole root was unreadable. It is skipped: `ls` says so in one line,
    the API leaves it out, the other runs are listed. (Tests run as root, which reads everything: the refusal is
    the one the file system gives another user, raised where the run's document is read.)"""
    import errno
    import subprocess
    import sys

    from trajscope.store import list_runs

    root = StoreRoot(tmp_path)
    write_run(root, "mine", steps=8, chunk_steps=8)
    write_run(root, "theirs", steps=8, chunk_steps=8)
    real = StoreRoot.read_group_metadata

    def denied(self, run_id, **kwargs):
        if run_id == "theirs":
            raise PermissionError(errno.EACCES, "Permission denied", os.path.join(self.run_url(run_id), "zarr.json"))
        return real(self, run_id, **kwargs)

    monkeypatch.setattr(StoreRoot, "read_group_metadata", denied)
    assert [i.run_id for i in list_runs(root)] == ["mine"]
    with serve(root) as srv:
        r = httpx.get(f"{srv.url}/api/runs")
    assert r.status_code == 200 and [run["run_id"] for run in r.json()["runs"]] == ["mine"]
    script = ("import errno, sys; from trajscope.store import StoreRoot; real = StoreRoot.read_group_metadata\n"
              "def denied(self, run_id, **kw):\n"
              "    if run_id == 'theirs': raise PermissionError(errno.EACCES, 'Permission denied', 'x')\n"
              "    return real(self, run_id, **kw)\n"
              "StoreRoot.read_group_metadata = denied\n"
              "from trajscope.cli import main; sys.argv = ['trajscope', 'ls', '--root', sys.argv[1], '--json']; main()")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=python_env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [row["run"] for row in json.loads(result.stdout)] == ["mine"]
    assert result.stderr.strip().splitlines() == [
        f"skipped: run 'theirs' cannot be read by this user (uid {os.getuid()}): Permission denied; its owner can "
        f"give read access to {root.run_url('theirs')}"]
