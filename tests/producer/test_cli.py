"""The produce / ls / config commands end to end, as a user runs them."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from trajscope import open_run
from trajscope.producer import load_config
from trajscope.store.dataset_attrs import run_attr
from tests import cli_fork

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, env, check=True):
    proc = cli_fork.run(args, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_produce_then_ls(tmp_path, small_config, python_env):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config(train={"steps": 25})))
    root = tmp_path / "runs"
    out = run_cli("produce", str(config), "--root", str(root), "--name", "cli-run", "--set", "model.width=5",
                  env=python_env).stdout
    assert "cli-run" in out and "complete" in out and str(root / "cli-run.zarr") in out
    assert "store: the training loop waited" in out  # a small run on a local disk: never store-bound
    assert "the store set the pace" not in out
    ds = open_run("cli-run", root)
    assert ds.sizes["step"] == 26 and ds.sizes["neuron"] == 5 and ds.traj.config["model"]["width"] == 5
    listing = run_cli("ls", "--root", str(root), env=python_env).stdout
    assert "cli-run" in listing and "complete" in listing and "26/26" in listing
    again = run_cli("produce", str(config), "--root", str(root), "--name", "cli-run", env=python_env, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "open it: python -c" in out
    # found by a review: a memory:// run's "open it" line named a run no other process can open
    memory = run_cli("produce", str(config), "--root", "memory://cli/runs", "--name", "m", env=python_env).stdout
    assert "open it" not in memory and "lives in this process only" in memory


def test_config_command_prints_every_field(python_env):
    out = run_cli("config", str(REPO / "configs" / "quickstart.yaml"), "--set", "train.steps=7", env=python_env).stdout
    printed = yaml.safe_load(out)
    assert printed["train"]["steps"] == 7 and printed["name"] == "quickstart"
    assert set(printed) == {"name", "seed", "data", "model", "init", "loss", "train", "record"}
    assert load_config(printed).model_dump(mode="json") == printed


def test_the_readmes_config_paths_and_bare_names_work_from_any_folder(tmp_path, python_env):
    """Found by a review of the wheel: outside a checkout, ``trajscope produce configs/quickstart.yaml`` (the
    README's command) said the file was not found, though the configs are installed with the package."""
    def cli(*args, check=True, script=False):  # (``script``: the installed console script, not a forked process)
        if script:
            proc = subprocess.run(["trajscope", *args], capture_output=True, text=True, env=python_env, timeout=300,
                                  cwd=tmp_path)
        else:
            proc = cli_fork.run(args, env=python_env, timeout=300, cwd=tmp_path)
        assert (proc.returncode == 0) == check, proc.stderr
        return proc

    for name in ("configs/quickstart.yaml", "quickstart", "paper/toy_r2"):
        proc = cli("config", name)
        assert "using the packaged" in proc.stderr and yaml.safe_load(proc.stdout)["name"] == Path(name).stem
    ran = cli("produce", "quickstart", "--root", "runs", "--name", "q", "-q", "--set", "train.steps=3", script=True)
    assert "quickstart.yaml" in ran.stderr and open_run("q", tmp_path / "runs").sizes["step"] == 4
    missing = cli("produce", "nosuch", "--root", "runs", check=False)
    assert missing.returncode == 2 and "config file nosuch not found" in missing.stderr
    from trajscope.resources import configs_dir, packaged_config

    assert packaged_config(Path("epsilon"), "sweeps") == configs_dir() / "sweeps" / "epsilon.yaml"  # `sweep epsilon`
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")  # a file here wins over the packaged one
    proc = cli("config", "quickstart.yaml")
    assert yaml.safe_load(proc.stdout)["name"] == "mine" and "packaged" not in proc.stderr


def test_quickstart_config_is_valid_and_in_the_theorems_setting():
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    assert cfg.data.kind == "synthetic" and cfg.data.mu > 0
    assert cfg.init.kind == "balanced" and cfg.loss.reduction == "sum" and cfg.record.every == 1


def test_a_store_bound_run_says_so(tmp_path, small_config, monkeypatch):
    """A store slower than the training (every ``W`` chunk file takes 50 ms, one write thread, 2 buffers, about
    25 chunks): the run says how long its loop waited and what to change; the recorded trajectory is whole."""
    from trajscope.cli.produce import store_wait_line
    from trajscope.producer import produce
    from trajscope.store.chunkio import LocalSink

    put = LocalSink.put

    def slow_put(self, key, parts):
        if key.startswith("W/"):
            time.sleep(0.05)
        put(self, key, parts)

    monkeypatch.setattr(LocalSink, "put", slow_put)
    cfg = load_config(small_config(train={"steps": 120}, record={"chunk_mib": 0.001, "buffers": 2, "write_threads": 1}))
    result = produce(cfg, root=tmp_path, name="slow")
    assert result.committed_steps == 121 and open_run("slow", tmp_path).sizes["step"] == 121
    assert result.store_wait_seconds >= 0.5 and result.device_wait_seconds == 0.0
    line = store_wait_line(result)
    assert f"waited {result.store_wait_seconds:.2f} s" in line and "the store set the pace" in line
    # ... and the run keeps it (rounded to the microsecond)
    stored = run_attr(open_run("slow", tmp_path).attrs, "recording_waits")
    assert stored["store_seconds"] == pytest.approx(result.store_wait_seconds, abs=1e-6)
    assert stored["close_seconds"] == pytest.approx(result.store_close_seconds, abs=1e-6)
    assert stored["device_seconds"] == 0.0 and 0 < stored["seconds"] <= result.seconds
