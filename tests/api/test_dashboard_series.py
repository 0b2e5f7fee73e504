"""``/api/runs/{id}/series/{quantity}`` (the dashboard's data) over a real uvicorn server and real runs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from trajscope.analysis import cones
from trajscope.analysis.downsample import minmax_downsample
from trajscope.store import StoreRoot, open_run


def test_loss_series_is_exact_when_short_and_min_max_downsampled_when_long(client, expected):
    loss = expected["done"]["loss"].values
    body = client.get("/api/runs/done/series/loss", params={"points": 100}).json()
    assert body["exact"] and body["x"] == list(range(40)) and np.allclose(body["series"]["loss"], loss)
    assert body["selection"] == {"first": 0, "last": 39, "states": 40}
    small = client.get("/api/runs/done/series/loss", params={"points": 4, "step": "5:30"}).json()
    ref = minmax_downsample(np.arange(5, 31), loss[5:31], 4)
    assert not small["exact"] and small["x"] == ref.x.tolist() and len(small["x"]) <= 8
    np.testing.assert_allclose(small["series"]["loss"], ref.values)
    assert small["selection"] == {"first": 5, "last": 30, "states": 26}


def test_tail_and_multi_column_quantities(client, expected, local_root):
    tail = client.get("/api/runs/live/series/loss", params={"tail": 3}).json()
    assert tail["x"] == [17, 18, 19] and tail["committed_steps"] == 20  # never past committed_steps
    fr = client.get("/api/runs/done/series/cone_fractions", params={"step": "10:19"}).json()
    ref = cones.cone_fractions(open_run("done", local_root), slice(10, 19)).compute()
    assert len(fr["series"]) == ref.sizes["cone"]
    for name, values in fr["series"].items():
        cone = name.split("[", 1)[1][:-1]
        np.testing.assert_allclose(values, ref.sel(cone=cone).values)
    ss = client.get("/api/runs/done/series/step_series", params={"points": 10}).json()
    assert {"mean_alignment_pos", "band_min_pos", "stable_rank", "frac_S_pos"} <= set(ss["series"])
    assert all(len(v) == len(ss["x"]) <= 20 for v in ss["series"].values())
    sv = client.get("/api/runs/done/series/singular_values", params={"first": 2}).json()
    W = expected["done"]["W"].values.astype(np.float64)
    np.testing.assert_allclose(np.array(list(sv["series"].values())).T, np.linalg.svd(W, compute_uv=False)[:, :2],
                               rtol=1e-5)


def test_neuron_angles_of_chosen_neurons(client, expected):
    body = client.get("/api/runs/done/series/neuron_angles", params={"neuron": "1,4", "step": ":9"}).json()
    assert set(body["series"]) == {"to_target[1]", "to_target[4]", "to_init[1]", "to_init[4]"}
    W = expected["done"]["W"].values.astype(np.float64)
    cos0 = (W[:10, 4] * W[0, 4]).sum(-1) / np.linalg.norm(W[:10, 4], axis=-1) / np.linalg.norm(W[0, 4])
    np.testing.assert_allclose(body["series"]["to_init[4]"], np.degrees(np.arccos(np.clip(cos0, -1, 1))), atol=1e-6)
    assert body["attrs"]["to_init"]["units"] == "degree"


def test_csv_and_npy_downloads_hold_the_same_table(client):
    js = client.get("/api/runs/done/series/cone_fractions", params={"points": 5}).json()
    csv = client.get("/api/runs/done/series/cone_fractions", params={"points": 5, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and "attachment" in csv.headers["content-disposition"]
    lines = csv.text.strip().splitlines()
    assert lines[0].split(",") == ["step", *js["series"]]
    for cache in ("miss", "hit"):  # (the names come with a cached answer too)
        answer = client.get("/api/runs/done/series/cone_fractions", params={"points": 5, "format": "npy"})
        assert answer.headers["x-trajscope-cache"] == cache
        # its column names in a header, as the CSV's first line (found by a review: an .npy holds none)
        assert json.loads(answer.headers["x-trajscope-columns"]) == lines[0].split(",")
    npy = np.load(io.BytesIO(answer.content))
    assert npy.shape == (len(js["x"]), 1 + len(js["series"])) == (len(lines) - 1, len(lines[0].split(",")))
    np.testing.assert_array_equal(npy[:, 0], js["x"])
    np.testing.assert_allclose(npy[:, 1:], np.array(list(js["series"].values())).T)


@pytest.mark.parametrize("url,status,words", [
    ("/api/runs/done/series/nope", 404, "unknown series"),
    ("/api/runs/done/series/mu", 422, "not a per-step series"),
    ("/api/runs/done/series/loss?points=0", 422, "points"),
    ("/api/runs/done/series/loss?scale=cubic", 422, "scale"),
    ("/api/runs/done/series/loss?step=100:200", 400, "step: no recorded state in steps 100:200"),
    ("/api/runs/done/series/neuron_angles?neuron=9", 400, "out of range"),
    ("/api/runs/done/series/loss?bogus=1", 400, "unknown parameter"),
    ("/api/runs/nope/series/loss", 404, "no run"),
])
def test_bad_requests_say_what_is_wrong(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_too_many_columns_asks_for_neurons(tmp_path, write_run, serve):
    import httpx

    root = StoreRoot(tmp_path)
    write_run(root, "wide", steps=8, h=40, chunk_steps=8)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.get("/api/runs/wide/series/neuron_angles")
        assert r.status_code == 400 and "neuron=" in r.json()["detail"]
        assert len(c.get("/api/runs/wide/series/neuron_angles", params={"neuron": "0:8"}).json()["series"]) == 16
        assert len(c.get("/api/runs/wide/series/neuron_angles", params={"first": 5}).json()["series"]) == 5


def test_static_assets_are_served_from_the_package_only(client):
    js = client.get("/static/vendor/uPlot.iife.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript") and "uPlot" in js.text
    assert client.get("/static/vendor/uPlot.min.css").headers["content-type"].startswith("text/css")
    assert "MIT" in client.get("/static/vendor/uPlot.LICENSE").text
    page = client.get("/").text
    for src in ("/static/vendor/uPlot.iife.min.js", "/static/app.js", "/static/charts.js"):
        assert src in page and client.get(src).status_code == 200
    for bad in ("/static/../app.py", "/static/vendor/../../routes_series.py", "/static/nope.js", "/static/%2e%2e/app.py"):
        assert client.get(bad).status_code == 404, bad


def test_a_total_over_the_kept_neurons_is_not_called_the_whole_theta(client, expected):
    """Found by a review: ``neuron=0`` kept only that neuron's rows of W and v, and their total read ``(all)``."""
    body = client.get("/api/runs/done/series/distance_from_init", params={"neuron": "0"}).json()
    assert "(all)" not in body["series"] and "(selected)" in body["series"]
    W, v = (expected["done"][n].values.astype(np.float64) for n in ("W", "v"))
    kept = np.sqrt(((W[:, 0] - W[0, 0]) ** 2).sum(1) + (v[:, 0] - v[0, 0]) ** 2)
    np.testing.assert_allclose(body["series"]["(selected)"], kept, rtol=1e-9)
    assert "(all)" in client.get("/api/runs/done/series/distance_from_init").json()["series"]


def test_the_run_lists_its_series_from_the_registry(client, local_root):
    from trajscope.analysis import applicable
    from trajscope.analysis.registry import is_series

    body = client.get("/api/runs/done/series").json()
    assert set(body["variables"]) == {"loss", "output", "W", "v"}
    assert {"step_series", "neuron_angles", "row_angles", "singular_values"} <= set(body["quantities"])
    items = applicable(open_run("done", local_root))
    assert set(body["quantities"]) == {name for name, fn in items.items() if is_series(fn)}
    assert body["matrices"] == {"W": {"dim": "neuron", "rows": 6, "row_length": 4}}
    for name in ("mu", "t1", "summary"):  # they apply, but have no step dim: not offered, and a 422 naming /analysis
        assert name in items and name not in body["quantities"]
        response = client.get(f"/api/runs/done/series/{name}")
        assert response.status_code == 422 and f"/analysis/{name}" in response.json()["detail"], response.text


@pytest.mark.parametrize("run_id", ["done", "live"])
def test_small_ranges_of_pointwise_quantities_equal_the_lazy_computation(client, local_root, run_id):
    """A step range of a ``pointwise`` quantity is computed on those states in memory: the same numbers
    as the lazy computation over the whole run (which a quantity reading other states would break)."""
    from trajscope.analysis import QUANTITIES, applicable
    from trajscope.analysis.downsample import columns

    ds = open_run(run_id, local_root)
    last = int(ds["step"].values[-1])
    names = [n for n, fn in applicable(ds).items() if getattr(fn, "pointwise", False)]
    assert {"step_series", "update_norms", "distance_from_init", "row_angles"} <= set(names)
    calls = [(name, {}) for name in names] + [("step_series", {"detail": "last"})]  # not pointwise: lazy path
    for name, options in calls:
        for a, b in ((last - 5, None), (3, 9)):
            step = f"{a}:{'' if b is None else b}"
            body = client.get(f"/api/runs/{run_id}/series/{name}",
                              params={"step": step, "points": 1000, **options}).json()
            want = columns(QUANTITIES[name](ds, slice(a, b), **options).compute(), name)
            assert list(body["series"]) == list(want), name
            for col, values in body["series"].items():
                got = np.array([np.nan if v is None else v for v in values], dtype=float)
                np.testing.assert_allclose(got, want[col], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=f"{name} {col}")


def test_rows_of_a_parameter_and_what_is_wrong(client, expected):
    body = client.get("/api/runs/done/series/row_angles", params={"parameter": "W", "row": "2,5", "step": "30:"}).json()
    assert {"to_target[2]", "to_target[5]", "to_init[2]", "to_init[5]"} == set(body["series"])
    W = expected["done"]["W"].values.astype(np.float64)
    cos0 = (W[30:, 5] * W[0, 5]).sum(-1) / np.linalg.norm(W[30:, 5], axis=-1) / np.linalg.norm(W[0, 5])
    np.testing.assert_allclose(body["series"]["to_init[5]"], np.degrees(np.arccos(np.clip(cos0, -1, 1))), atol=1e-6)
    for params, words in (({"row": "0:2"}, "parameter=NAME"), ({"row": "0:2", "parameter": "loss"}, "'loss' is not a matrix"),
                          ({"row": "9", "parameter": "W"}, "out of range"), ({"parameter": "v"}, "not a matrix parameter")):
        r = client.get("/api/runs/done/series/row_angles", params=params)
        assert r.status_code == 400 and words in r.json()["detail"], (params, r.text)


def test_states_loaded_for_a_live_tail_hold_the_per_step_variables_only(local_root):
    """The in-memory states of a tail are the selected rows of the per-step variables; the static data
    (``X``, ``y``: the whole training set) stay lazy, and the cache is charged for what was loaded."""
    import dask.array as da

    from trajscope.api.routes_series import loader, per_step_variables

    charged = {}

    class Run:
        def cache_key(self, *parts):
            return parts

    class Responses:
        def get_or_build(self, key, build, size):
            value = build()
            charged[key] = size(value)
            return value, False

    class State:
        responses = Responses()

    ds = open_run("done", local_root)
    index = np.r_[0, np.arange(10, 15)]
    states = loader(Run(), State())(ds, index)
    per_step = per_step_variables(ds)
    assert all(isinstance(states[n].data, np.ndarray) for n in per_step)
    assert {"X", "y"} <= set(states.data_vars) and isinstance(states["X"].data, da.Array)
    assert list(charged.values()) == [sum(ds[n].isel(step=index).nbytes for n in per_step)]
    np.testing.assert_array_equal(states["W"].values, ds["W"].values[index])


def test_only_the_series_asked_for_are_computed(tmp_path, write_run, serve, monkeypatch):
    """``first=2`` of ``W`` (h × D series) computes what two series need (one neuron's D), not every series of
    ``W``; a request over the series limit is refused before anything is computed (found by a review:
    ``/series/W?first=1`` built every column of ``W`` first, about 1.2 GB for a 360 MB ``W``)."""
    import httpx

    from trajscope.analysis import downsample

    seen = []
    whole = downsample.columns

    def spy(result, name):
        seen.append(downsample.column_count(result))
        return whole(result, name)

    monkeypatch.setattr(downsample, "columns", spy)
    root = StoreRoot(tmp_path)
    write_run(root, "wide", steps=8, h=40, chunk_steps=8)
    W = open_run("wide", root)["W"].values
    _, h, dim = W.shape
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        body = c.get("/api/runs/wide/series/W", params={"first": 2, "points": 1000}).json()
        assert body["exact"] and len(body["series"]) == 2
        np.testing.assert_allclose(np.array(list(body["series"].values())).T, W[:, 0, :2], rtol=1e-6)
        assert seen == [dim] and h * dim > 64
        seen.clear()
        r = c.get("/api/runs/wide/series/W")
        assert r.status_code == 400 and "first=" in r.json()["detail"] and not seen


def test_first_columns_cut_lazily_and_keep_the_same_first_columns():
    import dask.array as dsa
    import xarray as xr

    from trajscope.analysis.downsample import column_count, columns, first_columns

    values = np.arange(5 * 4 * 3, dtype=float).reshape(5, 4, 3)
    lazy = xr.DataArray(dsa.from_array(values, chunks=(2, 4, 3)), dims=("step", "neuron", "feature"),
                        coords={"step": np.arange(5)}, name="W")
    ds = xr.Dataset({"a": lazy.isel(neuron=0, feature=0, drop=True), "W": lazy, "b": lazy.isel(feature=0, drop=True)})
    assert column_count(lazy) == 12 and column_count(ds) == 1 + 12 + 4
    for result in (lazy, ds):
        every = columns(result.compute(), "W")
        for first in (1, 2, 3, 4, 7, 13, 17, 40):
            cut = first_columns(result, first)
            parts = cut.values() if isinstance(cut, dict) else [cut]
            assert all(isinstance(v.data, dsa.Array) for v in parts)  # nothing computed yet
            kept = columns({k: v.compute() for k, v in cut.items()} if isinstance(cut, dict) else cut.compute(), "W")
            assert list(kept)[:first] == list(every)[:first]
            for name in list(every)[:first]:
                np.testing.assert_array_equal(kept[name], every[name])
            assert column_count(cut) <= first + 2  # (the variable it ends in, cut along its first dim: 3 a neuron)


def test_the_first_series_of_a_dataset_are_those_of_the_whole(client):
    """``first=N`` of a Dataset quantity cuts its variables apart (they may share a dim cut differently) and
    computes them together: the same names and values as the first N of the whole."""
    whole = client.get("/api/runs/done/series/step_series", params={"points": 1000}).json()
    for first in (1, 3, 7):
        part = client.get("/api/runs/done/series/step_series", params={"points": 1000, "first": first}).json()
        assert list(part["series"]) == list(whole["series"])[:first]
        for name, values in part["series"].items():
            np.testing.assert_allclose(values, whole["series"][name], equal_nan=True)


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_a_long_series_is_computed_piece_by_piece_to_the_wholes_answer(tmp_path, write_run, serve, monkeypatch, scale):
    """Found by a review: the series of a long run was computed whole before it was downsampled (1 GB of server
    memory for a run of 10^6 tiny states). It is computed in pieces cut at bucket edges: each piece's columns are
    all that is held, and the rows equal the whole series downsampled at once (independently, here)."""
    import httpx

    from trajscope.analysis import downsample
    from trajscope.analysis.series import step_series
    from trajscope.api import routes_series

    monkeypatch.setattr(routes_series, "PIECE_STATES", 37)
    monkeypatch.setattr(routes_series, "step_chunk", lambda result: 0)  # (pieces shorter than the run's chunks:
    # the small variables' chunks hold the whole of this short run)
    sizes: list[int] = []
    whole = downsample.columns

    def spy(result, name):
        out = whole(result, name)
        sizes.append(len(next(iter(out.values()))))
        return out

    monkeypatch.setattr(downsample, "columns", spy)
    root = StoreRoot(tmp_path)
    write_run(root, "long", steps=400, chunk_steps=16)
    ds = open_run("long", root)
    reference = step_series(ds).compute()
    names = list(whole(reference, "step_series"))
    expected = minmax_downsample(ds["step"].values, np.stack([whole(reference, "step_series")[n] for n in names], 1),
                                 30, scale)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        for quantity, reference_names in (("step_series", names), ("loss", ["loss"])):
            sizes.clear()
            body = c.get(f"/api/runs/long/series/{quantity}", params={"points": 30, "scale": scale}).json()
            assert not body["exact"] and body["selection"]["states"] == 400
            assert len(sizes) > 3 and max(sizes) < 400 and sum(sizes) == 400, sizes  # pieces, each computed once
            if quantity == "loss":
                ref = minmax_downsample(ds["step"].values, ds["loss"].values, 30, scale)
                assert body["x"] == ref.x.tolist()
                np.testing.assert_allclose(body["series"]["loss"], ref.values, rtol=1e-12)
                continue
            assert body["x"] == expected.x.tolist() and list(body["series"]) == names
            for i, name in enumerate(names):
                np.testing.assert_allclose(np.array(body["series"][name], dtype=float), expected.values[:, i],
                                           rtol=1e-9, equal_nan=True)


def test_a_long_runs_series_of_a_variable_chunked_unlike_its_time_coordinate(tmp_path, write_run, serve, monkeypatch):
    """Found by a review: the series of ``W`` (and of every quantity keeping its chunks) of a run longer than
    ``PIECE_STATES`` answered 500: the longest chunk along ``step`` was read from ``DataArray.chunksizes``, which
    also takes the coordinates' chunks and raises where ``t`` is chunked otherwise than the data (the small
    variables' chunks are a multiple of ``W``'s)."""
    import httpx

    from trajscope.api import routes_series

    monkeypatch.setattr(routes_series, "PIECE_STATES", 37)  # (a run of 400 states is "long")
    root = StoreRoot(tmp_path)
    write_run(root, "long", steps=400, chunk_steps=16)
    ds = open_run("long", root)
    assert ds["W"].chunks[0][0] != ds["t"].chunks[0][0]  # the case: else the test proves nothing
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        for quantity in ("W", "neuron_norms"):
            r = c.get(f"/api/runs/long/series/{quantity}", params={"points": 30, "first": 2})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["selection"]["states"] == 400 and len(body["series"]) == 2
        r = c.get("/api/runs/long/series/W", params={"points": 1000, "first": 1})
        name = next(iter(r.json()["series"]))
        assert r.json()["exact"] and np.allclose(r.json()["series"][name], ds["W"].values.reshape(400, -1)[:, 0])
