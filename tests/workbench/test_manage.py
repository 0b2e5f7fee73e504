"""Run management from the CLI: ls with columns/tags/JSON, tag, rm (asks; refuses a live run), compare."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from trajscope import open_run
from trajscope.store import RunLocked, StoreRoot
from trajscope.store.run_attrs import delete_run, tag_run



def test_ls_json_has_final_loss_duration_tags_and_config_columns(run_cli, tiny_root):
    proc = run_cli("ls", "--root", str(tiny_root), "--columns", "train.lr,model.width", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"a", "b"}
    for name, lr, width in (("a", 0.01, 8), ("b", 0.02, 6)):
        ds = open_run(name, tiny_root)
        assert rows[name]["train.lr"] == lr and rows[name]["model.width"] == width
        assert rows[name]["final_loss"] == pytest.approx(float(ds["loss"][-1]))
        assert rows[name]["committed_steps"] == ds.sizes["step"] == 41 and rows[name]["status"] == "complete"
        assert rows[name]["seconds"] is not None and rows[name]["seconds"] >= 0
    assert rows["a"]["tags"] == ["base"] and rows["a"]["note"] == "the reference" and rows["b"]["tags"] == []


def _npz(tmp_path):
    """A small npz dataset (X, y = ±1) for a run of the npz data kind."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6)).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=np.sign(X[:, 0]).astype(np.int8) + (X[:, 0] == 0))
    return path


def test_ls_shows_a_field_newer_than_a_run_as_blank(run_cli, tmp_path, small_config):
    """A run made before ``record.io`` existed has no such field in its stored config: ``--columns record.io``
    shows it empty (``-`` in the table, null in JSON; today's runs show theirs), as a field of another data
    kind is for a run without it; a field no config has is still refused in one line."""
    from trajscope.producer import produce

    root = tmp_path / "runs"
    produce(small_config(record={"io": "buffered"}), root=root, name="new")
    produce(small_config(), root=root, name="old")
    document = root / "old.zarr" / "zarr.json"
    meta = json.loads(document.read_text())
    config = meta["attributes"]["config"]
    encoded = isinstance(config, str)
    config = json.loads(config) if encoded else config
    del config["record"]["io"]
    meta["attributes"]["config"] = json.dumps(config) if encoded else config
    document.write_text(json.dumps(meta))
    proc = run_cli("ls", "--root", str(root), "--columns", "record.io", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in json.loads(proc.stdout)}
    assert rows["old"]["record.io"] is None and rows["new"]["record.io"] == "buffered"
    table = run_cli("ls", "--root", str(root), "--columns", "record.io")
    assert table.returncode == 0 and "buffered" in table.stdout, table.stderr
    # a field only another data kind has (an npz run's data.path): empty for the synthetic runs
    npz = small_config()
    npz["data"] = {"kind": "npz", "path": str(_npz(tmp_path))}
    produce(npz, root=root, name="npz")
    rows = {r["run"]: r for r in json.loads(run_cli("ls", "--root", str(root), "--columns", "data.path",
                                                    "--json").stdout)}
    assert rows["new"]["data.path"] is None and rows["npz"]["data.path"].endswith("data.npz")
    wrong = run_cli("ls", "--root", str(root), "--columns", "record.speed")
    assert wrong.returncode != 0 and "no config field 'record.speed'" in wrong.stderr


def test_ls_table_and_tag_filter(run_cli, tiny_root):
    table = run_cli("ls", "--root", str(tiny_root), "--columns", "train.lr", "--tag", "base")
    assert table.returncode == 0 and " a " in table.stdout and " b " not in table.stdout and "0.01" in table.stdout
    assert "final loss" in table.stdout and "duration" in table.stdout


def test_tag_adds_removes_and_notes_and_keeps_the_run_readable(run_cli, tmp_path, make_run):
    make_run("t")
    root = str(make_run.root)
    before = open_run("t", root)
    proc = run_cli("tag", "t", "keep", "lr-sweep", "--note", "first try", "--root", root)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("tag", "t", "--remove", "keep", "--root", root)
    assert proc.returncode == 0 and "lr-sweep" in proc.stdout
    after = open_run("t", root)
    assert after.traj.attrs["tags"] == ["lr-sweep"] and after.attrs["note"] == "first try"
    np.testing.assert_array_equal(after["W"].values, before["W"].values)  # finished run: consolidated metadata kept
    assert "consolidated_metadata" in json.loads((make_run.root / "t.zarr" / "zarr.json").read_text())
    assert run_cli("tag", "t", "bad tag!", "--root", root).returncode == 2
    # found by a review: a tag both added and removed ended without it, saying nothing; a long bad tag was echoed
    # whole (100 KB on one line)
    proc = run_cli("tag", "t", "lr-sweep", "--remove", "lr-sweep", "--root", root)
    assert proc.returncode == 2 and "both added and removed" in proc.stderr, proc.stderr
    proc = run_cli("tag", "t", "x" * 100_000, "--root", root)
    assert proc.returncode == 2 and len(proc.stderr) < 400 and "100000 characters" in proc.stderr, proc.stderr[:300]
    # a tag the run does not have (a typo) was "removed" silently; nothing else of the command is done either
    proc = run_cli("tag", "t", "more", "--remove", "lr-sweeps", "--root", root)
    assert proc.returncode == 2 and "has no tag 'lr-sweeps' to remove (its tags: lr-sweep)" in proc.stderr, proc.stderr
    assert open_run("t", root).traj.attrs["tags"] == ["lr-sweep"]


def test_edits_and_deletes_are_refused_while_a_writer_holds_the_run(run_cli, make_run):
    make_run("live")
    root = StoreRoot(make_run.root)
    attrs_before = root.read_attrs("live")
    holder = subprocess.Popen(  # another process holds the writer lock, as a running producer does
        [sys.executable, "-c", "import sys, time; from trajscope.store import StoreRoot, WriterLock; "
         f"WriterLock(StoreRoot({root.location!r}), 'live').acquire(); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            tag_run("live", root, add=["x"])
        with pytest.raises(RunLocked):
            delete_run("live", root)
        proc = run_cli("rm", "live", "--yes", "--root", root.location)
        assert proc.returncode == 2 and "being written" in proc.stderr
        proc = run_cli("tag", "live", "x", "--root", root.location)
        assert proc.returncode == 2 and "being written" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert root.read_attrs("live") == attrs_before and root.exists("live")


def test_rm_asks_first_and_deletes_only_on_yes(run_cli, make_run):
    make_run("r1")
    make_run("r2")
    root = str(make_run.root)
    no = run_cli("rm", "r1", "r2", "--root", root, input="n\n")
    assert no.returncode == 1 and StoreRoot(root).exists("r1") and StoreRoot(root).exists("r2")
    yes = run_cli("rm", "r1", "--root", root, input="y\n")
    assert yes.returncode == 0 and not StoreRoot(root).exists("r1") and StoreRoot(root).exists("r2")
    missing = run_cli("rm", "r2", "nope", "--yes", "--root", root)
    assert missing.returncode == 2 and "nope" in missing.stderr and StoreRoot(root).exists("r2")


def test_ls_names_what_a_stopped_deletion_left_and_rm_removes_it(run_cli, make_run):
    """A run folder without its root document (a deletion stopped half-way) is no run: ``ls`` names it with the
    command that removes it, and ``rm`` (which looked runs up first) removes it, asking first."""
    make_run("kept")
    make_run("gone")
    root = StoreRoot(str(make_run.root))
    (make_run.root / "gone.zarr" / "zarr.json").unlink()
    listed = run_cli("ls", "--root", str(make_run.root))
    assert listed.returncode == 0 and "kept" in listed.stdout
    assert "gone: left by a stopped deletion" in listed.stdout
    assert f"trajscope rm gone --root {make_run.root}`" in listed.stdout  # the root it was listed under
    assert "stopped deletion" not in run_cli("ls", "--tag", "x", "--root", str(make_run.root)).stdout
    assert [row["run"] for row in json.loads(run_cli("ls", "--json", "--root", str(make_run.root)).stdout)] == ["kept"]
    for repair in ([], ["--repair"]):  # fsck says what it is (it said "no run"), and leaves it as it is
        checked = run_cli("fsck", "gone", "--root", str(make_run.root), *repair)
        assert checked.returncode == 1 and "left by a stopped deletion" in checked.stdout
        assert "`trajscope rm gone`" in checked.stdout and root.has_leftovers("gone")
    no = run_cli("rm", "gone", "--root", str(make_run.root), input="n\n")
    assert no.returncode == 1 and "left by a stopped deletion" in no.stdout and root.has_leftovers("gone")
    yes = run_cli("rm", "gone", "--root", str(make_run.root), input="y\n")
    assert yes.returncode == 0 and "deleted gone" in yes.stdout
    assert not (make_run.root / "gone.zarr").exists() and root.exists("kept")
    assert "stopped deletion" not in run_cli("ls", "--root", str(make_run.root)).stdout


def test_compare_shows_config_differences_and_measurements(run_cli, tiny_root):
    proc = run_cli("compare", "a", "b", "--root", str(tiny_root))
    assert proc.returncode == 0, proc.stderr
    config, measured = proc.stdout.split("measured", 1)
    assert "train.lr" in config and "model.width" in config and "data.n" not in config  # only what differs
    assert "0.01" in config and "0.02" in config
    for name in ("a", "b"):
        final = float(open_run(name, tiny_root)["loss"][-1])
        assert f"{final:.4g}" in measured
    assert run_cli("compare", "a", "--root", str(tiny_root)).returncode == 2
    rows = json.loads(run_cli("compare", "a", "b", "--root", str(tiny_root), "--json").stdout)
    assert [r["run"] for r in rows] == ["a", "b"] and rows[0]["status"] == "complete"
    assert rows[0]["config"]["train.lr"] == 0.01 and rows[1]["config"]["train.lr"] == 0.02
    assert "data.n" not in rows[0]["config"]  # (the fields that differ, as the table)
    for row in rows:
        final = float(open_run(row["run"], tiny_root)["loss"][-1])
        losses = [m["value"] for q, m in row["measured"].items() if "final" in q.lower() and "loss" in q.lower()]
        assert f"{final:.4g}" in losses, row["measured"]
        # the numbers themselves, unrounded (found by a review: a script got "0.007" and "400 (200 / 200)")
        ds = open_run(row["run"], tiny_root)
        assert row["values"]["loss_final"] == float(ds["loss"][-1]) and row["values"]["n"] == ds.sizes["sample"]
        assert row["values"]["last_step"] == float(ds["step"][-1])
        assert all(v is None or isinstance(v, (int, float, bool)) for v in row["values"].values())


def test_compare_tells_apart_two_runs_of_one_id(run_cli, tiny_root, tmp_path):
    """Found by a review: a run and its Zarr export (whose run_id is its file's stem) were two columns named `a`."""
    copy = tmp_path / "a.zarr"
    assert run_cli("export", "a", "--root", str(tiny_root), "-o", str(copy)).returncode == 0
    rows = json.loads(run_cli("compare", str(copy), "a", "--root", str(tiny_root), "--json").stdout)
    assert [r["run"] for r in rows] == [str(copy), "a"]


def test_ls_leaves_out_someone_elses_zarr_group_and_says_so(run_cli, tmp_path):
    """Found by a review: a Zarr v3 dataset a user wrote with xarray under the root was listed as a run of status
    `unknown`."""
    import shutil

    import xarray as xr

    root = tmp_path / "runs"
    root.mkdir()
    xr.Dataset({"X": (("a",), np.arange(3.0))}).to_zarr(root / "theirs.zarr", zarr_format=3)
    proc = run_cli("ls", "--root", str(root), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    assert "skipped: theirs:" in proc.stderr and "is not a trajscope run" in proc.stderr
    assert (root / "theirs.zarr" / "X").is_dir()  # left as it is
    shutil.rmtree(root / "theirs.zarr")


def test_a_diverged_run_says_so_in_ls_show_and_the_api(tmp_path, small_config, run_cli):
    import json

    import numpy as np
    from fastapi.testclient import TestClient

    from trajscope.api.app import create_app
    from trajscope.producer import produce
    from trajscope.store import StoreRoot, list_runs, open_run

    produce(small_config(train={"lr": 1e6, "steps": 30}, init={"kind": "gaussian", "scale": 1.0}),
            root=tmp_path, name="div")
    produce(small_config(train={"steps": 10}), root=tmp_path, name="fine")
    loss = open_run("div", tmp_path)["loss"].values.astype(float)
    first = int(np.flatnonzero(np.isfinite(loss))[-1]) + 1  # where the non-finite stretch it ends with begins
    text = str(loss[-1])
    assert {r.run_id: r.not_finite for r in list_runs(tmp_path)} == {"div": {"final_loss": text}, "fine": {}}
    assert "not_finite" not in StoreRoot(tmp_path).read_attrs("fine")  # (only where a value was not finite)
    listed = run_cli("ls", "--root", str(tmp_path), "--json")
    rows = {r["run"]: r for r in json.loads(listed.stdout)}
    assert rows["div"]["not_finite"] == {"final_loss": text} and rows["div"]["final_loss"] is None
    assert f"{text} (diverged)" in run_cli("ls", "--root", str(tmp_path)).stdout
    shown = run_cli("show", "div", "--root", str(tmp_path))
    assert f"from step {int(open_run('div', tmp_path)['step'].values[first])} on" in " ".join(shown.stdout.split())
    assert "diverged" not in run_cli("show", "fine", "--root", str(tmp_path)).stdout
    from .conftest import cli  # (a process of its own: numpy's warnings as the command's process has them)

    apart = cli("show", "div", "--root", str(tmp_path))  # (found by a review: "RuntimeWarning: invalid
    assert apart.returncode == 0 and "encountered" not in apart.stderr, apart.stderr  # value encountered in matmul")
    import warnings

    filters = list(warnings.filters)  # a caller of main() in its own process keeps its filters (a review)
    assert run_cli("show", "div", "--root", str(tmp_path)).returncode == 0 and warnings.filters == filters
    with TestClient(create_app(StoreRoot(tmp_path))) as client:
        runs = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert runs["div"]["not_finite"] == {"final_loss": text} and runs["fine"]["not_finite"] == {}
    assert runs["div"]["final_loss"] is None  # the listing carries an ended run's final loss (the dashboard's)
    assert runs["fine"]["final_loss"] == pytest.approx(float(open_run("fine", tmp_path)["loss"].values[-1]), rel=1e-12)


def test_ls_filters_by_status_and_skips_sizes_when_asked(run_cli, tiny_root, tmp_path):
    """Found by a review of a root of 974 runs: ls had no status filter and always walked every run for its size."""
    rows = json.loads(run_cli("ls", "--root", str(tiny_root), "--json", "--status", "complete").stdout)
    assert sorted(r["run"] for r in rows) == ["a", "b"] and all(r["size_bytes"] > 0 for r in rows)
    assert json.loads(run_cli("ls", "--root", str(tiny_root), "--json", "--status", "running").stdout) == []
    rows = json.loads(run_cli("ls", "--root", str(tiny_root), "--json", "--no-sizes").stdout)
    assert [r["size_bytes"] for r in rows] == [None, None]
    table = run_cli("ls", "--root", str(tiny_root), "--no-sizes")
    assert table.returncode == 0 and "MiB" not in table.stdout
    bad = run_cli("ls", "--root", str(tiny_root), "--status", "sleeping")
    assert bad.returncode == 2 and "not a run status" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_ls_shows_the_latest_committed_loss_of_a_killed_run(run_cli, tmp_path, small_config, python_env):
    """Found by a review: ``ls`` showed no loss for a killed producer's run, where the dashboard's list showed its last
    committed one. A running run (live or killed) has no final loss; ``ls`` shows its latest, so marked, and
    ``--json`` carries it as ``latest_loss``. The producer here is really killed (SIGKILL at its second commit)."""
    import yaml

    from trajscope.store import faults

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(train={"lr": 0.01, "steps": 400},
                                                   record={"commit_seconds": 0.0})))
    root = tmp_path / "runs"
    killed = subprocess.run([sys.executable, "-c", "from trajscope.cli import main; main()", "produce", str(config),
                             "--root", str(root), "--name", "k", "--quiet"],
                            env={**python_env, faults.ENV: "commit.attrs:kill:2"}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ds = open_run("k", root)
    assert ds.attrs["status"] == "running" and ds.sizes["step"] > 0
    proc = run_cli("ls", "--root", str(root), "--json")
    row = json.loads(proc.stdout)[0]
    assert row["writer_gone"] and row["final_loss"] is None
    assert row["latest_loss"] == pytest.approx(float(ds["loss"].values[-1]), rel=1e-12)
    proc = run_cli("ls", "--root", str(root))
    assert proc.returncode == 0 and f"{float(ds['loss'].values[-1]):.4g}"[:5] in proc.stdout and "(latest)" in proc.stdout, \
        proc.stdout
    # a running run whose last committed loss is NaN: null in the JSON (which has no NaN: found by a review, the row
    # printed a bare NaN), named in not_finite, as a diverged run's final loss is
    _running_run(root, "n", [0.5, 0.25, float("nan")])
    proc = run_cli("ls", "--root", str(root), "--json")
    rows = {r["run"]: r for r in json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))}
    assert rows["n"]["latest_loss"] is None and rows["n"]["not_finite"] == {"latest_loss": "nan"}, rows["n"]
    assert rows["k"]["latest_loss"] == pytest.approx(float(ds["loss"].values[-1]), rel=1e-12)
    assert "nan (latest, diverged)" in run_cli("ls", "--root", str(root)).stdout


def _running_run(root, name: str, losses: list[float]) -> None:
    """A two-layer run left ``running`` with ``losses`` committed (as a killed writer leaves one)."""
    from trajscope.producer.two_layer import variables
    from trajscope.store import RunWriter

    h, d, n, steps = 2, 3, 4, len(losses)
    writer = RunWriter.create(StoreRoot(root), name, variables=variables(), sizes={"neuron": h, "feature": d, "sample": n},
                              capacity=8, static={"X": np.ones((n, d), np.float32), "y": np.array([1, -1, 1, -1], np.int8)},
                              attrs={"config": {}})
    writer.write_block(0, {"W": np.zeros((steps, h, d), np.float32), "v": np.zeros((steps, h), np.float32),
                           "loss": np.array(losses), "output": np.zeros((steps, n), np.float32),
                           "step": np.arange(steps), "t": np.arange(steps) * 0.1})
    writer.commit(steps)
    writer.close_writes()
    writer.lock.release()
