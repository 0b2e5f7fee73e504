"""Sweeps end to end: expansion, the local process pool, skip-and-resume after a kill, the table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from trajscope.experiments.sweep import expand, load_sweep, run_sweep
from trajscope.store import StoreRoot, UserError, describe_run

KILL_STEPS = 8_000  # (a few seconds of training: each test kills the run at its first commit, within a second)


def test_expansion_is_deterministic_and_ids_follow_the_config(spec_factory):
    spec, _ = load_sweep(spec_factory(grid={"data.mu": [0.2, 0.4], "model.width": [4, 6]}, seeds=[0, 1]))
    first = expand(spec)
    again = expand(spec)
    assert [p.run_id for p in first] == [p.run_id for p in again]
    assert len(first) == 8 and len({p.run_id for p in first}) == 8
    assert first[0].run_id.startswith("tiny-mu0.2_width4_seed0-")
    assert {p.config.model.width for p in first} == {4, 6} and {p.config.seed for p in first} == {0, 1}
    changed, _ = load_sweep(spec_factory(grid={"data.mu": [0.2, 0.4], "model.width": [4, 6]}, seeds=[0, 1],
                                         set={"train.lr": 0.1}))
    assert not {p.run_id for p in expand(changed)} & {p.run_id for p in first}  # a new config, new ids
    spec_q, _ = load_sweep(spec_factory(quick={"grid": {"data.mu": [0.3]}, "set": {"train.steps": 50}}))
    quick = expand(spec_q, quick=True)
    assert len(quick) == 1 and quick[0].config.data.mu == 0.3 and quick[0].config.train.steps == 50


def test_a_changed_default_keeps_the_run_ids_made_before():
    """``record.write_threads`` defaulted to 4 and now to ``None`` (chosen per root), ``record.writer`` to
    ``thread`` and now to ``auto``, and ``record.io`` is new: a config that leaves them unset still hashes as it
    did, so a sweep rerun after an upgrade finds its finished runs."""
    from trajscope.experiments.sweep import config_hash
    from trajscope.producer.config import RunConfig

    default = RunConfig()
    former = RunConfig.model_validate({"record": {"write_threads": 4, "writer": "thread"}})
    assert default.record.write_threads is None and default.record.writer == "auto"
    assert config_hash(default) == config_hash(former)
    assert config_hash(RunConfig.model_validate({"record": {"write_threads": 2}})) != config_hash(default)
    assert config_hash(RunConfig.model_validate({"record": {"writer": "process"}})) != config_hash(default)
    # record.io came later and never changes a chunk's bytes: the ids made before it stay, whatever it says.
    # 551a708f is what 9a10c29, before record.io existed, made of the default config (a new field that enters
    # the hash changes it: c2aed1ff with record.io hashed)
    assert config_hash(default) == "551a708f"
    for io in ("auto", "buffered", "direct"):
        assert config_hash(RunConfig.model_validate({"record": {"io": io}})) == config_hash(default)
    for flush in (0, 0.5, 2):  # record.flush_seconds came later still: when chunks go to the store, not what they hold
        assert config_hash(RunConfig.model_validate({"record": {"flush_seconds": flush}})) == config_hash(default)


def _kill_midway(point, root: str, env: dict) -> None:
    """Start producing ``point`` (with many steps) in a subprocess, SIGKILL it after a commit."""
    code = (
        "import sys, json; from trajscope.producer import produce; "
        "produce(json.loads(sys.argv[1]), root=sys.argv[2], name=sys.argv[3])"
    )
    import json

    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(point.config.model_dump(mode="json")), root,
                             point.run_id], env=env)
    store_root = StoreRoot(root)
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if store_root.exists(point.run_id):
                attrs = store_root.read_attrs(point.run_id)
                if attrs.get("committed_steps", 0) > 0:
                    break
            assert proc.poll() is None, "the producer ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no commit within 60 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_local_pool_skips_finished_and_resumes_killed(tmp_path, spec_factory, python_env):
    root = str(tmp_path / "runs")
    spec = spec_factory(points=[{"train.steps": 300}, {"train.steps": KILL_STEPS}], grid={"data.mu": [0.3]},
                        quick={"points": [{"train.steps": 300}]})
    # 1. the short point alone (quick mode lists only it), on the local pool
    first = run_sweep(spec, root=root, quick=True, workers=1)
    assert [r["action"] for r in first.rows] == ["produced"] and not first.failed
    short_id = first.rows[0]["run_id"]
    short_before = StoreRoot(root).read_attrs(short_id)
    # 2. the long point is killed midway by SIGKILL: its status stays "running", some states committed
    spec_obj, _ = load_sweep(spec)
    long_point = [p for p in expand(spec_obj) if p.config.train.steps == KILL_STEPS][0]
    _kill_midway(long_point, root, python_env)
    killed = StoreRoot(root).read_attrs(long_point.run_id)
    assert killed["status"] == "running" and 0 < killed["committed_steps"] < killed["capacity"]
    # 3. the full sweep: the finished point is skipped (untouched), the killed one resumed to the end
    second = run_sweep(spec, root=root, workers=2)
    actions = {r["run_id"]: r["action"] for r in second.rows}
    assert actions == {short_id: "skipped", long_point.run_id: "resumed"}
    short_after = StoreRoot(root).read_attrs(short_id)
    assert short_after["finished"] == short_before["finished"] and short_after["updated"] == short_before["updated"]
    resumed = StoreRoot(root).read_attrs(long_point.run_id)
    assert resumed["created"] == killed["created"]  # the same run, continued, not re-created
    assert resumed["status"] == "complete" and resumed["committed_steps"] == resumed["capacity"] == KILL_STEPS + 1
    assert resumed["updated"] > killed["updated"]
    # 4. the table: one row per run, config and measurements, next to the runs
    table = pd.read_csv(os.path.join(root, "tiny.sweep.csv"))
    assert list(table["run_id"]) == [r["run_id"] for r in second.rows]
    assert set(table["status"]) == {"complete"}
    assert {"param.train.steps", "t1_step", "t2_step", "post_t2_slope", "stable_rank_final",
            "mean_alignment_pos_final", "t1_scale_time", "t2_scale_time"} <= set(table.columns)
    assert table["t2_step"].notna().all() and (table["stable_rank_final"] >= 1).all()
    assert os.path.exists(os.path.join(root, "tiny.sweep.parquet"))
    assert describe_run(long_point.run_id, root).committed_steps == KILL_STEPS + 1


def test_sweep_on_a_dask_localcluster(tmp_path, spec_factory):
    distributed = pytest.importorskip("distributed")
    root = str(tmp_path / "runs")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = run_sweep(spec_factory(name="dask"), root=root, scheduler=cluster.scheduler_address)
        assert [r["action"] for r in result.rows] == ["produced", "produced"]
        assert all(r["status"] == "complete" for r in result.rows)
        assert result.table["t2_step"].notna().all()
        again = run_sweep(spec_factory(name="dask"), root=root, scheduler=cluster.scheduler_address)
    assert [r["action"] for r in again.rows] == ["skipped", "skipped"]
    assert sorted(StoreRoot(root).run_ids()) == sorted(r["run_id"] for r in result.rows)


def test_a_scheduler_that_is_no_address_is_one_user_error(tmp_path, spec_factory):
    """Found by a review: ``--scheduler garbage`` raised distributed's ValueError, then a 20-s TimeoutError from
    the failed Client's clean-up. It is refused before any Client exists; nothing is created."""
    pytest.importorskip("distributed")
    from trajscope.store import UserError

    with pytest.raises(UserError, match="'garbage' is not a scheduler address .* give HOST:PORT"):
        run_sweep(spec_factory(name="bad"), root=str(tmp_path / "runs"), scheduler="garbage")
    assert not (tmp_path / "runs").exists() or not StoreRoot(str(tmp_path / "runs")).run_ids()


def test_a_point_whose_name_holds_someone_elses_zarr_group_keeps_it(tmp_path):
    """A sweep restarts an empty husk of its own run, but a Zarr group that is no trajscope run under the
    point's id is reported as the point's error and left as it is (it used to be deleted as a husk)."""
    import zarr

    from trajscope.experiments.sweep import execute_point

    theirs = zarr.open_group(str(tmp_path / "p1.zarr"), mode="w", zarr_format=3)
    theirs.attrs["title"] = "not a run"
    row = execute_point({"name": "p1"}, "p1", str(tmp_path), summarize=False)
    assert row["action"] == "failed" and "not a trajscope run" in row["error"]
    assert zarr.open_group(str(tmp_path / "p1.zarr"), mode="r").attrs["title"] == "not a run"


def test_a_point_whose_run_cannot_be_read_is_unreadable_not_missing(tmp_path, tiny_base):
    """Found by a review: the row of a point whose run's document is damaged said status ``missing``."""
    import copy

    from trajscope.experiments.sweep import execute_point

    (tmp_path / "p1.zarr").mkdir()
    (tmp_path / "p1.zarr" / "zarr.json").write_text("{not json")
    row = execute_point(copy.deepcopy(tiny_base), "p1", str(tmp_path), summarize=False)
    assert row["action"] == "failed" and row["status"] == "unreadable", row
    assert (tmp_path / "p1.zarr" / "zarr.json").read_text() == "{not json"  # (left as it is)


def test_a_point_whose_id_holds_another_run_keeps_it_and_says_so(tmp_path, tiny_base):
    """Found by a review: a crashed ModuleRecorder run under a point's id (no producer config) was deleted as a husk
    and produced anew, and a run ``produce --name`` had made there with other settings was taken as the point's
    (skipped into the table with its numbers, or resumed)."""
    import copy

    import numpy as np
    import torch

    import trajscope
    from trajscope.experiments.sweep import execute_point
    from trajscope.producer import produce

    rec = trajscope.ModuleRecorder(torch.nn.Linear(3, 2), root=tmp_path, name="p1")
    for _ in range(40):
        rec.record()
    rec.recorder.close()  # (committed, its writer gone: as a killed script leaves it, `running`)
    rec.writer.lock.release()
    before = trajscope.open_run(tmp_path / "p1.zarr")["weight"].values
    row = execute_point(copy.deepcopy(tiny_base), "p1", str(tmp_path), summarize=False)
    assert row["action"] == "failed" and "not made by `trajscope produce`" in row["error"], row
    assert row["status"] == "another run", row
    np.testing.assert_array_equal(trajscope.open_run(tmp_path / "p1.zarr")["weight"].values, before)
    other = copy.deepcopy(tiny_base)
    other["data"]["n"] = 24
    produce(other, root=tmp_path, name="p2")
    for status in ("complete", "interrupted"):
        row = execute_point(copy.deepcopy(tiny_base), "p2", str(tmp_path), summarize=status == "complete")
        assert row["action"] == "failed" and "with another config than this sweep's point" in row["error"], row
        # (found by a review: the other run's `complete` was the row's status, its numbers the point's)
        assert row["status"] == "another run" and "t2_step" not in row, row
        StoreRoot(tmp_path).write_attrs("p2", {**StoreRoot(tmp_path).read_attrs("p2"), "status": "interrupted"})
    assert trajscope.open_run(tmp_path / "p2.zarr").sizes["sample"] == 24  # (not resumed as the point)


def test_a_sweep_that_finds_runs_busy_leaves_the_table_to_the_other_writer(tmp_path, spec_factory, python_env):
    """Found by a review: two sweeps of one spec at once, and the one that finished last (the one that found runs
    held by the other) overwrote ``<name>.sweep.csv`` with rows of NaN for them."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    spec = spec_factory(grid={"data.mu": [0.3]})
    point = expand(*load_sweep(spec))[0]
    holder = subprocess.Popen(  # another writer holds the sweep's one run
        [sys.executable, "-c", "import time; from trajscope.store import StoreRoot, WriterLock; "
         f"WriterLock(StoreRoot({str(root)!r}), {point.run_id!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=python_env)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_sweep(spec, root=str(root), workers=1)
        assert [r["action"] for r in result.rows] == ["busy"] and result.files == []
        assert not (root / "tiny.sweep.csv").exists()
        from trajscope.reproduce import reproduce  # (it writes the same table: found by the diff's review)

        with pytest.raises(UserError, match="1 run\\(s\\) are being written by another process .*: the report is not "
                                            "written"):  # (found by a review: written without them, its claims over
            reproduce(tmp_path / "report", root=str(root), workers=1, experiments={},  # fewer runs)
                      sweeps={"alignment_time": spec})
        assert not (root / "tiny.sweep.csv").exists() and not (tmp_path / "report").exists()
    finally:
        holder.kill()
        holder.wait()
    again = run_sweep(spec, root=str(root), workers=1)
    assert [r["action"] for r in again.rows] == ["produced"] and (root / "tiny.sweep.csv").exists()


def test_runs_found_busy_are_taken_again_at_the_end_so_the_last_sweep_writes_the_table(tmp_path, spec_factory,
                                                                                     python_env):
    """Found by a review: two sweeps of one spec started together each found runs the other was writing, and
    neither wrote the table (both exited 1, counting the other's runs as failed). Runs found busy are taken again
    once the sweep's own are done: finished (or free) by then, the table is written."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    spec = spec_factory(grid={"data.mu": [0.3, 0.2]})
    first = expand(*load_sweep(spec))[0]
    go = tmp_path / "go"
    holder = subprocess.Popen(  # another writer holds the first run until the sweep has found it busy
        [sys.executable, "-c", "import os, time; from trajscope.store import StoreRoot, WriterLock; "
         f"lock = WriterLock(StoreRoot({str(root)!r}), {first.run_id!r}).acquire(); print('held', flush=True)\n"
         f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\nlock.release()"],
        stdout=subprocess.PIPE, text=True, env=python_env)
    seen = []

    def progress(row, done, total):
        seen.append(row["action"])
        if row["run_id"] == first.run_id:
            go.touch()

    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_sweep(spec, root=str(root), workers=1, progress=progress)
    finally:
        go.touch()
        holder.wait(30)
    assert seen[0] == "busy"  # (really found busy first)
    assert sorted(r["action"] for r in result.rows) == ["produced", "produced"] and not result.busy
    assert result.files and (root / "tiny.sweep.csv").exists() and not result.failed


def _sweep_workers() -> list[int]:
    """This process's live worker processes of a local sweep (spawned: ``spawn_main`` in their command line)."""
    children = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            children += [int(pid) for pid in f.read().split()]
    workers = []
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(pid)
        except OSError:
            continue
    return workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the sweep's workers in /proc")
def test_a_killed_worker_loses_no_row_its_points_run_again(tmp_path, spec_factory):
    """Found by a review: SIGKILL of one worker (as the kernel's out-of-memory killer does) broke the process pool,
    and every row came back ``failed``, status ``unknown``, the table all NaN, finished runs included. The points the
    broken pool had not finished now run again in a fresh one: the killed run is resumed to the end."""
    import threading

    root = str(tmp_path / "runs")
    spec = spec_factory(points=[{"train.steps": 300}, {"train.steps": KILL_STEPS}], grid={"data.mu": [0.3]})
    points = expand(*load_sweep(spec))
    long_id = [p.run_id for p in points if p.config.train.steps == KILL_STEPS][0]
    killed = []

    def kill_the_long_points_worker():  # (one worker: it runs the short point, then the long one)
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            store_root = StoreRoot(root)
            if store_root.exists(long_id) and store_root.read_attrs(long_id).get("committed_steps", 0) > 0:
                for pid in _sweep_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(store_root.read_attrs(long_id))
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_long_points_worker, daemon=True)
    watcher.start()
    seen = []
    result = run_sweep(spec, root=root, workers=1, progress=lambda row, done, total: seen.append((done, total)))
    watcher.join(5)
    assert killed and killed[0]["status"] == "running", "the worker was not killed while it trained the long point"
    assert seen == [(1, 2), (2, 2)]  # (each point reported once)
    rows = {r["run_id"]: r for r in result.rows}
    assert rows[long_id]["action"] == "resumed" and rows[long_id]["status"] == "complete", rows[long_id]
    assert {r["status"] for r in result.rows} == {"complete"} and not result.failed
    resumed = StoreRoot(root).read_attrs(long_id)
    assert resumed["created"] == killed[0]["created"] and resumed["committed_steps"] == KILL_STEPS + 1
    table = pd.read_csv(os.path.join(root, "tiny.sweep.csv"))
    assert table["t2_step"].notna().all() and set(table["status"]) == {"complete"}


def test_a_point_whose_worker_dies_each_time_fails_alone_with_its_runs_status(tmp_path, spec_factory, monkeypatch):
    """A worker that dies every time (here: SIGKILL at each run's third chunk written, injected): after a fresh pool
    that finished nothing, each point runs in a worker of its own, and its row says the worker died, with the run's
    status as stored (not ``unknown``); the sweep ends. Run again without the fault, the runs are resumed."""
    root = str(tmp_path / "runs")
    spec = spec_factory(grid={"data.mu": [0.2, 0.3, 0.4]})  # (3 points, 2 workers: pools again after 2 alone)
    monkeypatch.setenv("TRAJSCOPE_FAULT", "write.chunk:kill:3")
    result = run_sweep(spec, root=root, workers=2)
    assert [r["action"] for r in result.rows] == ["failed"] * 3, result.rows
    assert all("worker process died" in r["error"] and r["status"] == "running" for r in result.rows), result.rows
    monkeypatch.delenv("TRAJSCOPE_FAULT")
    again = run_sweep(spec, root=root, workers=2)
    assert [r["action"] for r in again.rows] == ["resumed"] * 3 and not again.failed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the sweep's workers in /proc")
def test_an_idle_worker_killed_beside_a_training_one_lets_the_sweep_end(tmp_path, python_env):
    """Found by a review: SIGKILL of an idle worker left the queue lock it held taken, and the other worker, once it
    had ended its run ``interrupted`` on the broken pool's SIGTERM, waited for it for ever: the sweep printed its
    summary and never exited, and the worker outlived it. A broken pool's survivors are now ended (killed once no
    run of theirs is being written) before its points run again."""
    import yaml

    from tests.experiments.conftest import TINY_BASE, child_processes

    spec = tmp_path / "idle.yaml"
    spec.write_text(yaml.safe_dump({"name": "idle", "base": TINY_BASE, "grid": {"data.mu": [0.3]}, "seeds": [0],
                                    "points": [{"train.steps": 300}, {"train.steps": 3 * KILL_STEPS}]}))
    root = tmp_path / "runs"
    short, long = sorted(expand(*load_sweep(spec)), key=lambda p: p.config.train.steps)
    proc = subprocess.Popen([sys.executable, "-c", "from trajscope.cli import main; main()", "sweep", str(spec),
                             "--root", str(root), "--workers", "2"], env=python_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store_root, printed = StoreRoot(root), []
    try:
        while short.run_id not in "".join(printed):  # the short point's row is in: its worker waits for work
            printed.append(proc.stdout.readline())
            assert printed[-1] or proc.poll() is None, (printed, proc.communicate())
        time.sleep(1.0)
        assert store_root.read_attrs(long.run_id).get("status") == "running"
        lock = os.path.realpath(root / ".locks" / f"{long.run_id}.lock")
        workers = [pid for pid in child_processes(proc.pid) if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()]
        training = [pid for pid in workers if lock in _open_files(pid)]
        idle = [pid for pid in workers if pid not in training]
        assert len(training) == 1 and len(idle) == 1, (workers, training)
        os.kill(idle[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the sweep did not end within 120 s of its idle worker's death") from None
    assert proc.returncode == 0 and "2/2 runs complete" in out, (printed, out, err)
    assert store_root.read_attrs(long.run_id)["status"] == "complete"
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{training[0]}") or open(f"/proc/{training[0]}/stat").read().split()[2] == "Z"


def _open_files(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths


def test_an_error_of_the_progress_callback_stops_the_sweep_once(tmp_path, spec_factory):
    """Found by a review: a progress callback's error (printing to a closed pipe) was taken for the worker's: the
    row was reported twice, and the pool went on training its points before the error came out. Now it is raised
    once, and the point already under way ends ``interrupted`` (resumable), not trained to the end."""
    root = str(tmp_path / "runs")
    spec = spec_factory(points=[{"train.steps": 300}, {"train.steps": 3 * KILL_STEPS}], grid={"data.mu": [0.3]})
    long_id = [p.run_id for p in expand(*load_sweep(spec)) if p.config.train.steps == 3 * KILL_STEPS][0]
    calls = []

    def closed_pipe(row, done, total):
        calls.append(row["run_id"])
        time.sleep(1.0)  # (the queued long point has begun on the one worker)
        raise BrokenPipeError("progress printed to a closed pipe")

    started = time.monotonic()
    with pytest.raises(BrokenPipeError):
        run_sweep(spec, root=root, workers=1, progress=closed_pipe)
    assert len(calls) == 1 and time.monotonic() - started < 60
    assert StoreRoot(root).read_attrs(long_id)["status"] in ("interrupted", "running")


def test_a_run_deleted_or_replaced_during_the_sweep_is_not_counted_complete(tmp_path, spec_factory, tiny_base,
                                                                          capsys, monkeypatch):
    """Found by a review: a run deleted (``trajscope rm``) after its point finished, while the sweep went on, counted
    as complete in the summary and kept its numbers in the table. The rows of complete runs are checked against the
    store at the end: a run deleted is ``missing``, one made again under its id (another ``run_uid``) ``replaced``,
    both without the numbers; the command names them."""
    from trajscope.cli import main
    from trajscope.experiments import sweep as sweep_module
    from trajscope.experiments.sweep import still_stored
    from trajscope.producer import produce

    root = str(tmp_path / "runs")
    spec = spec_factory(grid={"data.mu": [0.2, 0.3, 0.4]})
    changed = {}

    def delete_one_replace_another(row, done, total):  # (one worker: the later points train after this)
        if done == 1:
            StoreRoot(root).delete(row["run_id"])
            changed["deleted"] = row["run_id"]
        elif done == 2:
            StoreRoot(root).delete(row["run_id"])
            produce({**tiny_base, "train": {"lr": 0.1, "steps": 50}}, root=root, name=row["run_id"])
            changed["replaced"] = row["run_id"]

    result = run_sweep(spec, root=root, workers=1, progress=delete_one_replace_another)
    rows = {r["run_id"]: r for r in result.rows}
    gone, other = rows[changed["deleted"]], rows[changed["replaced"]]
    assert gone["status"] == "missing" and "deleted after its point finished" in gone["error"], gone
    assert other["status"] == "replaced" and "another run of this id is there now (complete)" in other["error"], other
    assert "t2_step" not in gone and "t2_step" not in other and gone["action"] == "produced"
    assert sorted(r["run_id"] for r in result.failed) == sorted(changed.values()) == sorted(result.changed)
    kept = [r for r in result.rows if r["run_id"] not in changed.values()][0]
    assert kept["status"] == "complete" and kept["t2_step"] == kept["t2_step"]  # (its numbers kept)
    table = pd.read_csv(os.path.join(root, "tiny.sweep.csv")).set_index("run_id")
    assert table.loc[gone["run_id"], "status"] == "missing" and pd.isna(table.loc[gone["run_id"], "t2_step"])
    assert table.loc[other["run_id"], "status"] == "replaced" and pd.isna(table.loc[other["run_id"], "t2_step"])
    assert table.loc[kept["run_id"], "status"] == "complete" and pd.notna(table.loc[kept["run_id"], "t2_step"])
    assert table.loc[kept["run_id"], "run_uid"] == StoreRoot(root).read_attrs(kept["run_id"])["run_uid"]
    # a run not readable now (a store that did not answer) keeps its row: nothing says it changed
    StoreRoot(root).delete(kept["run_id"])
    (tmp_path / "runs" / f"{kept['run_id']}.zarr").mkdir()
    (tmp_path / "runs" / f"{kept['run_id']}.zarr" / "zarr.json").write_text("{not json")
    assert still_stored([kept], StoreRoot(root)) == ([kept], [])
    # the command names such a run and counts it out (exit 1): here deleted just before the check
    other_root = str(tmp_path / "other")

    def deleted_first(rows, store_root):
        StoreRoot(other_root).delete(rows[0]["run_id"])
        return still_stored(rows, store_root)

    monkeypatch.setattr(sweep_module, "still_stored", deleted_first)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(_spec_file(tmp_path, spec)), "--root", other_root, "--workers", "1"])
    out = capsys.readouterr().out
    first = expand(*load_sweep(spec))[0].run_id
    assert exit_.value.code == 1 and f"{first}: missing: its run was deleted after its point finished" in out, out
    assert "sweep tiny: 2/3 runs complete" in out, out


def test_a_failed_rows_run_made_again_meanwhile_is_told_replaced(tmp_path, tiny_base):
    """A point whose worker died after its run completed has a row without numbers, its run's status as stored
    (``complete``). It carries the run's ``run_uid`` too: a run made again under its id before the sweep's end is
    ``replaced``, not counted complete (it had none, and such a run passed as the point's)."""
    from trajscope.experiments.sweep import _failed_row, still_stored
    from trajscope.producer import produce

    root = str(tmp_path / "runs")
    run_id = produce({**tiny_base, "train": {"lr": 0.1, "steps": 20}}, root=root, name="p").run_id
    row = _failed_row(StoreRoot(root), run_id, "its worker process died")
    assert row["status"] == "complete" and row["run_uid"] == StoreRoot(root).read_attrs(run_id)["run_uid"]
    assert still_stored([row], StoreRoot(root)) == ([row], [])
    StoreRoot(root).delete(run_id)
    produce({**tiny_base, "train": {"lr": 0.1, "steps": 30}}, root=root, name=run_id)
    (checked,), changed = still_stored([row], StoreRoot(root))
    assert changed == [run_id] and checked["status"] == "replaced", checked
    assert checked["run_uid"] == StoreRoot(root).read_attrs(run_id)["run_uid"] != row["run_uid"]


def _spec_file(tmp_path, spec):
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_stop_during_a_broken_pools_wait_waits_no_longer_than_that_wait(tmp_path, monkeypatch):
    """Found by a review: a Ctrl-C while a broken pool's survivors were waited for (up to ``STOP_SECONDS``) stopped
    the sweep, whose stop then waited ``STOP_SECONDS`` more for the same stuck processes before killing them."""
    import concurrent.futures as cf
    import multiprocessing

    from trajscope.experiments import sweep
    from trajscope.store import locks

    def written_until_the_ctrl_c(store_root, run_id):  # (a lost run still written; the Ctrl-C half-way through the
        if time.monotonic() - started > 1.5:  # pool's wait, raised where the wait asks, as a signal's would be: a
            raise KeyboardInterrupt  # signal from a timer thread was dropped in CI, landing in some object's __del__)
        return True

    monkeypatch.setattr(sweep, "STOP_SECONDS", 3.0)
    monkeypatch.setattr(locks, "writer_holds", written_until_the_ctrl_c)
    stuck = multiprocessing.get_context("fork").Process(target=_deaf_to_sigterm, daemon=True)
    stuck.start()
    workers = sweep._Workers(cf.ThreadPoolExecutor(1), str(tmp_path / "stop"), processes=[stuck], broken=True)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep._end_pool(workers, StoreRoot(tmp_path / "runs"), ["lost"])
        interrupted = time.monotonic() - started
        sweep._stop_workers([workers])  # (what _pool_round does with its live pools on any exception)
        ended = time.monotonic() - started
    finally:
        if stuck.is_alive():
            stuck.kill()
    assert 1.0 < interrupted < 2.9 and not stuck.is_alive()
    assert ended < 3.0 + 1.0, f"the stop waited {ended - interrupted:.1f} s more after the Ctrl-C at {interrupted:.1f} s"


def _deaf_to_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
