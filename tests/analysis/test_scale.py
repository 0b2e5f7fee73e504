"""Scale: bounded memory on a run several times bigger than the budget, dask.distributed, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trajscope.analysis.summary import summary, summary_rows
from tests import cli_fork

HERE = Path(__file__).parent

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json
    import trajscope
    from trajscope.analysis.summary import summary

    def status(key):  # kB values of /proc/self/status (VmHWM is this process's peak RSS)
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    ds = trajscope.open_run("big", root={root!r})
    ds.isel(step=0).W.values  # warm imports and the first read
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    base = status("VmRSS")
    s = summary(ds)
    peak = status("VmHWM")
    print(json.dumps({{"nbytes": ds["W"].nbytes, "base": base, "peak": peak, "states": int(s["n_states"]),
                       "stable_rank": float(s["stable_rank_final"])}}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
def test_summary_memory_is_bounded(tmp_path):
    """Summary over a 305 MiB run in a fresh process: peak RSS grows by less than a 120 MiB budget."""
    budget = 120 * 2**20
    sys.path.insert(0, str(HERE))
    from bigrun import write_big_run

    write_big_run(str(tmp_path), "big", steps=1600, h=100, D=500, chunk_mib=4)  # written in this process
    script = MEMORY_SCRIPT.format(root=str(tmp_path))  # analysed in a fresh one: its peak is the analysis
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["nbytes"] >= 2 * budget  # the run is several times the budget
    assert r["states"] == 1600 and np.isfinite(r["stable_rank"])
    assert r["peak"] - r["base"] < budget, (r["peak"] - r["base"]) / 2**20


def test_summary_under_distributed(real_run):
    distributed = pytest.importorskip("distributed")
    run = real_run.chunk({"step": 50})
    expected = summary(run)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl):
        got = summary(run)
    for name in ("t1_step", "t2_step", "stable_rank_final", "mu", "post_t2_slope", "max_balance_drift"):
        assert float(got[name]) == pytest.approx(float(expected[name]), nan_ok=True), name


def test_summary_on_real_run_matches_direct_numpy(real_run):
    s = summary(real_run)
    W = real_run["W"].values.astype(np.float64)
    assert float(s["stable_rank_final"]) == pytest.approx(
        np.linalg.norm(W[-1], "fro") ** 2 / np.linalg.norm(W[-1], 2) ** 2, rel=1e-6)
    assert float(s["loss_final"]) == pytest.approx(float(real_run["loss"][-1]))
    assert int(s["n_states"]) == real_run.sizes["step"]
    L = real_run["loss"].values
    first = real_run["step"].values[np.argmax(L <= 0.95 * L[0])] if (L <= 0.95 * L[0]).any() else np.nan
    assert float(s["t2_step"]) == pytest.approx(first, nan_ok=True)
    assert s["zeta1"].attrs["kind"] == "theory" and s["t1_step"].attrs["kind"] == "measured"
    rows = summary_rows(s)
    assert {"quantity", "measured", "theory", "unit", "note"} <= set(rows[0])
    assert any(r["quantity"] == "t1 alignment" and r["unit"] == "steps" for r in rows)


def _cli(*args, cwd=None):
    return cli_fork.run(args, timeout=120, cwd=cwd)


def test_cli_show_and_plot(real_root, real_run, tmp_path):
    out = _cli("show", "img", "--root", str(real_root))
    assert out.returncode == 0, out.stderr
    assert "t1 alignment" in out.stdout and "theory" in out.stdout
    t1 = summary(real_run)["t1_step"]
    assert str(int(t1)) in out.stdout
    png = tmp_path / "a.png"
    out = _cli("plot", "img", "alignment", "-o", str(png), "--root", str(real_root), "--step", "0:200:2")
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    for args, msg in ((("plot", "img", "nope", "-o", str(png)), "choose one of"),
                      (("plot", "img", "loss", "-o", str(tmp_path / "a.gif")), ".svg or .pdf"),
                      (("show", "img", "--step", "a:b"), "integers")):
        out = _cli(*args, "--root", str(real_root))
        assert out.returncode == 2 and msg in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
