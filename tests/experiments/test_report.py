"""The reproduction report on a tiny configuration: tables present, every claim row filled."""

from __future__ import annotations

import re

import pytest

from trajscope.reproduce import reproduce

CLAIMS = (
    "Alignment before the loss falls (Fig. 5 setting)",
    "Alignment before the loss falls (synthetic",
    "t1 scales as log n",
    "t2 grows linearly with log(1/ε)",
    "O(1/t)",
    "Final stable rank within the theorem's bound",
    "Final mean-neuron alignment on 0 vs 1",
    "Two phases when both layers train",
)


def _claim_rows(text: str) -> list[list[str]]:
    section = text.split("## Claims", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]


def _tiny(tiny_base, **changes):
    config = {k: dict(v) for k, v in tiny_base.items()}
    for key, value in changes.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, tiny_base, spec_factory):
    TINY_BASE, tiny_spec = tiny_base, spec_factory
    tmp = tmp_path_factory.mktemp("report")
    experiments = {
        "fig5": _tiny(TINY_BASE, **{"init.kind": "gaussian", "init.scale": 1e-4, "train.steps": 600}),
        "w_only": _tiny(TINY_BASE, **{"init.kind": "gaussian", "init.scale": 1e-4, "train.train_v": False,
                                      "train.steps": 600}),
        "toy_r2": {"data": {"kind": "toy2d", "n": 10}, "model": {"width": 6}, "init": {"scale": 1e-3},
                   "train": {"lr": 0.05, "steps": 200}, "record": {"chunk_mib": 0.002}},
    }
    sweeps = {
        "alignment_time": tiny_spec("at", grid={"data.n": [10, 30], "data.mu": [0.2, 0.5]}),
        "epsilon": tiny_spec("eps", grid={"init.scale": [1e-2, 1e-4, 1e-6]}, set={"train.steps": 400}),
    }
    path = reproduce(tmp / "report", root=tmp / "runs", quick=True, workers=2, experiments=experiments,
                     sweeps=sweeps)
    return path, tmp, experiments, sweeps


def test_report_has_every_claim_filled(tiny_report):
    path, _, _, _ = tiny_report
    text = path.read_text()
    assert "Quick mode" in text and "Runtime:" in text
    assert "| claim | paper | measured | rule | verdict |" in text
    rows = _claim_rows(text)
    for claim in CLAIMS:
        assert any(claim in row[0] for row in rows), f"claim missing: {claim}"
    for claim, paper, measured, rule, verdict in rows:
        assert paper and measured, claim
        assert verdict in ("holds", "fails", "not applicable"), claim
        assert re.search(r"\d", measured) or measured.startswith("not applicable"), (claim, measured)
        assert re.search(r"holds iff", rule), (claim, rule)  # the rule is written out, not only the verdict
        if measured.startswith("not applicable"):
            assert verdict == "not applicable", claim
    # every claim of this configuration has what it needs: none is "not applicable"
    assert all(row[4] != "not applicable" for row in rows), rows
    rate = next(row for row in rows if "O(1/t)" in row[0])
    assert "L(t2)/(L(t2)·α·(t − t2) + 1)" in rate[3] and "μ > 0" in rate[3]
    assert "applicable runs stay under the envelope" in rate[2] and "a description, not the test" in rate[2]
    assert "w_only" in rate[2] and "v is fixed" in rate[2]  # W-only: not applicable, with the reason
    assert "## Experiments" in text and "## Sweep `alignment_time`" in text and "## Sweep `epsilon`" in text
    assert (path.parent / "alignment_time.csv").exists() and (path.parent / "figures" / "fig5_loss.png").exists()
    assert "![" in text


def test_report_reuses_runs_and_marks_missing_claims(tiny_report):
    path, tmp, experiments, sweeps = tiny_report
    created = {p.parent.name: p.stat().st_mtime for p in (tmp / "runs").glob("*.zarr/zarr.json")}
    # without the sweeps and the W-only run: those claims become "not applicable"; runs are reused
    again = reproduce(tmp / "report2", root=tmp / "runs", quick=True, workers=1,
                      experiments={"fig5": experiments["fig5"]}, sweeps={})
    text = again.read_text()
    rows = {row[0]: row for row in _claim_rows(text)}
    assert rows["Two phases when both layers train, none when only W trains"][4] == "not applicable"
    assert rows["t1 scales as log n / √μ (an upper bound)"][2].startswith("not applicable")
    assert rows["Final mean-neuron alignment on 0 vs 1"][4] in ("holds", "fails")
    assert "1 skipped" in text
    fig5_meta = [n for n in created if n.startswith("paper-fig5-quick")][0]
    assert (tmp / "runs" / fig5_meta / "zarr.json").stat().st_mtime == created[fig5_meta]


def test_a_run_deleted_while_reproduce_runs_gives_the_report_no_numbers(tiny_report, tmp_path, monkeypatch):
    """A run deleted after its point finished (``trajscope rm`` from another shell while reproduce trains the rest)
    must not reach the report: its experiment row says ``missing`` with the reason, and its claims turn "not
    applicable" instead of failing to open the run (``still_stored`` in :func:`reproduce`)."""
    import shutil

    from trajscope import reproduce as reproduce_module
    from trajscope.store import StoreRoot

    _, tmp, experiments, _ = tiny_report
    root = tmp_path / "runs"
    shutil.copytree(tmp / "runs", root)  # (the module's runs stay as the other tests expect them)
    real_run_points = reproduce_module.run_points
    deleted = []

    def then_deleted(points, **kwargs):
        rows = real_run_points(points, **kwargs)
        fig5 = next(row["run_id"] for row in rows if row["run_id"].startswith("paper-fig5-quick"))
        StoreRoot(str(root)).delete(fig5)
        deleted.append(fig5)
        return rows

    monkeypatch.setattr(reproduce_module, "run_points", then_deleted)
    path = reproduce(tmp_path / "report", root=root, quick=True, workers=1,
                     experiments={"fig5": experiments["fig5"], "w_only": experiments["w_only"]}, sweeps={})
    text = path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| fig5 |"))
    assert deleted[0] in row and "| missing its run was deleted after its point finished" in row, row
    claims = {claim[0]: claim for claim in _claim_rows(text)}
    fig5_claim = claims["Alignment before the loss falls (Fig. 5 setting)"]
    assert fig5_claim[4] == "not applicable", fig5_claim
    w_only = next(line for line in text.splitlines() if line.startswith("| w_only |"))
    assert "| complete |" in w_only, w_only  # (the run still there keeps its numbers)
    assert not (tmp_path / "report" / "figures" / "fig5_loss.png").exists()
