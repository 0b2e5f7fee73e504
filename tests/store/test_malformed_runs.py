"""A run whose group document readers cannot use (hand-edited or foreign ``zarr.json``) is refused with one
clear error naming the field, skipped by listings, and never crashes a reader (found by a review: one such
run made ``GET /api/runs`` a 500 for every run and ``trajscope ls`` print a traceback)."""

from __future__ import annotations

import json
import os
import re

import pytest

from trajscope.store import StoreRoot, list_runs, open_run
from trajscope.store.errors import MalformedRun

from tests.store.test_symlinks import write_run
from tests import cli_fork

#: (name, edit of the document, words of the error)
EDITS = [
    ("not-json", lambda doc: b"{not json", "is not JSON"),
    ("a-list", lambda doc: [1, 2, 3], "a JSON list, not an object"),
    ("attrs-list", lambda doc: {**doc, "attributes": [1, 2]}, "attributes are a JSON list"),
    ("steps-text", lambda doc: _attrs(doc, committed_steps="5k"), "committed_steps is '5k'"),
    ("steps-null", lambda doc: _attrs(doc, committed_steps=None), "committed_steps is None"),
    ("steps-negative", lambda doc: _attrs(doc, committed_steps=-5), "committed_steps is -5"),
    ("steps-fraction", lambda doc: _attrs(doc, committed_steps=1.5), "committed_steps is 1.5"),
    ("steps-bool", lambda doc: _attrs(doc, committed_steps=True), "committed_steps is True"),
    ("steps-over", lambda doc: _attrs(doc, committed_steps=10**9), "over its capacity"),
    ("capacity-text", lambda doc: _attrs(doc, capacity="x"), "capacity is 'x'"),
    ("config-text", lambda doc: _attrs(doc, config="notadict"), "config is 'notadict', not an object"),
    ("tags-number", lambda doc: _attrs(doc, tags=5), "tags is 5, not a list"),
    ("status-number", lambda doc: _attrs(doc, status=3), "status is 3, not text"),
]


def _attrs(doc, **changes):
    return {**doc, "attributes": {**doc["attributes"], **changes}}


def plant(root: StoreRoot, run_id: str, edit) -> None:
    write_run(root, run_id)
    path = os.path.join(root.run_url(run_id), "zarr.json")
    with open(path) as handle:
        new = edit(json.load(handle))
    with open(path, "wb") as handle:
        handle.write(new if isinstance(new, bytes) else json.dumps(new).encode())


@pytest.mark.parametrize("name,edit,words", EDITS, ids=[e[0] for e in EDITS])
def test_a_malformed_document_is_one_clear_error_and_left_out_of_listings(tmp_path, name, edit, words):
    root = StoreRoot(tmp_path)
    write_run(root, "good")
    plant(root, name, edit)
    with pytest.raises(MalformedRun, match=words):
        root.read_attrs(name)
    with pytest.raises(MalformedRun, match=words):
        open_run(name, root)
    assert [i.run_id for i in list_runs(root)] == ["good"]


def test_a_huge_document_is_refused_without_reading_it_whole(tmp_path):
    """Found by a review of the server: a 2 GB ``zarr.json`` (a careless copy) was read whole on every request,
    the run list too (peak RSS 5 GB, 16 s a listing). A sparse file: no disk is used."""
    import time

    from trajscope.store.root import MAX_DOCUMENT_BYTES
    from trajscope.store.run_attrs import delete_run

    root = StoreRoot(tmp_path)
    write_run(root, "good")
    write_run(root, "huge")
    os.truncate(os.path.join(root.run_url("huge"), "zarr.json"), 2 * 2**30)
    began = time.monotonic()
    with pytest.raises(MalformedRun, match=f"its zarr.json is over {MAX_DOCUMENT_BYTES // 2**20} MiB"):
        root.read_attrs("huge")
    assert [i.run_id for i in list_runs(root)] == ["good"]
    assert time.monotonic() - began < 10
    delete_run("huge", root)  # removable whatever it holds
    assert not root.exists("huge")


def test_a_copy_with_json_encoded_attributes_is_not_malformed(tmp_path):
    """A run written by ``ds.to_zarr`` holds its nested attributes as JSON text, named in
    ``trajscope_json_attrs``: readers take it, and the store reads them nested again (found by a review: the
    writers iterated the text of ``time_variables``, so resuming or repairing such a copy crashed)."""
    root = StoreRoot(tmp_path)
    write_run(root, "r")
    ds = open_run("r", root)
    ds.to_zarr(os.path.join(root.location, "copy.zarr"), zarr_format=3, consolidated=False)
    stored = root.read_group_metadata("copy")["attributes"]
    assert isinstance(stored["config"], str) and "config" in stored["trajscope_json_attrs"]
    attrs = root.read_attrs("copy")
    assert attrs["config"] == root.read_attrs("r")["config"] and "trajscope_json_attrs" not in attrs
    assert attrs["time_variables"] == root.read_attrs("r")["time_variables"]


def test_the_server_and_the_cli_skip_it_in_listings_and_refuse_it_alone(tmp_path):
    import httpx

    from tests.api.conftest import serving

    root = StoreRoot(tmp_path)
    write_run(root, "good")
    plant(root, "bad", EDITS[3][1])
    with serving(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        listing = client.get("/api/runs")
        assert listing.status_code == 200 and [r["run_id"] for r in listing.json()["runs"]] == ["good"]
        for url in ("/api/runs/bad", "/api/runs/bad/series/loss", "/api/runs/bad/analysis", "/zarr/bad/zarr.json"):
            r = client.get(url)
            assert r.status_code == 422 and "committed_steps is '5k'" in r.json()["detail"], (url, r.text)
    result = cli_fork.run(["ls", "--root", root.location], timeout=120)
    assert result.returncode == 0 and "good" in result.stdout and "Traceback" not in result.stderr
    why = "committed_steps is '5k', not a whole number >= 0"
    assert result.stderr.strip().splitlines() == [f"skipped: {MalformedRun('bad', why)}"]
    shown = cli_fork.run(["show", "bad", "--root", root.location], timeout=120)
    assert shown.returncode == 2 and len(shown.stderr.strip().splitlines()) == 1 and "committed_steps" in shown.stderr


@pytest.mark.parametrize("name,edit,words", [EDITS[0], EDITS[3], EDITS[8], EDITS[12]], ids=["not-json", "steps-text",
                                                                                         "steps-over", "status-number"])
def test_fsck_reports_it_and_rm_deletes_it(tmp_path, name, edit, words):
    """fsck names what is wrong (a problem, exit 1), never raises; ``rm`` and the server's ``DELETE`` remove
    such a run as any other, since the user names it (found by a review: both refused it once it was
    refused on read)."""
    import httpx

    from tests.api.conftest import serving
    from trajscope.store.fsck import fsck_run
    from trajscope.store.run_attrs import delete_run, run_identity

    root = StoreRoot(tmp_path)
    plant(root, name, edit)
    report = fsck_run(root, name)
    assert any(words in problem for problem in report.problems), report.problems
    fsck = cli_fork.run(["fsck", name, "--root", root.location], timeout=120)
    assert fsck.returncode == 1 and words in fsck.stdout + fsck.stderr and "Traceback" not in fsck.stderr
    rm = cli_fork.run(["rm", name, "--root", root.location], input="y\n", timeout=120)
    assert rm.returncode == 0 and "zarr.json cannot be read" in rm.stdout, (rm.stdout, rm.stderr)
    assert not root.exists(name)
    plant(root, name, edit)
    with serving(root, token="s3cret-token") as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        r = client.delete(f"/api/runs/{name}", headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and r.json() == {"deleted": name}, r.text
    assert not root.exists(name)
    plant(root, name, edit)
    assert delete_run(name, root, expect=run_identity(name, root)) == name


def test_someone_elses_zarr_group_is_neither_deleted_nor_tagged(tmp_path):
    """Found by a review: ``rm`` deleted a foreign Zarr v3 group under the root (with its data) and ``tag``
    rewrote its ``zarr.json``, though such a group is never taken for a run."""
    import numpy as np
    import zarr

    from trajscope.store.errors import NotARun
    from trajscope.store.run_attrs import delete_run, tag_run

    root = StoreRoot(tmp_path)
    group = zarr.open_group(os.path.join(root.location, "mine.zarr"), mode="w", zarr_format=3)
    group.attrs["title"] = "my data"
    group.create_array("x", shape=(3,), dtype="f8")[:] = np.arange(3.0)
    before = open(os.path.join(root.location, "mine.zarr", "zarr.json"), "rb").read()
    with pytest.raises(NotARun, match="not a trajscope run"):
        delete_run("mine", root)
    with pytest.raises(NotARun, match="not a trajscope run"):
        tag_run("mine", root, add=["x"])
    assert open(os.path.join(root.location, "mine.zarr", "zarr.json"), "rb").read() == before
    np.testing.assert_array_equal(zarr.open_group(os.path.join(root.location, "mine.zarr"), mode="r")["x"][:],
                                  np.arange(3.0))


@pytest.mark.parametrize("names", [("temperature",), ("X", "y"), ("loss", "step")])  # (the last two: names a run has)
@pytest.mark.parametrize("attrs", [{}, {"title": "my data"}, None, "null"])  # None: no "attributes" key
def test_someone_elses_dataset_is_kept_and_refused_everywhere(tmp_path, attrs, names, small_config):
    """Found by a review: a dataset xarray wrote with no attributes (root attributes ``{}``, taken for a run an
    older trajscope had begun) was deleted by ``rm``/``DELETE``, replaced by ``produce --name``, labelled by
    ``tag``; reading it was a traceback or a 500. It is kept everywhere and refused in one line (HTTP 422)."""
    import httpx
    import numpy as np
    import xarray as xr

    from tests.api.conftest import serving
    from trajscope.producer import produce
    from trajscope.store.errors import NotARun, UserError
    from trajscope.store.fsck import fsck_run
    from trajscope.store.run_attrs import delete_run, tag_run

    root = StoreRoot(tmp_path / "runs")
    path = os.path.join(root.location, "climate.zarr")
    xr.Dataset({name: ("x", np.arange(3.0)) for name in names}, attrs=attrs if isinstance(attrs, dict) else {}).to_zarr(
        path, zarr_format=3, consolidated=False)
    if not isinstance(attrs, dict):  # (Zarr v3 makes the key optional; found by reviews: rm deleted such groups)
        document = json.load(open(os.path.join(path, "zarr.json")))
        document.pop("attributes")
        if attrs == "null":
            document["attributes"] = None
        open(os.path.join(path, "zarr.json"), "w").write(json.dumps(document))
    files = {p: open(os.path.join(d, p), "rb").read() for d, _, names in os.walk(path) for p in names}

    def unchanged() -> bool:
        return {p: open(os.path.join(d, p), "rb").read() for d, _, names in os.walk(path) for p in names} == files

    # ("attributes": null is also a document readers refuse: MalformedRun, "cannot be read"; never deleted either)
    refused, words = (NotARun, "not a trajscope run") if attrs != "null" else (UserError, "not a trajscope run|cannot "
                                                                                         "be read|already exists")
    for attempt in (lambda: delete_run("climate", root), lambda: tag_run("climate", root, add=["x"]),
                    lambda: produce(small_config(), root=root, name="climate"), lambda: open_run("climate", root)):
        with pytest.raises(refused, match=words):
            attempt()
        assert unchanged()
    assert re.search(words, fsck_run(root, "climate", repair=True).problems[0]) and unchanged()
    with serving(root, token="s3cret-token") as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        for url in ("/api/runs/climate", f"/api/runs/climate/vars/{names[0]}", "/api/runs/climate/analysis",
                    "/api/runs/climate/analysis/summary", "/api/runs/climate/plots", "/api/runs/climate/plots/loss.png",
                    "/api/runs/climate/series", "/api/runs/climate/series/loss"):
            r = client.get(url)
            assert r.status_code == 422 and re.search(words, r.json()["detail"]), (url, r.status_code, r.text)
        r = client.delete("/api/runs/climate", headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 422 and "not a trajscope run" in r.json()["detail"], r.text
    assert unchanged()
    root.write_attrs("begun", {})  # what an older trajscope left when killed as it began a run: nothing else in it
    assert delete_run("begun", root) == "begun" and not root.exists("begun")
    write_run(root, "early")  # and one killed while it made its arrays (before 9b8c335): attributes {}, W, v...
    root.write_attrs("early", {})
    assert delete_run("early", root) == "early" and not root.exists("early")


def test_an_exported_copy_is_tagged_and_checked_as_a_run(tmp_path):
    """A copy written by ``export`` holds lists as JSON text (found by a review: ``tag`` stored ``['[', ']',
    'foo']`` and fsck saw one missing array per character of ``time_variables``)."""
    from trajscope.store.export import export
    from trajscope.store.fsck import fsck_run
    from trajscope.store.run_attrs import tag_run

    root = StoreRoot(tmp_path / "runs")
    write_run(root, "r")
    (tmp_path / "ex").mkdir()
    export(open_run("r", root), tmp_path / "ex" / "copy.zarr")
    copy_root = StoreRoot(tmp_path / "ex")
    assert fsck_run(copy_root, "copy").problems == []
    tag_run("copy", copy_root, add=["foo"])
    tag_run("copy", copy_root, add=["bar"])
    assert sorted(open_run("copy", copy_root).traj.attrs["tags"]) == ["bar", "foo"]
    assert fsck_run(copy_root, "copy").problems == []


@pytest.mark.parametrize("live", [False, True])
def test_a_run_of_a_newer_store_format_is_refused_not_misread_or_written(tmp_path, live):
    """Found by a review of the store contract: nothing said, or checked, what this trajscope does with a run whose
    ``format_version`` is one it does not know (a later trajscope's). It is refused by name: open_run, resume and
    fsck --repair leave it as it is."""
    from trajscope.store import RunWriter
    from trajscope.store.errors import UserError
    from trajscope.store.fsck import fsck_run

    root = StoreRoot(tmp_path)
    write_run(root, "later", live=live)
    path = os.path.join(root.run_url("later"), "zarr.json")
    with open(path) as handle:
        doc = json.load(handle)
    doc["attributes"]["format_version"] = 2
    with open(path, "w") as handle:
        json.dump(doc, handle)
    before = sorted((p, os.path.getsize(os.path.join(d, p))) for d, _, files in os.walk(root.run_url("later"))
                    for p in files)
    with pytest.raises(UserError, match=r"format 2, which this trajscope \(format 1\) does not know: upgrade"):
        open_run("later", root)
    with pytest.raises(UserError, match="format 2"):
        RunWriter.reopen(root, "later")
    report = fsck_run(root, "later", repair=True)
    assert not report.ok and any("format 2" in p for p in report.problems), report.problems
    after = sorted((p, os.path.getsize(os.path.join(d, p))) for d, _, files in os.walk(root.run_url("later"))
                   for p in files)
    assert after == before and json.load(open(path))["attributes"]["status"] == doc["attributes"]["status"]
