"""A non-editable install (what `pip install trajscope` gives) ships the ready configs `reproduce` needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys, trajscope
from pathlib import Path
from trajscope.producer import load_config
from trajscope.experiments.sweep import expand, load_sweep
from trajscope.reproduce import CONFIGS, EXPERIMENTS
assert Path(trajscope.__file__).is_relative_to(sys.argv[1]), trajscope.__file__
assert CONFIGS.is_relative_to(sys.argv[1]), CONFIGS
configs = [load_config(CONFIGS / "paper" / name) for name in EXPERIMENTS.values()]
specs = [expand(*load_sweep(path)) for path in sorted((CONFIGS / "sweeps").glob("*.yaml"))]
print(len(configs), len(specs), load_config(CONFIGS / "quickstart.yaml").name)
"""


def test_a_wheel_install_carries_the_configs(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "report", "build", "*.egg-info", "__pycache__", "*.zarr", ".pytest_cache"))
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", CHECK, str(target)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    n_configs, n_specs, name = proc.stdout.split()
    assert int(n_configs) == len(list((REPO / "configs" / "paper").glob("*.yaml")))
    assert int(n_specs) == len(list((REPO / "configs" / "sweeps").glob("*.yaml"))) and name == "quickstart"
