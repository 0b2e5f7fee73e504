"""The example script runs end to end (synthetic digits), and `trajscope show`/`plot` handle module runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import trajscope

REPO = Path(__file__).resolve().parents[2]


def test_example_records_both_models_and_plots(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples" / "record_your_model.py"), "--synthetic",
                          "--steps", "6", "--samples", "32", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    for key in ("mlp", "cnn"):
        ds = trajscope.open_run(tmp_path / f"{key}-mnist-6.zarr")
        assert ds.attrs["status"] == "complete" and ds.sizes["step"] == 7
        assert (tmp_path / f"{key}-mnist-6-updates.png").stat().st_size > 1000
        assert np.isfinite(ds["loss"].values[1:]).all()
    assert "distance from init at the end" in out.stdout and "fc1.weight" in out.stdout


def test_show_and_plot_for_a_module_run(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    with trajscope.ModuleRecorder(model, root=tmp_path, name="seq") as rec:
        for _ in range(3):
            rec.record(loss=1.0)
            with torch.no_grad():
                model[0].weight.mul_(2.0)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "trajscope", *args, "--root", str(tmp_path)],
                              capture_output=True, text=True, timeout=300)

    shown = cli("show", "seq")
    assert shown.returncode == 0, shown.stderr
    assert "0.weight" in shown.stdout and "module run" in shown.stdout and "distance_from_init" in shown.stdout
    bad = cli("plot", "seq", "alignment", "-o", str(tmp_path / "a.png"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "two_layer" in bad.stderr
    good = cli("plot", "seq", "param_norms", "-o", str(tmp_path / "n.png"))
    assert good.returncode == 0 and (tmp_path / "n.png").stat().st_size > 1000
