"""A run recorded with ModuleRecorder over a real uvicorn server: its dotted variables, any dimension
by name, only the analyses and figures that apply (the generic ones), plots, and the raw store."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

import trajscope
from trajscope.analysis import QUANTITIES
from trajscope.store import StoreRoot

from tests.module.models import record_training


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 7)
        self.out = torch.nn.Linear(7, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.fc1(x)))


@pytest.fixture(scope="module")
def module_root(tmp_path_factory) -> StoreRoot:
    root = StoreRoot(tmp_path_factory.mktemp("modruns"))
    torch.manual_seed(3)
    model, x = Net(), torch.randn(20, 5)
    y = torch.randint(0, 2, (20,))
    record_training(model, x, y, 12, root=root, name="mlp", lr=0.1)
    return root


@pytest.fixture(scope="module")
def api(module_root, serve):
    with serve(module_root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c


def test_variables_with_dots_and_any_dimension_by_name(api, module_root):
    ds = trajscope.open_run("mlp", module_root)
    r = api.get("/api/runs/mlp/vars/fc1.weight", params={"step": "2:6:2", "fc1.weight.dim0": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dims"] == ["step", "fc1.weight.dim1"]
    np.testing.assert_array_equal(np.asarray(body["values"], dtype=np.float32),
                                  ds["fc1.weight"].sel(step=[2, 4, 6]).isel({"fc1.weight.dim0": 3}).values)
    bad = api.get("/api/runs/mlp/vars/fc1.weight", params={"neuron": "1"})
    assert bad.status_code == 400 and "fc1.weight.dim0" in bad.json()["detail"]
    meta = api.get("/zarr/mlp/fc1.weight/zarr.json")
    assert meta.status_code == 200 and json.loads(meta.content)["dimension_names"][1] == "fc1.weight.dim0"
    chunk = api.get("/zarr/mlp/out.bias/c/0/0")
    assert chunk.status_code == 200 and len(chunk.content) > 0


def test_only_applicable_quantities_are_listed_and_served(api, module_root):
    items = api.get("/api/runs/mlp/analysis").json()["items"]
    assert {"frobenius_norms", "spectral_norms", "update_norms", "distance_from_init", "row_cosines_to_init",
            "param_singular_values", "param_stable_ranks"} <= set(items)
    assert "stable_rank" not in items and "target_alignment" not in items and "t1" not in items
    assert set(items) < set(QUANTITIES)
    missing = api.get("/api/runs/mlp/analysis/stable_rank")
    assert missing.status_code == 404 and "does not apply" in missing.json()["detail"]

    ds = trajscope.open_run("mlp", module_root)
    r = api.get("/api/runs/mlp/analysis/distance_from_init", params={"step": "0:10:2", "parameter": "fc1.*"})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    w = ds["fc1.weight"].values.astype(np.float64)
    expected = np.linalg.norm((w - w[0]).reshape(len(w), -1), axis=1)[0:11:2]
    assert set(result["variables"]) == {"fc1.weight", "fc1.bias", "(selected)"}  # fc1 only: not θ
    got = result["variables"]["fc1.weight"]["values"]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_generic_figures_are_listed_and_drawn(api):
    kinds = api.get("/api/runs/mlp/plots").json()["items"]
    assert {"param_norms", "param_updates", "param_spectrum"} <= set(kinds)
    assert "alignment" not in kinds and "gram" not in kinds
    for kind in ("param_norms", "param_updates", "param_spectrum"):
        r = api.get(f"/api/runs/mlp/plots/{kind}.png")
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", r.text[:200]
    r = api.get("/api/runs/mlp/plots/param_spectrum.svg", params={"parameter": "out.weight"})
    assert r.status_code == 200 and b"out.weight" in r.content


def test_a_matrix_over_the_series_limit_names_the_way_that_works(tmp_path, serve):
    """Found by a review: the 400 for a module matrix of more than 64 series said "pick neurons with neuron=...",
    which a module run refuses (it has no neuron dim); its rows are picked with row=."""
    root = StoreRoot(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 5), torch.nn.Linear(5, 2))
    record_training(model, torch.randn(10, 20), torch.randint(0, 2, (10,)), 4, root=root, name="wide", lr=0.1)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.get("/api/runs/wide/series/0.weight")  # 5 rows of 20: 100 series
        assert r.status_code == 400 and "over the limit of 64" in r.json()["detail"]
        assert "row=0:8" in r.json()["detail"] and "neuron=" not in r.json()["detail"]
        rows = c.get("/api/runs/wide/series/0.weight", params={"row": "0:2", "points": 100})
        assert rows.status_code == 200, rows.text
        ds = trajscope.open_run("wide", root)
        series = rows.json()["series"]
        assert len(series) == 40  # rows 0 and 1, 20 values each
        got = np.asarray(next(iter(series.values())), dtype=np.float32)
        np.testing.assert_array_equal(got, ds["0.weight"].values[:, 0, 0])


def test_an_extra_named_like_a_quantity_leaves_the_quantity_under_series(tmp_path, serve):
    """Found by a review: an extra ``distance_from_init`` replaced the quantity under ``/series`` (one column,
    the extra's values) while ``/analysis`` served the quantity by the same name, and the dashboard's chart
    drew the extra. ``/series/NAME`` is the quantity; the listing names the variable's ``/vars`` URL."""
    root = StoreRoot(tmp_path)
    torch.manual_seed(4)
    model, x = Net(), torch.randn(20, 5)
    with trajscope.ModuleRecorder(model, root=root, name="shadow") as rec:
        for k in range(6):
            rec.record(distance_from_init=10.0 + k)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
    ds = trajscope.open_run("shadow", root)
    flat = np.concatenate([ds[n].values.astype(np.float64).reshape(6, -1)
                           for n in ("fc1.weight", "fc1.bias", "out.weight", "out.bias")], axis=1)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as api:
        listing = api.get("/api/runs/shadow/series").json()
        assert "distance_from_init" in listing["quantities"] and "distance_from_init" not in listing["variables"]
        assert listing["shadowed"] == {"distance_from_init": "/api/runs/shadow/vars/distance_from_init"}
        body = api.get("/api/runs/shadow/series/distance_from_init", params={"points": 100}).json()
        np.testing.assert_allclose(body["series"]["(all)"], np.linalg.norm(flat - flat[0], axis=1), rtol=1e-12)
        rows = api.get("/api/runs/shadow/series/distance_from_init", params={"parameter": "fc1.weight",
                                                                            "row": "0:2"})
        assert rows.status_code == 200, rows.text
        extra = api.get(listing["shadowed"]["distance_from_init"]).json()
        assert extra["values"] == [10.0 + k for k in range(6)]


def test_the_csv_of_a_matrix_variable_parses_to_its_columns(api):
    """Found by a review: column names such as ``out.weight[0,1]`` were joined unquoted, so a CSV reader found
    more header fields than values in each row."""
    import csv
    import io

    params = {"points": 4, "first": 8}
    js = api.get("/api/runs/mlp/series/out.weight", params=params).json()
    rows = list(csv.reader(io.StringIO(api.get("/api/runs/mlp/series/out.weight",
                                               params={**params, "format": "csv"}).text)))
    assert rows[0] == ["step", *js["series"]] and "out.weight[0,1]" in rows[0]
    assert {len(r) for r in rows} == {1 + len(js["series"])}
    np.testing.assert_allclose(np.array(rows[1:], dtype=float)[:, 1:], np.array(list(js["series"].values())).T)


def test_row_and_neuron_selectors_that_would_select_nothing_say_why(tmp_path, serve):
    """Found by a review: ``neuron=0`` on a module run whose ``neuron`` dim is an extra's was ignored (200 with
    every parameter), and ``row=0`` on a bias said "name it with parameter=NAME" when it was named."""
    root = StoreRoot(tmp_path)
    model = Net()
    with trajscope.ModuleRecorder(model, root=root, name="extra", dims={"per": ("neuron",)}) as rec:
        for k in range(3):
            rec.record(per=torch.arange(4.0) + k)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as api:
        base = "/api/runs/extra/series"
        for url, words in [
            (f"{base}/distance_from_init?neuron=0", "no parameter of run 'extra' has a neuron dimension"),
            (f"{base}/row_angles?parameter=fc1.weight&neuron=0", "no parameter of run 'extra' has a neuron"),
            (f"{base}/row_angles?parameter=fc1.bias&row=0", "'fc1.bias' is not a matrix (dims step, fc1.bias.dim0)"),
            (f"{base}/row_angles?parameter=fc*.weight&row=0", "'fc*.weight' is no variable of the run"),
            (f"{base}/row_angles?row=0", "name it with parameter=NAME; the run's matrix parameters are fc1.weight, "
                                         "out.weight"),
        ]:
            r = api.get(url)
            assert r.status_code == 400 and words in r.json()["detail"], (url, r.text)
        per = api.get(f"{base}/per?neuron=1").json()  # the extra's own neuron dim still selects
        assert per["series"] == {"per[1]": [1.0, 2.0, 3.0]}, per["series"]
