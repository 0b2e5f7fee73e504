"""Planted links over HTTP: no route of a real uvicorn server returns anything from outside the root.

One link per case (the run's ``zarr.json``, ``W/zarr.json``, the ``loss/`` directory, the chunk
``W/c/0/0/0``, the run directory itself) points at the same key of a run *outside* the root whose values
and metadata carry a marker. Every route (listed from the server's own listings of an untouched twin
run) must answer below 500, never with the marker, and a figure it draws must be the twin's figure.
"""

from __future__ import annotations

import os
import shutil

import httpx
import numpy as np
import pytest
import zarr

from trajscope.store import StoreRoot

MARKER = 12345.678
BAD = (b"OUTSIDE-SECRET", np.float32(MARKER).tobytes(), np.float64(MARKER).tobytes(), b"12345.67")
CASES = ["zarr.json", "W/zarr.json", "loss", "W/c/0/0/0", ""]


@pytest.fixture(scope="module")
def outside_run(tmp_path_factory, write_run):
    """A live run outside every served root, its values and metadata carrying the marker."""
    root = StoreRoot(tmp_path_factory.mktemp("outside"))
    write_run(root, "r", steps=24, chunk_steps=8, finish=None, seed=7)
    group = zarr.open_group(root.zarr_store("r"), mode="r+", use_consolidated=False)
    for name in ("W", "v", "loss", "output"):
        group[name][...] = MARKER
        group[name].attrs["secret"] = "OUTSIDE-SECRET"
    attrs = root.read_attrs("r")
    root.write_attrs("r", {**attrs, "secret": "OUTSIDE-SECRET"})
    return root.run_url("r")


def make_root(path, write_run) -> StoreRoot:
    root = StoreRoot(path)
    write_run(root, "r", steps=24, chunk_steps=8, finish=None, seed=1)  # live: metadata read file by file
    write_run(root, "ok", steps=16, chunk_steps=8, seed=2)
    return root


@pytest.fixture(scope="module")
def twin(tmp_path_factory, write_run, serve):
    """The untouched twin root and the requests to make, taken from its server's own listings."""
    root = make_root(tmp_path_factory.mktemp("twin"), write_run)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        quantities = sorted(c.get("/api/runs/r/analysis").json()["items"])
        kinds = sorted(c.get("/api/runs/r/plots").json()["items"])
        paths = ["/health", "/api/runs", "/api/runs/r", "/api/runs/r/analysis", "/api/runs/r/plots"]
        for name in ("W", "v", "loss", "output", "X", "y", "step", "t"):
            paths += [f"/api/runs/r/vars/{name}?format=json", f"/api/runs/r/vars/{name}?format=npy"]
        paths += [f"/api/runs/r/analysis/{q}" for q in quantities]
        paths += [f"/api/runs/r/plots/{k}.png" for k in kinds]
        run_dir = root.run_url("r")
        for directory, _, files in os.walk(run_dir):
            paths += [f"/zarr/r/{os.path.relpath(os.path.join(directory, f), run_dir)}" for f in files]
        figures = {p: c.get(p) for p in paths if p.endswith(".png")}
    return paths, {p: r.content for p, r in figures.items() if r.status_code == 200}


@pytest.mark.parametrize("key", CASES)
def test_no_route_serves_outside_data(key, tmp_path, write_run, serve, outside_run, twin):
    paths, figures = twin
    root = make_root(tmp_path / "root", write_run)
    target = os.path.join(root.run_url("r"), key) if key else root.run_url("r")
    shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
    os.symlink(os.path.join(outside_run, key) if key else outside_run, target)
    refused = 0
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        for path in paths:
            r = c.get(path)
            if path.startswith("/zarr/r/") and path != "/zarr/r/zarr.json" and r.status_code == 503:  # a chunk or
                assert "is not served (503, not 404" in r.json()["detail"], r.text  # an array's metadata behind the
                # link: never a 404 (fill values, or no array)
            else:
                assert r.status_code < 500, (path, r.status_code, r.text[:300])
            for marker in BAD:
                assert marker not in r.content, (path, marker)
            if r.status_code >= 400:
                refused += 1
            elif path.endswith(".png"):
                assert r.content == figures[path], path  # drawn from the inside data only
        runs = c.get("/api/runs").json()["runs"]
        assert "ok" in [run["run_id"] for run in runs]
        assert c.get("/api/runs/ok/vars/W").status_code == 200  # the other run is served as before
    assert refused > 0  # the planted link was met, and refused


def test_a_range_reads_the_file_that_was_checked(tmp_path, write_run, serve, outside_run, monkeypatch):
    """A chunk swapped for a link out of the root right after the server's checks is not what is read:
    the range comes from the descriptor opened by the check (a path reopened later would follow the link)."""
    import trajscope.store.served as served

    root = make_root(tmp_path / "root", write_run)
    key = "W/c/0/0/0"
    chunk = os.path.join(root.run_url("r"), key)
    original = open(chunk, "rb").read()
    real_open = served.open_inside

    def open_then_swap(base, path, what):
        fd = real_open(base, path, what)
        os.replace(chunk, chunk + ".moved")  # the checked file leaves; a link out of the root takes its name
        os.symlink(os.path.join(outside_run, key), chunk)
        return fd

    monkeypatch.setattr(served, "open_inside", open_then_swap)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        r = c.get(f"/zarr/r/{key}", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes 0-99/{len(original)}"
    assert r.content == original[:100]
    assert os.path.islink(chunk)  # the swap did happen


@pytest.mark.parametrize("planted", ["fifo", "link"])
def test_a_planted_lock_file_is_refused_in_words_without_the_roots_path(tmp_path, write_run, serve, planted):
    """Found by a review: a FIFO as a run's lock file made DELETE a 500 (``ftruncate`` failed) and could hang a
    listing that read it; a lock file planted as a link answered a 404 naming the root's absolute path."""
    import time

    from trajscope.store.locks import writer_gone

    root = StoreRoot(tmp_path / "runs")
    write_run(root, "r", steps=16, chunk_steps=8, finish=None, commit_to=8)  # `running`: its lock is read
    lock = tmp_path / "runs" / ".locks" / "r.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.unlink(missing_ok=True)
    if planted == "fifo":
        os.mkfifo(lock)
    else:
        (tmp_path / "elsewhere").write_text("pid 1 on nowhere\n")
        lock.symlink_to(tmp_path / "elsewhere")
    began = time.monotonic()
    assert writer_gone(root, "r") is False and time.monotonic() - began < 5  # read without waiting on a FIFO
    with serve(root, token="t0ken") as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/api/runs").status_code == 200
        r = c.delete("/api/runs/r", params={"force": "true"}, headers={"Authorization": "Bearer t0ken"})
        assert 400 <= r.status_code < 500, r.text
        detail = r.json()["detail"]
        assert str(tmp_path) not in r.text and "runs/.locks/r.lock" in detail, detail
        assert ("not a regular file" if planted == "fifo" else "symbolic link") in detail
    assert root.exists("r") and (tmp_path / "elsewhere").exists() == (planted == "link")
    if planted == "link":
        assert (tmp_path / "elsewhere").read_text() == "pid 1 on nowhere\n"  # nothing written through the link


@pytest.mark.parametrize("key", ["W/c/0/0/0", "W/c", "W"])
def test_a_remote_reader_of_a_chunk_behind_a_link_gets_an_error_not_fill_values(key, tmp_path, write_run, serve,
                                                                             outside_run):
    """Found by a review: a committed chunk behind a link out of the root (the chunk file, its ``c`` folder, the
    array's folder: say one moved to another disk and linked back) answered 404 on ``/zarr``, which zarr reads as
    "absent": remote ``xr.open_zarr`` gave NaN for it without a word. It answers 503, so the reader raises."""
    import xarray as xr

    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", steps=24, chunk_steps=8, seed=1)  # finished: opened from its consolidated metadata
    target = os.path.join(root.run_url("r"), key)
    shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
    os.symlink(os.path.join(outside_run, key), target)
    with serve(root) as srv:
        ds = xr.open_zarr(f"{srv.url}/zarr/r", zarr_format=3)
        assert ds.sizes["step"] == 24
        assert np.isfinite(ds["v"].values).all()  # the arrays not behind the link read as before
        with pytest.raises(Exception, match="503"):
            ds["W"].isel(step=slice(0, 8)).values


@pytest.mark.parametrize("planted", ["link", "fifo", "gone"])
def test_an_arrays_metadata_behind_a_link_is_an_error_not_a_missing_variable(tmp_path, write_run, serve, outside_run,
                                                                             planted):
    """Found by a review: an array's ``zarr.json`` behind a link out of the root, or a FIFO there, answered 404, so a
    reader listing the run (``consolidated=False``) got a dataset without that variable, without a word. Such a file
    of an array the run has, or one lost, answers 503."""
    import xarray as xr

    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", steps=24, chunk_steps=8, seed=1)
    target = os.path.join(root.run_url("r"), "W", "zarr.json")
    os.unlink(target)
    if planted == "link":
        os.symlink(os.path.join(outside_run, "W", "zarr.json"), target)
    elif planted == "fifo":
        os.mkfifo(target)
    with serve(root) as srv:
        with pytest.raises(Exception, match="503"):
            xr.open_zarr(f"{srv.url}/zarr/r", zarr_format=3, consolidated=False)
