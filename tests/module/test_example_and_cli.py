"""The example script runs end to end (synthetic digits), and `trajscope show`/`plot` handle module runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trajscope
from tests import cli_fork

REPO = Path(__file__).resolve().parents[2]


def test_example_records_both_models_and_plots(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "record_your_model.py"), "--synthetic",
                          "--steps", "6", "--samples", "32", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    for key in ("mlp", "cnn"):
        ds = trajscope.open_run(tmp_path / f"{key}-synthetic-6.zarr")
        assert ds.attrs["status"] == "complete" and ds.sizes["step"] == 7
        assert (tmp_path / f"{key}-synthetic-6-updates.png").stat().st_size > 1000
        assert np.isfinite(ds["loss"].values[1:]).all()
    assert "distance from init at the end" in out.stdout and "fc1.weight" in out.stdout


def test_show_and_plot_for_a_module_run(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    with torch.no_grad():
        model[1].bias.zero_()  # a parameter that starts at 0 (as a LayerNorm bias does)
    with trajscope.ModuleRecorder(model, root=tmp_path, name="seq") as rec:
        for _ in range(3):
            rec.record(loss=1.0)
            with torch.no_grad():
                model[0].weight.mul_(2.0)
                model[1].bias.add_(1.0)

    def cli(*args):
        return cli_fork.run([*args, "--root", str(tmp_path)])

    shown = cli("show", "seq")
    assert shown.returncode == 0, shown.stderr
    assert "0.weight" in shown.stdout and "module run" in shown.stdout and "distance_from_init" in shown.stdout
    bias = [line for line in shown.stdout.splitlines() if "1.bias" in line]
    assert bias and "θ(0) = 0" in bias[0] and "nan" not in bias[0]  # (it printed nan: found by a review)
    bad = cli("plot", "seq", "alignment", "-o", str(tmp_path / "a.png"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "needs the two-layer network" in bad.stderr
    good = cli("plot", "seq", "param_norms", "-o", str(tmp_path / "n.png"))
    assert good.returncode == 0 and (tmp_path / "n.png").stat().st_size > 1000


def test_resume_and_compare_of_module_runs(tmp_path):
    """Found by a review: ``trajscope resume`` of a module run raised KeyError after reopening it (left
    ``running``, its arrays grown), and ``compare`` of module runs raised KeyError after printing
    "config: identical"."""
    import torch

    for name, factor in (("m1", 2.0), ("m2", 1.5)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        first = model[0].weight.detach().clone()
        try:
            with trajscope.ModuleRecorder(model, root=tmp_path, name=name) as rec:
                for i in range(3):
                    rec.record(loss=float(i))
                    with torch.no_grad():
                        model[0].weight.mul_(factor)
                    if name == "m2" and i == 2:
                        raise KeyboardInterrupt  # m2 ends interrupted
        except KeyboardInterrupt:
            pass

    def cli(*args):
        return cli_fork.run([*args, "--root", str(tmp_path)])

    from trajscope.store import StoreRoot, describe_run

    # a module run's length is what it recorded (found by the same review: `ls` showed 3/8192, the API a
    # progress of 0.0004 for a complete run, and no final loss)
    info = describe_run("m1", tmp_path)
    assert (info.status, info.committed_steps, info.capacity) == ("complete", 3, 3)
    assert StoreRoot(tmp_path).read_attrs("m1")["final_loss"] == 2.0
    before = {p: p.read_bytes() for p in (tmp_path / "m2.zarr").rglob("*") if p.is_file()}
    resumed = cli("resume", "m2")
    assert resumed.returncode == 2 and len(resumed.stderr.strip().splitlines()) == 1, resumed.stderr
    assert "ModuleRecorder(..., resume=True)" in resumed.stderr and "nothing was changed" in resumed.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "m2.zarr").rglob("*") if p.is_file()} == before

    compared = cli("compare", "m1", "m2")
    assert compared.returncode == 0, compared.stderr
    assert "m1, m2 recorded from a script" in compared.stdout and "config: identical" not in compared.stdout
    distance = float(torch.linalg.norm(first * 2.0 ** 2 - first))  # the last recorded state is after 2 steps
    row = next(line for line in compared.stdout.splitlines() if "‖0.weight − 0.weight(0)‖" in line)
    assert f"{distance:.4g}" in row, (row, distance)
    states = next(line for line in compared.stdout.splitlines() if "recorded states" in line)  # (a review: none)
    assert [c.strip() for c in states.split("│")[2:4]] == [str(describe_run(m, tmp_path).committed_steps)
                                                            for m in ("m1", "m2")], states
    rows = json.loads(cli("compare", "m1", "m2", "--json").stdout)  # the numbers, unrounded (a review)
    assert rows[0]["values"]["distance_from_init"]["0.weight"] == pytest.approx(distance, rel=1e-6)
    assert rows[0]["values"]["loss_last"] == 2.0
    empty = cli("compare", "m1", "m2", "--step", "100:200")
    assert empty.returncode == 2 and "no recorded state in steps 100:200" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1 and not empty.stdout.strip()


def test_a_module_run_whose_loss_is_a_vector_closes_shows_and_compares(tmp_path):
    """Found by a review of the change that stores a module run's final loss: ``record(loss=<a vector>)`` made
    ``close()`` raise (the run left ``running``, locked), and ``compare`` print a traceback."""
    import torch

    for name in ("va", "vb"):
        with trajscope.ModuleRecorder(torch.nn.Linear(2, 1), root=tmp_path, name=name) as rec:
            for _ in range(3):
                rec.record(loss=torch.rand(4))
        ds = trajscope.open_run(tmp_path / f"{name}.zarr")
        assert ds.attrs["status"] == "complete" and ds["loss"].shape == (3, 4) and "final_loss" not in ds.attrs

    def cli(*args):
        return cli_fork.run([*args, "--root", str(tmp_path)])

    for args in (("show", "va"), ("compare", "va", "vb")):
        out = cli(*args)
        assert out.returncode == 0 and "weight" in out.stdout, (args, out.stderr)
