"""Reading, analysing, plotting and serving work where torch cannot be imported (the light install)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np

from trajscope import open_run

from .conftest import BLOCK_TORCH, cli, first_answer, free_port

READ_WITHOUT_TORCH = BLOCK_TORCH + """
import json, trajscope
ds = trajscope.open_run(sys.argv[1], root=sys.argv[2])
out = {
    "stable_rank": float(ds.traj.stable_rank().isel(step=-1)),
    "spectral_sq": float(ds.traj.spectral_norm_sq().isel(step=-1)),
    "mu": float(ds.traj.mu()),
    "t2": float(ds.traj.summary()["t2_step"]),
    "torch": sorted(m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None),
}
print(json.dumps(out))
"""


def test_open_run_and_the_accessor_without_torch(tiny_root):
    proc = subprocess.run([sys.executable, "-c", READ_WITHOUT_TORCH, "a", str(tiny_root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["torch"] == []
    W = open_run("a", tiny_root)["W"].values[-1].astype(np.float64)  # independent numpy
    s = np.linalg.svd(W, compute_uv=False)
    assert np.isclose(got["stable_rank"], (s**2).sum() / s[0] ** 2, rtol=1e-5)
    assert np.isclose(got["spectral_sq"], s[0] ** 2, rtol=1e-5)
    assert np.isfinite(got["mu"]) and np.isfinite(got["t2"])


def test_show_and_plot_without_torch(tiny_root, tmp_path):
    shown = cli("show", "a", "--root", str(tiny_root), prelude=BLOCK_TORCH)
    assert shown.returncode == 0 and "stable rank" in shown.stdout.lower(), shown.stderr
    out = tmp_path / "loss.png"
    plotted = cli("plot", "a", "loss", "-o", str(out), "--root", str(tiny_root), prelude=BLOCK_TORCH)
    assert plotted.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plotted.stderr


def test_serve_without_torch(tiny_root):
    port = free_port()
    code = BLOCK_TORCH + "from trajscope.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--root", str(tiny_root), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    try:
        health = first_answer(f"http://127.0.0.1:{port}/health", proc)
        assert health.status_code == 200 and health.json()["root"] in (str(tiny_root), tiny_root.name)
        runs = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=30).json()
        assert {r["run_id"] for r in runs["runs"]} == {"a", "b"}
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode is not None


def test_produce_without_torch_says_which_extra_to_install(tmp_path, small_config):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small_config()))
    one_line = ["trajscope: error: recording needs torch, which is not installed: pip install 'trajscope[producer]' "
                "(reading, analysis and serving do not need it)"]
    proc = cli("produce", str(config), "--root", str(tmp_path / "runs"), prelude=BLOCK_TORCH)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == one_line
    # a packaged sweep spec: that line alone (found by a review: where the spec was found came first)
    proc = cli("sweep", "epsilon", "--root", str(tmp_path / "runs"), prelude=BLOCK_TORCH)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == one_line, proc.stderr


def test_the_reader_install_brings_what_the_remote_route_needs():
    """Found by a review: on a plain ``pip install -e .`` the README's remote route (``xr.open_zarr("http://…")``,
    the notebook's last cell) failed with an ImportError: fsspec's HTTP file system needs aiohttp, which only
    the s3 extra happened to bring. The core requirements (no extra) must name it."""
    from importlib import metadata

    from packaging.requirements import Requirement

    core = [Requirement(r) for r in metadata.requires("trajscope") or [] if "extra ==" not in r]
    fsspec = [r for r in core if r.name == "fsspec"]
    assert fsspec and "http" in fsspec[0].extras, [str(r) for r in core]
    assert "aiohttp" in {r.name for r in map(Requirement, metadata.requires("fsspec") or [])
                         if r.marker is None or r.marker.evaluate({"extra": "http"})}
