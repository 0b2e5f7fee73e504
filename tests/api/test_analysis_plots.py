"""Every analysis quantity and every figure kind over HTTP, against direct calls on ``open_run``."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import xarray as xr

from trajscope.analysis import PLOT_KINDS, QUANTITIES
from trajscope.store import RunWriter, StoreRoot, open_run


def values(body) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(body["values"], dtype=object))],
                      dtype=float)


def assert_matches(served: dict, direct) -> None:
    if isinstance(direct, xr.Dataset):
        assert set(served["variables"]) == set(map(str, direct.data_vars))
        for name, var in direct.data_vars.items():
            assert_matches(served["variables"][str(name)], var)
        return
    assert served["dims"] == [str(d) for d in direct.dims]
    got, want = values(served), np.ravel(np.asarray(direct.values, dtype=float))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, equal_nan=True)


def test_every_quantity_is_listed(client):
    items = client.get("/api/runs/done/analysis").json()["items"]
    assert set(items) == set(QUANTITIES) and QUANTITIES


@pytest.mark.parametrize("quantity", sorted(QUANTITIES))
def test_every_quantity_over_http_equals_the_direct_call(client, local_root, quantity):
    r = client.get(f"/api/runs/done/analysis/{quantity}")
    step = None
    if r.status_code == 413:  # over this server's 16 KiB cap (step_series: 23 series): every 4th state
        step = slice(None, None, 4)
        r = client.get(f"/api/runs/done/analysis/{quantity}", params={"step": "::4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quantity"] == quantity and body["committed_steps"] == 40
    direct = QUANTITIES[quantity](open_run("done", local_root), **({"step": step} if step else {}))
    assert_matches(body["result"], direct.compute())


@pytest.mark.parametrize("quantity", ["target_alignment", "stable_rank", "loss_envelope"])
def test_step_ranges_and_strides_reach_the_analysis(client, local_root, quantity):
    body = client.get(f"/api/runs/done/analysis/{quantity}", params={"step": "10:20:2"}).json()
    direct = QUANTITIES[quantity](open_run("done", local_root), step=slice(10, 20, 2)).compute()
    assert body["result"]["coords"]["step"] == [10, 12, 14, 16, 18, 20]
    assert_matches(body["result"], direct)
    assert body["params"]["step"] == [10, 20, 2]


def test_analysis_of_a_live_run_uses_the_committed_steps(client, local_root):
    body = client.get("/api/runs/live/analysis/stable_rank").json()
    assert body["committed_steps"] == 20 and len(body["result"]["values"]) == 20


def test_analysis_results_are_cached(client):
    client.get("/api/runs/done/analysis/spectral_norm_sq")
    assert client.get("/api/runs/done/analysis/spectral_norm_sq").headers["x-trajscope-cache"] == "hit"


@pytest.mark.parametrize("path, params, status, words", [
    ("/api/runs/done/analysis/nope", {}, 404, ["'nope'", "summary"]),
    ("/api/runs/nope/analysis/summary", {}, 404, ["'nope'"]),
    ("/api/runs/done/analysis/t1", {"step": "x:y"}, 400, ["step='x:y'"]),
    ("/api/runs/done/analysis/t1", {"step": "1,2,3"}, 400, ["step=1,2,3", "not a list"]),
    ("/api/runs/done/analysis/t1", {"step": "100:200"}, 400, ["step: no recorded state in steps 100:200", "0 to 39"]),
    ("/api/runs/done/analysis/t1", {"steps": "1:2"}, 400, ["'steps'", "accepts step"]),
    ("/api/runs/done/analysis/summary", {"drop": "lots"}, 400, ["drop='lots'", "float"]),
    ("/api/runs/done/plots/nope.png", {}, 404, ["'nope'", "loss"]),
    ("/api/runs/done/plots/loss.gif", {}, 404, ["'loss.gif'", "KIND.png"]),
    ("/api/runs/done/plots/loss", {}, 404, ["'loss'", "KIND.svg"]),
    ("/api/runs/done/plots/plane.png", {}, 400, ["2-D"]),
    ("/api/runs/done/plots/spectra.png", {"top": "-"}, 400, ["top='-'", "int"]),
])
def test_bad_analysis_and_plot_requests(client, path, params, status, words):
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["detail"], (word, r.json()["detail"])


def test_plot_listing_check_is_cheap_and_reports_what_cannot_be_shown(tmp_path, write_run, serve):
    root = StoreRoot(tmp_path)
    write_run(root, "grow", steps=24, chunk_steps=8, finish=None, commit_to=8)  # D = 4: no 'plane'
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        responses = srv.app.state.trajscope.responses
        body = c.get("/api/runs/grow/plots", params={"check": "true"}).json()
        assert set(body["items"]) | set(body["unavailable"]) == set(PLOT_KINDS)
        assert "2-D" in body["unavailable"]["plane"] and "loss" in body["items"]
        assert not [k for k in responses._items if "plot" in k]  # no figure of the run was drawn
        writer = RunWriter.reopen(root, "grow")
        try:
            writer.commit(16)
        finally:
            writer.lock.release()
        probes = len(responses)
        again = c.get("/api/runs/grow/plots", params={"check": "true"}).json()
        assert again["unavailable"] == body["unavailable"] and len(responses) == probes  # not redone per commit
        assert "plane" in c.get("/api/runs/grow/plots").json()["items"]  # without check: every kind


@pytest.mark.parametrize("kind", sorted(k for k in PLOT_KINDS if k != "plane"))
def test_every_figure_kind_as_png_and_svg(client, kind):
    png = client.get(f"/api/runs/done/plots/{kind}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text[:200]
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and len(png.content) > 2000
    svg = client.get(f"/api/runs/done/plots/{kind}.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content[:2000]
    assert client.get(f"/api/runs/done/plots/{kind}.png").headers["x-trajscope-cache"] == "hit"


def test_plane_figure_for_two_dimensional_data(tmp_path, write_run, serve):
    root = StoreRoot(tmp_path)
    write_run(root, "flat", steps=8, chunk_steps=8, D=2)
    with serve(root) as srv:
        r = httpx.get(f"{srv.url}/api/runs/flat/plots/plane.png", timeout=60)
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_figures_of_a_live_run_are_recomputed_when_it_commits(tmp_path, write_run, serve):
    root = StoreRoot(tmp_path)
    write_run(root, "grow", steps=24, chunk_steps=8, finish=None, commit_to=8)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        first = c.get("/api/runs/grow/plots/loss.png")
        assert first.headers["x-trajscope-cache"] == "miss"
        assert c.get("/api/runs/grow/plots/loss.png").headers["x-trajscope-cache"] == "hit"
        writer = RunWriter.reopen(root, "grow")
        try:
            writer.commit(16)
        finally:
            writer.lock.release()
        again = c.get("/api/runs/grow/plots/loss.png")
        assert again.headers["x-trajscope-cache"] == "miss" and again.content != first.content
        body = c.get("/api/runs/grow/analysis/stable_rank").json()
        assert body["committed_steps"] == 16 and len(body["result"]["values"]) == 16


def test_a_figure_a_live_run_could_not_show_yet_is_tried_again_once_it_has_ended(tmp_path, write_run, serve):
    """Figures that fail on a live run's first states are remembered while it runs (not redone per commit),
    and forgotten when it ends: the finished run is probed again."""
    root = StoreRoot(tmp_path)
    write_run(root, "young", steps=24, chunk_steps=8, finish=None, commit_to=0)  # nothing committed yet
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/api/runs/young/plots/loss.png").status_code in (400, 422)
        body = c.get("/api/runs/young/plots", params={"check": "true"}).json()
        assert "loss" in body["unavailable"]
        writer = RunWriter.reopen(root, "young")
        writer.commit(24)
        writer.finish("complete")
        again = c.get("/api/runs/young/plots", params={"check": "true"}).json()
        assert "loss" in again["items"] and "loss" not in again["unavailable"], again["unavailable"]
        assert c.get("/api/runs/young/plots/loss.png").status_code == 200


def test_a_kind_drawn_from_two_states_is_unavailable_on_one_and_listed_again_on_two(tmp_path, write_run, serve):
    """``direction_field`` compares consecutive states. On a run of one state it was a 422 naming a
    ValueError, ``check=true`` listed it as available (its probe read one state of every run), and the CLI
    printed a traceback; now a 400 saying it needs two, listed unavailable until a second state commits."""
    root = StoreRoot(tmp_path)
    write_run(root, "one", steps=16, chunk_steps=8, finish=None, commit_to=1)
    with serve(root) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        body = c.get("/api/runs/one/plots", params={"check": "true"}).json()
        assert "needs two" in body["unavailable"]["direction_field"] and "loss" in body["items"]
        for path in ("plots/direction_field.png", "analysis/direction_field_error"):
            r = c.get(f"/api/runs/one/{path}")
            assert r.status_code == 400 and "needs two" in r.json()["detail"] and "this run has 1" in r.json()["detail"]
        r = c.get("/api/runs/one/analysis/singular_values", params={"method": "qr"})
        assert r.status_code == 400 and "'gram' or 'svd', not 'qr'" in r.json()["detail"]
        writer = RunWriter.reopen(root, "one")
        try:
            writer.commit(8)
        finally:
            writer.lock.release()
        again = c.get("/api/runs/one/plots", params={"check": "true"}).json()
        assert "direction_field" in again["items"] and "direction_field" not in again["unavailable"]
        assert c.get("/api/runs/one/plots/direction_field.png").status_code == 200
        r = c.get("/api/runs/one/analysis/direction_field_error", params={"step": "0:0"})
        assert r.status_code == 400 and "the step range holds 1: widen" in r.json()["detail"]


def test_a_result_over_the_cap_is_refused_before_it_is_computed(client, monkeypatch):
    """The 413 of an analysis over the response cap comes from the lazy result's sizes: nothing is computed
    (found by a review: ``direction_field_error`` of an 18 000-state run took 1.3 GB for 5.5 s, then a 413)."""
    computed = []
    for cls in (xr.DataArray, xr.Dataset):
        original = cls.compute
        monkeypatch.setattr(cls, "compute", lambda self, *a, _original=original, **k: computed.append(1)
                            or _original(self, *a, **k))
    r = client.get("/api/runs/done/analysis/step_series")  # 23 series × 40 states: over this server's 16 KiB
    assert r.status_code == 413 and "step=" in r.json()["detail"]
    assert not computed
    assert client.get("/api/runs/done/analysis/step_series", params={"step": "1:30:5"}).status_code == 200 and computed


@pytest.mark.parametrize("url,words", [
    ("/api/runs/done/analysis/t2?drop=-1", "drop=-1.0: a fraction strictly between 0 and 1"),
    ("/api/runs/done/analysis/t2?drop=1", "drop=1.0: a fraction"),
    ("/api/runs/done/analysis/summary?drop=0", "drop=0.0: a fraction"),
    ("/api/runs/done/analysis/t2?drop=nan", "drop='nan' is not a valid float"),
    ("/api/runs/done/analysis/loss_envelope?drop=inf", "drop='inf' is not a valid float"),
    ("/api/runs/done/plots/spectra.png?top=-5", "top=-5: a whole number of at least 1"),
    ("/api/runs/done/plots/spectra.png?top=%EF%BC%93", "top='３' is not a valid int"),
    ("/api/runs/done/analysis/t2?step=%EF%BC%91", "step"),
])
def test_out_of_range_and_non_finite_parameters_are_400(client, url, words):
    """Found by a review: ``drop=-1`` gave a meaningless 200, ``drop=nan`` echoed ``null``, ``top=-5`` drew a
    figure, a fullwidth digit was read as a step."""
    r = client.get(url)
    assert r.status_code == 400, (url, r.status_code, r.text)
    assert words in r.json()["detail"], r.json()["detail"]
    assert client.get("/api/runs/done/analysis/t2", params={"drop": "0.5"}).status_code == 200


def test_a_huge_whole_number_parameter_is_taken_not_a_500(client):
    """An int parameter past float's range (found by a review: ``math.isfinite`` of it raised OverflowError):
    ``top`` of 10**400 keeps every singular value."""
    r = client.get("/api/runs/done/plots/spectra.png", params={"top": "1" + "0" * 400})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_a_figure_over_the_state_limit_is_refused_before_it_is_drawn(client, monkeypatch):
    """An explicit stride that keeps more states than a figure draws over HTTP is a 413 naming a stride that
    fits, with nothing computed (found by a review: ``spectra.png?step=::1`` made the server compute the SVD
    of every state of a run, however long)."""
    import trajscope.analysis.figure_parts as figure_parts

    monkeypatch.setattr(figure_parts, "MAX_POINTS", 10)  # the run "done" has 40 states
    computed = []
    for cls in (xr.DataArray, xr.Dataset):
        original = cls.compute
        monkeypatch.setattr(cls, "compute", lambda self, *a, _original=original, **k: computed.append(1)
                            or _original(self, *a, **k))
    r = client.get("/api/runs/done/plots/spectra.png", params={"step": "::1"})
    assert r.status_code == 413, r.text
    assert "would draw 40 states, over the limit of 10" in r.json()["detail"]
    assert "step=a:b:4" in r.json()["detail"] and not computed
    assert client.get("/api/runs/done/plots/spectra.png", params={"step": "::3"}).status_code == 413
    fits = client.get("/api/runs/done/plots/spectra.png", params={"step": "::4"})
    assert fits.status_code == 200 and fits.content.startswith(b"\x89PNG") and computed
    ranged = client.get("/api/runs/done/plots/loss.png", params={"step": "0:9:1"})  # a short range: 10 states
    assert ranged.status_code == 200, ranged.text
    assert client.get("/api/runs/done/plots/loss.png").status_code == 200  # no stride: the figure thins itself
    gram = client.get("/api/runs/done/plots/gram.png", params={"step": "::1"})  # draws the data, not the states
    assert gram.status_code == 200, gram.text


def test_series_selectors_that_cannot_apply_are_400_and_a_variable_s_rows_are_its_own(client, expected):
    """Found by a review: ``series/loss?neuron=3`` ignored ``neuron``, ``series/W?row=1`` asked for a
    ``parameter`` the route then refused, and ``analysis/step_series?detail=bogus`` was a 422 "could not be
    computed"."""
    r = client.get("/api/runs/done/series/loss", params={"neuron": "3"})
    assert r.status_code == 400 and "variable 'loss' has no neuron dimension" in r.json()["detail"], r.text
    r = client.get("/api/runs/done/analysis/step_series", params={"detail": "bogus"})
    assert r.status_code == 400 and "detail='bogus': choose 'all', 'last' or 'none'" in r.json()["detail"], r.text
    for both in ({"neuron": "0", "row": "1"}, {"neuron": "0:3", "row": "5"}, {"neuron": "3", "row": "3"}):
        r = client.get("/api/runs/done/series/W", params=both)  # (a review found rows stacked on one dim)
        assert r.status_code == 400 and "both select W's neurons: give one of them" in r.json()["detail"], r.text
    r = client.get("/api/runs/done/series/W", params={"row": "1", "first": "2", "points": "1000"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["series"]) == ["W[1,0]", "W[1,1]"] and body["exact"]
    np.testing.assert_array_equal(np.array(body["series"]["W[1,1]"], dtype=np.float64),
                                  expected["done"]["W"].values[:, 1, 1].astype(np.float64))


def test_an_object_store_failing_during_a_computation_is_a_502_and_not_remembered(client, monkeypatch):
    """Found by a review: an object store lost while an analysis or a figure read the run was a 422 "could not
    be computed", and the figure's failure was cached (the kind then listed as unavailable for the run)."""
    import botocore.exceptions

    def lost(self, *args, **kwargs):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    with monkeypatch.context() as patch:
        for cls in (xr.DataArray, xr.Dataset):
            patch.setattr(cls, "compute", lost)
        for url in ("/api/runs/done/analysis/stable_rank?step=0:7", "/api/runs/done/plots/cones.png?step=0:7"):
            r = client.get(url)
            assert r.status_code == 502 and "EndpointConnectionError" in r.json()["detail"], (url, r.text)
    assert client.get("/api/runs/done/analysis/stable_rank", params={"step": "0:7"}).status_code == 200
    assert client.get("/api/runs/done/plots/cones.png", params={"step": "0:7"}).status_code == 200


def test_a_computation_stopped_by_the_servers_shutdown_is_a_503_and_one_log_line(client, monkeypatch, caplog):
    """Found by a review: SIGTERM while analyses ran logged a full traceback for each (dask's pool, shut down with
    the interpreter, refused their next tasks: "cannot schedule new futures after shutdown")."""
    import logging

    def pool_shut(self, *args, **kwargs):
        raise RuntimeError("cannot schedule new futures after shutdown")

    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="trajscope.api"):
        for cls in (xr.DataArray, xr.Dataset):
            patch.setattr(cls, "compute", pool_shut)
        r = client.get("/api/runs/done/analysis/stable_rank", params={"step": "0:6"})
    assert r.status_code == 503 and "shutting down" in r.json()["detail"], r.text
    records = [rec for rec in caplog.records if rec.name == "trajscope.api"]
    assert [rec.getMessage() for rec in records] == ["quantity 'stable_rank' on run done stopped: the server is shutting down"]
    assert all(rec.exc_info is None for rec in records)


def test_param_updates_of_one_state_says_it_needs_two(tmp_path, serve):
    """Found by a review: ``param_updates`` of one state drew empty axes (200)."""
    import torch

    import trajscope

    model = torch.nn.Linear(3, 2)
    with trajscope.ModuleRecorder(model, root=tmp_path, name="m") as rec:
        for _ in range(4):
            rec.record()
            with torch.no_grad():
                model.weight.add_(0.1)
    with serve(StoreRoot(tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        for step, words in (("2", "the step range holds 1: widen"), ("0:0", "the step range holds 1: widen")):
            r = c.get("/api/runs/m/plots/param_updates.png", params={"step": step})
            assert r.status_code == 400 and "param_updates draws the updates" in r.json()["detail"], r.text
            assert words in r.json()["detail"]
        assert c.get("/api/runs/m/plots/param_updates.png", params={"step": "1:3"}).status_code == 200
