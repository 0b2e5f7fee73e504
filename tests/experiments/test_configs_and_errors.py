"""Paper configs validate (and the small ones run), the two-point data kind, one-line sweep errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.experiments.conftest import child_processes
from trajscope.producer import load_config, produce
from trajscope.producer.data import build_dataset
from trajscope.experiments.sweep import expand, load_sweep
from trajscope.store import open_run
from trajscope.store.errors import UserError
from tests import cli_fork

REPO = Path(__file__).resolve().parents[2]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def test_the_paper_set_is_complete():
    names = {p.stem for p in PAPER}
    assert {"fig5_mnist01", "mnist38", "mnist17", "mnist01_sgd", "mnist01_w_only", "mnist01_balanced", "toy_r2",
            "two_point_0p1", "two_point_0p001", "two_point_orthogonal"} <= names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_validates_and_states_the_paper(path, tmp_path):
    config = load_config(path)
    assert config.name == path.stem
    assert any(line.startswith("# paper") for line in path.read_text().splitlines()), "say what the paper reports"
    if config.data.kind == "mnist":
        assert config.model.width == 50 and config.train.lr == 2e-3 and config.train.steps == 15000
        assert config.loss.reduction == "mean" and config.data.center
        return
    produce(config, root=tmp_path, name="few", overrides=["train.steps=5"])
    ds = open_run("few", tmp_path)
    assert ds.attrs["status"] == "complete" and ds.sizes["step"] == 6


def test_fig5_is_the_papers_setting():
    c = load_config(REPO / "configs" / "paper" / "fig5_mnist01.yaml")
    assert (c.data.digits, c.init.kind, c.init.scale, c.loss.kind, c.train.batch_size, c.train.train_v) == \
        ((0, 1), "gaussian", 1e-6, "exp", None, True)
    assert load_config(REPO / "configs" / "paper" / "mnist01_sgd.yaml").train.batch_size == 2000
    assert load_config(REPO / "configs" / "paper" / "mnist01_w_only.yaml").train.train_v is False
    assert load_config(REPO / "configs" / "paper" / "mnist01_balanced.yaml").init.kind == "balanced"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_specs_expand(path):
    spec, folder = load_sweep(path)
    full, quick = expand(spec, folder), expand(spec, folder, quick=True)
    assert len(quick) < len(full) and len({p.run_id for p in full}) == len(full)


@pytest.mark.parametrize("angle", [0.1, 0.001, 0.0])
def test_two_point_data_has_mu_sin_angle(angle):
    X, y, info = build_dataset(load_config({"data": {"kind": "two_point", "angle": angle, "dim": 3, "norms": [1, 2]}}))
    assert X.shape == (2, 3) and list(y) == [1, -1]
    z = y[:, None] * X
    cos = z[0] @ z[1] / (np.linalg.norm(z[0]) * np.linalg.norm(z[1]))
    assert math.isclose(cos, math.sin(angle), abs_tol=1e-12)
    assert math.isclose(info["mu"], math.sin(angle), abs_tol=1e-6)
    assert np.allclose(np.linalg.norm(X, axis=1), [1, 2])


def test_two_point_rejects_bad_norms():
    with pytest.raises(UserError, match="norms"):
        load_config({"data": {"kind": "two_point", "norms": [1, 0]}})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"data.nn": [1, 2]}}, "data.nn"),
        ({"grid": {"data.mu": []}}, "grid.data.mu is empty"),
        ({"grids": {}}, "unknown field"),
        ({"name": "bad name!"}, "name: 'bad name!' cannot name a sweep: use 1-64 characters from A-Z a-z 0-9 . _ -"),
        ({"grid": {"data.n": [1]}}, "data.n"),
        ({"seeds": []}, "seeds is empty"),
        ({"base": "no-such-config.yaml"}, "not found"),
        # found by a review: the grid's value silently replaced the point's, names made identical runs twice,
        # a 10^6 grid took minutes and GBs before a word, and quick's unknown field listed the top level's
        ({"points": [{"data.mu": 0.1}], "grid": {"data.mu": [0.2]}}, "data.mu is in both points and grid"),
        ({"grid": {"name": ["x", "y"]}}, "`name` cannot be set or varied"),
        ({"grid": {"data.mu": [0.1] * 101, "data.n": [8] * 100}}, "10100 runs, over the limit of 10000"),
        ({"quick": {"grids": {}}}, "quick.grids: unknown field (known: set, grid, points, seeds)"),
    ],
)
def test_spec_mistakes_are_one_line_user_errors(spec_factory, change, message):
    with pytest.raises(UserError) as info:
        spec, folder = load_sweep(spec_factory(**change))
        expand(spec, folder)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_sweep_errors_are_one_line(tmp_path, python_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [1, 2\n")
    for args in (["sweep", str(bad)], ["sweep", str(tmp_path / "missing.yaml")]):
        proc = cli_fork.run(args, env=python_env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trajscope: error: ")


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGKILL, False),
                                        (signal.SIGINT, True), (signal.SIGHUP, True)],
                         ids=["int", "term", "kill", "int-to-the-group", "hup-to-the-group"])
def test_a_stopped_sweep_starts_no_more_runs_and_leaves_no_worker(tmp_path, python_env, sig, group):
    """Found by a review: after Ctrl-C a sweep went on with every queued point, and after SIGTERM its workers
    waited for work forever. The signal goes to the sweep's process alone (``timeout`` sends SIGTERM so): no
    queued point starts, the running ones end ``interrupted`` (resumable), every worker exits. Killed outright
    (SIGKILL), the sweep takes its workers with it (Linux: they are SIGTERMed when their parent dies).
    ``int-to-the-group`` is a terminal's Ctrl-C, which reaches the workers too (found by a later review: the
    sweep's own SIGTERM then came as a second Ctrl-C and left a run ``running``); ``hup-to-the-group`` a closed
    terminal (it killed multiprocessing's resource tracker, whose tracebacks the sweep printed)."""
    spec = tmp_path / "long.yaml"
    spec.write_text("name: long\nbase: {data: {kind: synthetic, n: 16, dim: 5}, model: {width: 4}, "
                    "train: {steps: 200000}, record: {chunk_mib: 0.002}}\ngrid: {data.n: [8, 16, 24, 32, 40, 48]}\n")
    root = tmp_path / "runs"
    # (a terminal's Ctrl-C: each chunk write slow, so that the sweep's SIGTERM lands while the workers end their runs)
    env = {**python_env, "TRAJSCOPE_FAULT": "write.chunk:sleep:1"} if group else python_env
    proc = subprocess.Popen([sys.executable, "-c", "from trajscope.cli import main; main()", "sweep", str(spec),
                             "--root", str(root), "--workers", "2"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group)
    deadline = time.monotonic() + 120
    while len(list(root.glob("*.zarr"))) < 2:  # two runs under way
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    workers = child_processes(proc.pid)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the sweep did not stop within 60 s")
    assert proc.returncode != 0 and "Traceback" not in err, err
    if sig != signal.SIGKILL:  # (found by a review: it exited 130 saying nothing)
        assert "interrupted: the runs that were training end `interrupted`; run the same command" in err, err

    def running(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 30  # (a worker ends its run first: its last commit, the final document)
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker was left running"
        time.sleep(0.2)
    runs = sorted(root.glob("*.zarr"))
    assert 2 <= len(runs) < 6  # the queued points never started
    from trajscope.store import StoreRoot

    store = StoreRoot(root)
    for run in runs:
        # (a SIGKILL can leave a run `running`, a resumable state, when its worker's SIGTERM came before training)
        assert store.read_attrs(run.name[:-5])["status"] in ("interrupted", "complete", "creating") + (
            ("running",) if sig == signal.SIGKILL else ())


def test_the_base_seed_is_the_sweeps_seed_unless_seeds_is_given(spec_factory, tiny_base):
    """Found by a review: a ``seed`` in the base config was replaced by the default ``seeds: [0]``."""
    spec = spec_factory(base={**tiny_base, "seed": 7})
    del spec["seeds"]
    assert {p.config.seed for p in expand(*load_sweep(spec))} == {7}
    assert {p.config.seed for p in expand(*load_sweep({**spec, "seeds": [1, 2]}))} == {1, 2}
    assert {p.config.seed for p in expand(*load_sweep(spec_factory()))} == {0}


def test_quick_without_a_quick_section_and_reproduce_with_no_workers_leave_nothing(tmp_path, spec_factory):
    """Found by a review: ``sweep --quick`` of a spec without ``quick:`` ran the full sweep, and ``reproduce
    --workers 0`` refused only after making an empty report folder."""
    from trajscope.experiments.sweep import run_sweep
    from trajscope.reproduce import reproduce

    with pytest.raises(UserError, match="has no quick: section, so --quick would run the full sweep"):
        run_sweep(spec_factory(), root=tmp_path / "runs", quick=True)
    with pytest.raises(UserError, match="--workers 0"):
        reproduce(tmp_path / "report", root=tmp_path / "runs", quick=True, workers=0,
                  experiments={}, sweeps={"at": spec_factory()})
    assert not (tmp_path / "report").exists() and not (tmp_path / "runs").exists()
    run = tmp_path / "elsewhere" / "a.zarr"  # found by a review: a report folder inside a run had its figures
    run.mkdir(parents=True)  # refused one by one, after all the training, and its REPORT.md written there
    (run / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(UserError, match="inside the Zarr store"):
        reproduce(run / "report", root=tmp_path / "runs", quick=True, experiments={}, sweeps={"at": spec_factory()})
    assert sorted(p.name for p in run.iterdir()) == ["zarr.json"] and not (tmp_path / "runs").exists()



def test_a_folder_in_the_tables_way_is_said_before_any_training(tmp_path, spec_factory):
    """Found by a review: the one-line error came after all the runs had trained."""
    from trajscope.experiments.sweep import run_sweep
    from trajscope.reproduce import reproduce

    root = tmp_path / "runs"
    (root / "tiny.sweep.csv").mkdir(parents=True)
    with pytest.raises(UserError, match="tiny.sweep.csv: a folder of that name is in the way"):
        run_sweep(spec_factory(), root=root, workers=1)
    with pytest.raises(UserError, match="tiny.sweep.csv: a folder of that name is in the way"):
        reproduce(tmp_path / "report", root=root, workers=1, experiments={}, sweeps={"alignment_time": spec_factory()})
    assert sorted(p.name for p in root.iterdir()) == ["tiny.sweep.csv"] and not (tmp_path / "report").exists()


def test_reproduce_stopped_by_a_missing_torch_leaves_no_report_folder(tmp_path, spec_factory, monkeypatch):
    """Found by a review of the light install: ``reproduce`` without torch said so in one line, but left an empty
    ``report/figures/`` behind (only a UserError removed the folders it had made). ``run_points`` fails here as
    it does where ``import torch`` fails (the CLI turns that ImportError into its one line)."""
    from trajscope.reproduce import reproduce

    def without_torch(*args, **kwargs):
        raise ImportError("No module named 'torch'", name="torch")

    monkeypatch.setattr("trajscope.reproduce.run_points", without_torch)
    (tmp_path / "kept").mkdir()  # a report folder that was there before is left alone
    for out, left in [(tmp_path / "report", False), (tmp_path / "kept", True)]:
        with pytest.raises(ImportError, match="torch"):
            reproduce(out, root=tmp_path / "runs", quick=True, experiments={}, sweeps={"at": spec_factory()})
        assert out.exists() == left and not (out / "figures").exists()
