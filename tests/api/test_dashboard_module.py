"""The dashboard on any-model runs (recorded with ``trajscope.ModuleRecorder``), the neuron view on rows
of any matrix parameter, a live comparison and the client's own min–max downsampling, in Debian's
headless Chromium. Chart contents are read from the uPlot instances and checked against numpy."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import trajscope
from trajscope.analysis.downsample import minmax_downsample
from trajscope.store import StoreRoot

from tests.api.dashboard_browser import (  # noqa: F401  (fixtures)
    CHROMIUM, DATA, LABELS, artifacts, browser, commit, loaded, only_local, page,
)
from tests.module.models import record_training

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
STEPS = 20


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 2)
        self.fc2 = torch.nn.Linear(2, 4)  # rows of two entries: followed in the plane too
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@pytest.fixture(scope="module")
def module_root(tmp_path_factory) -> StoreRoot:
    """``noloss``: a module run that records its parameters only; ``mlp``: one that records its loss."""
    root = StoreRoot(tmp_path_factory.mktemp("dashmod"))
    torch.manual_seed(2)
    x, y = torch.randn(24, 5), torch.randint(0, 2, (24,))
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with trajscope.ModuleRecorder(model, root=root, name="noloss") as rec:
        rec.record()
        for _ in range(STEPS):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.record()
    record_training(Net(), x, y, 8, root=root, name="mlp", lr=0.3)
    return root


@pytest.fixture(scope="module")
def module_server(module_root, serve):
    with serve(module_root) as srv:
        yield srv


def _angles(P: np.ndarray) -> np.ndarray:
    P = P.astype(np.float64)
    cos = (P * P[:1]).sum(-1) / np.linalg.norm(P, axis=-1) / np.linalg.norm(P[:1], axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _by_label(page, chart: str, data: dict) -> dict[str, np.ndarray]:
    labels = page.evaluate(LABELS, chart)
    return {lab: np.array([np.nan if v is None else v for v in s], dtype=float)
            for lab, s in zip(labels, data[chart][1:])}


def test_run_list_asks_the_loss_only_of_runs_that_record_one(module_server, module_root, page):
    page.goto(module_server.url + "/")
    page.wait_for_selector("#runs tr[data-run=noloss]")
    page.wait_for_function("list.finalLoss.has('noloss') && list.finalLoss.has('mlp')", timeout=30_000)
    page.wait_for_function("document.querySelector('#runs tr[data-run=mlp] .final-loss').textContent !== '–'")
    assert page.inner_text("#runs tr[data-run=noloss] .final-loss") == "–"
    final = float(page.inner_text("#runs tr[data-run=mlp] .final-loss"))
    assert final == pytest.approx(float(trajscope.open_run("mlp", module_root)["loss"].values[-1]), rel=1e-3)
    asked = [u for u in page.requests if "/series" in u]
    # an ended run's final loss comes with the listing (found by a review: two requests a run, 77 s for the first
    # load of 974 runs); one that records none is asked what it records, once
    assert not any("/runs/mlp/series" in u for u in asked), asked
    assert not any("/runs/noloss/series/loss" in u for u in asked) and any("/runs/noloss/series" in u for u in asked)
    only_local(page, module_server.url)
    assert page.errors == []


def test_module_run_page_draws_per_parameter_norms_and_update_norms(module_server, module_root, page, tmp_path):
    ds = trajscope.open_run("noloss", module_root)
    params = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    assert sorted(ds.data_vars) == sorted(params)
    page.goto(f"{module_server.url}/#/run/noloss")
    loaded(page)
    data = page.evaluate(DATA)
    assert "loss" not in data and "alignment" not in data  # only what applies to the run
    steps = list(range(1, STEPS + 1))  # log time: step 0 is not drawn
    expect = {"frobenius_norms": len(params) + 1, "update_norms": len(params) + 1, "distance_from_init": len(params) + 1,
              "spectral_norms": len(params), "param_stable_ranks": 3}
    for chart, nseries in expect.items():
        assert len(data[chart]) == 1 + nseries, chart
        assert data[chart][0] == steps, chart
    flat = {n: ds[n].values.astype(np.float64).reshape(STEPS + 1, -1) for n in params}
    fro = _by_label(page, "frobenius_norms", data)
    upd = _by_label(page, "update_norms", data)
    dist = _by_label(page, "distance_from_init", data)
    for n in params:
        np.testing.assert_allclose(fro[n], np.linalg.norm(flat[n], axis=1)[1:], rtol=1e-9)
        np.testing.assert_allclose(upd[n], np.linalg.norm(np.diff(flat[n], axis=0), axis=1), rtol=1e-9)
        np.testing.assert_allclose(dist[n], np.linalg.norm(flat[n] - flat[n][0], axis=1)[1:], rtol=1e-9)
    total = np.sqrt(sum(np.linalg.norm(np.diff(flat[n], axis=0), axis=1) ** 2 for n in params))
    np.testing.assert_allclose(upd["(all)"], total, rtol=1e-9)
    spec = _by_label(page, "spectral_norms", data)
    np.testing.assert_allclose(spec["fc2.weight"], np.linalg.norm(ds["fc2.weight"].values.astype(np.float64), ord=2,
                                                                  axis=(1, 2))[1:], rtol=1e-9)
    # the summary box shows the per-parameter summary (found by a review: it stayed empty for such a run)
    page.click("#summary-box > summary")
    page.wait_for_selector("#summary tbody tr", timeout=60_000)
    cells = page.eval_on_selector_all("#summary tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    shown = {row[0]: row[1] for row in cells}
    final = float(np.linalg.norm(flat["fc1.weight"][-1] - flat["fc1.weight"][0]))
    assert float(shown["distance_from_init[fc1.weight]"]) == pytest.approx(final, rel=1e-3), shown

    # the neuron view follows rows of the first matrix parameter, then of any other one picked
    assert page.input_value("#row-param") == "fc1.weight"
    W1 = ds["fc1.weight"].values
    np.testing.assert_allclose(np.array(data["neurons"][1:]).T, _angles(W1)[1:], atol=1e-6)
    assert page.evaluate(LABELS, "neurons") == ["row 0", "row 1"]
    page.select_option("#row-param", "fc2.weight")
    modes = page.eval_on_selector_all("#angle-mode option", "os => os.map(o => o.value)")
    assert modes == ["to_init", "polar"]
    page.fill("#neurons", "1,3")
    page.select_option("#angle-mode", "polar")
    page.click("#apply-neurons")
    loaded(page, 2)
    data = page.evaluate(DATA)
    W2 = ds["fc2.weight"].values.astype(np.float64)
    np.testing.assert_allclose(np.array(data["neurons"][1:]).T, np.degrees(np.arctan2(W2[1:, [1, 3], 1], W2[1:, [1, 3], 0])),
                               atol=1e-6)
    assert page.evaluate(LABELS, "neurons") == ["row 1", "row 3"]
    assert "fc2.weight" in page.inner_text("#chart-neurons h3")
    page.screenshot(path=str(artifacts(tmp_path) / "module-run.png"), full_page=True)
    only_local(page, module_server.url)
    assert page.errors == []


def test_compare_page_follows_running_runs_without_reload(tmp_path, write_run, serve, page):
    root = StoreRoot(tmp_path / "runs")
    done = write_run(root, "ref", steps=24, chunk_steps=8)
    grow = write_run(root, "grow", steps=32, chunk_steps=8, finish=None, commit_to=8, seed=4)
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/compare/ref,grow")
        loaded(page)
        page.evaluate("window.__sameDocument = true")
        assert page.evaluate("window.trajscope.charts['cmp-loss'].u.data[0]") == list(range(1, 24))
        assert page.evaluate("window.trajscope.charts['cmp-loss'].u.data[2][7]") is None  # grow: 8 states so far
        commit(root, "grow", 24)
        page.wait_for_function("window.trajscope.charts['cmp-loss'].u.data[2][22] !== null", timeout=30_000)
        assert page.evaluate("window.trajscope.charts['cmp-loss'].u.data[0].length") == 23
        commit(root, "grow", 32, finish="complete")
        page.wait_for_function("window.trajscope.charts['cmp-loss'].u.data[0].length === 31", timeout=30_000)
        data = page.evaluate(DATA)
        ref, live = (np.array([np.nan if v is None else v for v in s], dtype=float) for s in data["cmp-loss"][1:])
        np.testing.assert_allclose(live, grow["loss"][1:32])
        np.testing.assert_allclose(ref[:23], done["loss"][1:24])
        assert np.isnan(ref[23:]).all()
        assert len(data["cmp-rank"][0]) == 31 and len(data["cmp-alignment"]) == 5
        assert page.evaluate("window.trajscope.loads") == 1 and page.evaluate("window.trajscope.appends") >= 2
        assert page.evaluate("window.__sameDocument") is True
        page.wait_for_function("document.querySelector('#live').textContent === ''", timeout=30_000)
        only_local(page, srv.url)
    assert page.errors == []


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_the_client_downsamples_as_the_server_does(server, page, scale):
    rng = np.random.default_rng(3)
    x = np.unique(rng.integers(0, 5000, size=700))
    values = rng.normal(size=(x.size, 3))
    values[::37, 1] = np.nan
    values[100:140, 2] = np.nan  # a bucket of NaN only
    values[250, 0] = 40.0  # a spike
    page.goto(server.url + "/")
    page.wait_for_selector("#runs tbody tr")
    data = {"x": x.tolist(), "series": {f"s{j}": [None if np.isnan(v) else float(v) for v in values[:, j]] for j in range(3)}}
    got = page.evaluate(f"([d, points]) => minmaxDownsample(d, points, {json.dumps(scale)})", [data, 50])
    ref = minmax_downsample(x, values, 50, scale)
    assert got["x"] == ref.x.tolist()
    for j in range(3):
        np.testing.assert_array_equal(np.array([np.nan if v is None else v for v in got["series"][f"s{j}"]], dtype=float),
                                      ref.values[:, j])
    assert 40.0 in got["series"]["s0"]
    assert page.evaluate("([d]) => minmaxDownsample(d, 400, 'log') === d", [data])  # short enough: unchanged
    assert page.errors == []


def test_comparing_module_runs_with_and_without_a_loss(module_server, module_root, page):
    page.goto(f"{module_server.url}/#/compare/noloss,mlp")
    loaded(page)
    data = page.evaluate(DATA)
    assert page.evaluate(LABELS, "cmp-loss") == ["mlp"] and len(data["cmp-loss"]) == 2  # noloss records none
    assert "noloss: not recorded" in page.inner_text("#chart-cmp-loss .note")
    assert data["cmp-alignment"] is None and data["cmp-rank"] is None  # two-layer quantities: nothing to draw
    assert page.evaluate(LABELS, "cmp-distance") == ["noloss", "mlp"]
    # runs recorded from a script have no config: not "identical configs" (found by a review)
    assert "runs recorded from a script have no config" in page.inner_text("#differing")
    x = data["cmp-distance"][0]
    assert x == list(range(1, STEPS + 1))
    for i, run_id in enumerate(("noloss", "mlp")):
        ds = trajscope.open_run(run_id, module_root)
        theta = np.concatenate([ds[n].values.astype(np.float64).reshape(ds.sizes["step"], -1) for n in ds.data_vars
                                if n != "loss"], axis=1)
        want = np.linalg.norm(theta - theta[0], axis=1)[1:]
        got = np.array([np.nan if v is None else v for v in data["cmp-distance"][1 + i]], dtype=float)
        np.testing.assert_allclose(got[:len(want)], want, rtol=1e-9)
        assert np.isnan(got[len(want):]).all()
    only_local(page, module_server.url)
    assert page.errors == []


def test_a_model_of_many_tensors_draws_its_first_series(tmp_path, serve, page):
    """Found by a review: a model of more than 64 parameter tensors (ResNet-50 has 161) drew none of its
    per-parameter charts: the page asked for every series and the server refuses over 64 a request. It asks for
    the first 32, what the chart draws."""
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(40)])  # 80 tensors
    root = StoreRoot(tmp_path)
    with trajscope.ModuleRecorder(model, root=root, name="deep") as rec:
        rec.record()
        for _ in range(3):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.9)
            rec.record()
    ds = trajscope.open_run("deep", root)
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/deep")
        loaded(page)
        data = page.evaluate(DATA)
        for chart in ("frobenius_norms", "update_norms", "distance_from_init"):
            assert len(data[chart]) == 1 + 32, chart
        fro = _by_label(page, "frobenius_norms", data)
        assert list(fro)[:2] == ["0.weight", "0.bias"]
        np.testing.assert_allclose(fro["0.weight"], np.linalg.norm(ds["0.weight"].values.astype(np.float64)
                                                                   .reshape(4, -1), axis=1)[1:], rtol=1e-9)
        assert page.errors == []
