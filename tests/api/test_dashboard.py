"""The interactive dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Chart contents are read from the uPlot instances (``window.trajscope.charts[id].u.data``), never from
pixels, and checked against the stored arrays and independent numpy. Screenshots go to
``$TRAJSCOPE_ARTIFACTS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from trajscope.store import StoreRoot

from tests.api.dashboard_browser import (  # noqa: F401  (fixtures)
    CHROMIUM, DATA, LABELS, artifacts, browser, commit, loaded, names_a_live_writer, only_local, page,
    stops_naming_a_live_writer,
)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")


def test_run_list_status_final_loss_filter_sort(server, page, expected):
    page.goto(server.url + "/")
    page.wait_for_selector("#runs tbody tr")
    page.wait_for_function("document.querySelector('#runs tr[data-run=done] .final-loss').textContent !== '–'")
    rows = page.eval_on_selector_all("#runs tbody tr", "els => els.map(e => e.dataset.run)")
    assert rows == ["bad", "done", "live"]
    assert "running" in page.inner_text("#runs tr[data-run=live]")
    assert "20 / 48" in page.inner_text("#runs tr[data-run=live] .steps")
    final = float(page.inner_text("#runs tr[data-run=done] .final-loss"))
    assert final == pytest.approx(float(expected["done"]["loss"].values[-1]), rel=1e-3)
    page.fill("#filter", "running")
    assert page.eval_on_selector_all("#runs tbody tr", "els => els.map(e => e.dataset.run)") == ["live"]
    page.fill("#filter", "")
    page.click("#runs th[data-sort=committed_steps]")
    page.click("#runs th[data-sort=committed_steps]")  # descending
    assert page.eval_on_selector_all("#runs tbody tr", "els => els.map(e => e.dataset.run)") == ["done", "live", "bad"]
    only_local(page, server.url)
    assert page.errors == []


def test_run_page_draws_each_chart_from_the_api(server, page, expected, tmp_path):
    page.goto(f"{server.url}/#/run/done")
    loaded(page)
    page.wait_for_function("document.querySelector('#phases').textContent.includes('t1')")
    data = page.evaluate(DATA)
    ds = expected["done"]
    steps = ds["step"].values
    # log time by default: step 0 is not drawn, every other recorded state is (40 states < 2·points)
    for chart, nseries in {"loss": 2, "alignment": 6, "cones": 5, "rank": 2, "norms": 2, "singular": 4, "neurons": 6}.items():
        assert len(data[chart]) == 1 + nseries, chart
        assert data[chart][0] == steps[1:].tolist(), chart
        assert all(len(s) == len(steps) - 1 for s in data[chart][1:]), chart
    np.testing.assert_allclose(data["loss"][1], ds["loss"].values[1:])
    W = ds["W"].values.astype(np.float64)[1:]
    sv = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(data["rank"][1], (W**2).sum((1, 2)) / sv[:, 0] ** 2, rtol=1e-6)
    np.testing.assert_allclose(np.array(data["singular"][1:]).T, sv, rtol=1e-5)
    assert page.evaluate(LABELS, "loss") == ["loss L(t)", "O(1/t) envelope from t2 (theory)"]
    # every chart's y axis says what it measures
    ylabels = page.evaluate("Object.fromEntries(Object.entries(window.trajscope.charts).map(([k, c]) => [k, c.u.axes[1].label]))")
    assert ylabels == {"loss": "loss", "alignment": "cosine", "cones": "fraction of neurons", "rank": "rank",
                       "norms": "squared norm", "singular": "singular value", "neurons": "degrees",
                       "update_norms": "‖θp(k) − θp(k−1)‖F", "distance_from_init": "‖θp(k) − θp(0)‖F",
                       "frobenius_norms": "‖θp‖F"}, ylabels
    # hover shows values in the legend, written as the page's tables write numbers (4 significant digits)
    box = page.locator("#chart-loss .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    shown = page.locator("#chart-loss .u-legend .u-value").nth(1).inner_text()
    idx = page.evaluate("window.trajscope.charts.loss.u.legend.idx")
    value = data["loss"][1][idx]
    assert float(shown) == float(f"{value:.4g}") and shown == repr(float(f"{value:.4g}")).replace("e-0", "e-"), shown
    # log/linear toggle: linear time draws step 0 too
    page.uncheck("#chart-loss .toggle-logx")
    assert page.evaluate("window.trajscope.charts.loss.u.data[0].length") == len(steps)
    # downloads hold what the chart shows
    with page.expect_download() as dl:
        page.click("#chart-cones .dl-csv")
    lines = Path(dl.value.path()).read_text().strip().splitlines()
    assert lines[0].split(",")[0] == "step" and len(lines) == len(steps) - 1 + 1
    with page.expect_download() as dl:
        page.click("#chart-rank .dl-npy")
    arr = np.load(dl.value.path())
    assert arr.shape == (len(steps) - 1, 3)
    np.testing.assert_allclose(arr[:, 1], data["rank"][1])
    assert "/zarr/done" in page.inner_text("#snippet")
    assert page.evaluate("!document.querySelector('#summary-box').open && !document.querySelector('#config-box').open")
    page.click("#summary-box > summary")
    page.wait_for_selector("#summary tbody tr", timeout=60_000)
    page.screenshot(path=str(artifacts(tmp_path) / "run-page.png"), full_page=True)
    only_local(page, server.url)
    assert page.errors == []


def test_zoom_and_step_range_request_a_narrower_range(server, page):
    page.goto(f"{server.url}/#/run/done")
    loaded(page)
    page.requests.clear()
    box = page.locator("#chart-loss .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.55, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.9, y, steps=5)
    page.mouse.up()
    loaded(page, 2)
    ranges = [parse_qs(urlparse(u).query).get("step", [None])[0] for u in page.requests if "/series/" in u]
    assert ranges and all(r is not None for r in ranges), page.requests
    a, b = (int(v) for v in ranges[0].split(":"))
    assert 0 < a < b < 39
    x = page.evaluate("window.trajscope.charts.loss.u.data[0]")
    assert x[0] >= a and x[-1] <= b and len(x) == b - a + 1
    page.fill("#step-from", "10")
    page.fill("#step-to", "20")
    page.click("#apply-range")
    loaded(page, 3)
    assert page.evaluate("window.trajscope.charts.cones.u.data[0]") == list(range(10, 21))
    page.dblclick("#chart-loss .u-over")
    loaded(page, 4)
    assert len(page.evaluate("window.trajscope.charts.loss.u.data[0]")) == 39
    # a range past the run's end is asked of the loss alone, and the server's refusal said once, above the charts,
    # which stay as they are (each chart showed the refusal, blank); the boxes show the range the charts show
    page.requests.clear()
    page.fill("#step-from", "100")
    page.fill("#step-to", "200")
    page.click("#apply-range")
    page.wait_for_function("window.trajscope.refusedRanges === 1")
    note = page.inner_text("#range-refused")
    assert note.startswith("range not shown: ") and "no recorded state" in note and "unchanged" in note, note
    assert page.inner_text("#range-note").startswith("all steps")
    assert page.evaluate("[...document.querySelectorAll('.chart .note')].map(n => n.textContent).filter(Boolean)") == []
    assert len(page.evaluate("window.trajscope.charts.loss.u.data[0]")) == 39
    assert page.input_value("#step-from") == "" and page.input_value("#step-to") == ""
    asked = [u for u in page.requests if "/series/" in u]
    assert page.evaluate("window.trajscope.loads") == 4 and len(asked) == 1 and "/series/loss?" in asked[0], asked
    assert [e for e in page.errors if "400" not in e] == [] and len(page.errors) <= 1, page.errors


def test_a_run_produced_while_the_page_is_open_appears_and_grows(tmp_path, write_run, serve, page):
    root = StoreRoot(tmp_path / "runs")
    with serve(root) as srv:
        page.goto(srv.url + "/")
        page.wait_for_selector("#empty")
        arrays = write_run(root, "grow", steps=32, chunk_steps=8, finish=None, commit_to=8)
        page.wait_for_selector("#runs tr[data-run=grow]", timeout=30_000)  # appears without a reload
        page.evaluate("window.__sameDocument = true")
        page.click("#runs tr[data-run=grow] a")
        loaded(page)
        assert page.evaluate("window.trajscope.charts.loss.u.data[0]") == list(range(1, 8))
        commit(root, "grow", 16)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 15", timeout=30_000)
        commit(root, "grow", 24)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 23", timeout=30_000)
        assert page.evaluate("window.trajscope.appends") >= 2 and page.evaluate("window.trajscope.loads") == 1
        data = page.evaluate(DATA)
        assert all(len(s) == 23 for s in data["alignment"]) and data["cones"][0] == list(range(1, 24))
        # update norms need the state before each new one: appended from the last drawn state on, every
        # update from step 1 to 23 is there, the first of each appended range included
        assert data["update_norms"][0] == list(range(1, 24))
        labels = page.evaluate(LABELS, "update_norms")
        W = arrays["W"].astype(np.float64)[:24]
        np.testing.assert_allclose(data["update_norms"][1 + labels.index("W")],
                                   np.linalg.norm(np.diff(W, axis=0).reshape(23, -1), axis=1), rtol=1e-9)
        assert page.inner_text("#committed").startswith("24 /") and "live" in page.inner_text("#live")
        page.screenshot(path=str(artifacts(tmp_path) / "live-run.png"), full_page=True)
        commit(root, "grow", 32, finish="complete")
        page.wait_for_function("document.querySelector('#status').textContent === 'complete'", timeout=30_000)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 31", timeout=30_000)
        time.sleep(1.5)  # settled: no more polling once the run is complete
        n = len(page.requests)
        time.sleep(2.5)
        assert len(page.requests) == n
        assert page.evaluate("window.__sameDocument") is True  # never reloaded
        only_local(page, srv.url)
        assert page.errors == []


def test_a_live_run_pages_size_and_committed_label_follow_what_it_shows(tmp_path, write_run, serve, page):
    """The size cell follows the run's files (it was read once, when the page opened), and the "steps committed"
    label is never behind the charts: a series answer computed on a newer version than the poll's listing shows
    more states (found by a review: the charts ran a state ahead of the label)."""
    from trajscope.store import RunWriter

    root = StoreRoot(tmp_path / "runs")
    arrays = write_run(root, "grow", steps=32, h=40, D=50, chunk_steps=8, finish=None, commit_to=8)
    for chunk in (1, 2, 3):  # W's states past the committed ones not written yet, as with a producer
        os.unlink(os.path.join(root.run_url("grow"), f"W/c/{chunk}/0/0"))
    # the running runs' listing a poll reads says 8 states fewer than there are (a listing behind the version the
    # series answers are computed on)
    lagging = [True]

    def behind(route):
        if not lagging[0]:
            return route.continue_()
        body = route.fetch().json()
        for run in body["runs"]:
            run["committed_steps"] = max(8, run["committed_steps"] - 8)
        route.fulfill(json=body)

    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/grow")
        loaded(page)
        before = page.inner_text("#size")
        assert before == page.evaluate("n => bytes(n)", root.size_bytes("grow"))
        page.route("**/api/runs?size=false&status=running", behind)
        stops_naming_a_live_writer(root, "grow")
        writer = RunWriter.reopen(root, "grow")
        try:
            for start in (8, 16):
                writer.write_block(start, {k: arrays[k][start:start + 8] for k in ("W", "v", "loss", "output", "step", "t")})
            writer.commit(24)
        finally:
            writer.lock.release()
            names_a_live_writer(root, "grow")
        # the poll sees 16 states; the appended answers hold 24: the label says what the charts draw
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 23", timeout=30_000)
        page.wait_for_function("document.querySelector('#committed').textContent.startsWith('24 /')", timeout=10_000)
        time.sleep(2.5)  # later polls (16 states) do not take the label back
        assert page.inner_text("#committed").startswith("24 /")
        lagging[0] = False
        stops_naming_a_live_writer(root, "grow")
        writer = RunWriter.reopen(root, "grow")
        writer.write_block(24, {k: arrays[k][24:32] for k in ("W", "v", "loss", "output", "step", "t")})
        writer.commit(32)
        writer.finish("complete")
        page.wait_for_function("document.querySelector('#status').textContent === 'complete'", timeout=30_000)
        final = page.evaluate("n => bytes(n)", root.size_bytes("grow"))
        assert final != before
        page.wait_for_function(f"document.querySelector('#size').textContent === {final!r}", timeout=10_000)
        assert page.inner_text("#committed").startswith("32 /")
        only_local(page, srv.url)
        assert page.errors == []


def test_a_chart_computed_on_an_older_version_is_caught_up_and_the_label_says_what_all_show(
        tmp_path, write_run, serve, page):
    """Found by a review: a commit landing between two charts' answers left the first chart behind for good (the
    label, raised by the newer answers, made the poll see no change). The label says the states every chart shows,
    and a chart behind the run's count is appended to at the next poll."""
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "grow", steps=32, chunk_steps=8, finish=None, commit_to=8)
    committed_between = []

    def commit_after_the_loss(route):  # the first chart answered (8 states); a commit lands before the others ask
        if "/series/loss" not in route.request.url and not committed_between:
            commit(root, "grow", 16)
            committed_between.append(True)
        route.continue_()

    with serve(root) as srv:
        page.route("**/series/**", commit_after_the_loss)
        page.goto(f"{srv.url}/#/run/grow")
        loaded(page)
        assert committed_between
        assert page.inner_text("#committed").startswith("8 /")  # (the loss chart shows 8 states)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 15", timeout=30_000)
        page.wait_for_function("document.querySelector('#committed').textContent.startsWith('16 /')", timeout=10_000)
        data = page.evaluate(DATA)
        assert all(d[0][-1] == 15 for k, d in data.items() if d and k != "loss_envelope"), {k: d[0][-1] for k, d in
                                                                                            data.items() if d}
        only_local(page, srv.url)
        assert page.errors == []


def test_zooming_a_live_run_in_and_out_keeps_every_chart_in_order_and_the_last_zoom_wins(
        tmp_path, write_run, serve, page):
    """Found by a review: back to all steps on a live run, a catch-up append that began on the zoomed data landed on
    the reloaded whole run, which then held the run twice, out of order; a double-click during a drag's probe was
    undone by the probe's answer; a refusal vanished at the next redraw."""
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "grow", steps=32, chunk_steps=8, finish=None, commit_to=8)
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/grow")
        loaded(page)
        page.fill("#step-from", "2")
        page.fill("#step-to", "5")
        page.click("#apply-range")
        loaded(page, 2)
        commit(root, "grow", 16)
        time.sleep(1.5)  # polled while zoomed: nothing appended to the zoomed charts
        assert page.evaluate("window.trajscope.charts.loss.u.data[0]") == [2, 3, 4, 5]
        page.click("#reset-range")
        commit(root, "grow", 24)
        loaded(page, 3)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 23", timeout=30_000)
        time.sleep(2.5)
        for key, d in page.evaluate(DATA).items():
            assert d[0] == list(range(1, 24)), (key, d[0])  # (every chart: each state once, in order)
        # the last zoom asked wins, whenever the probes answer
        page.evaluate("(c => { c.onZoom([2, 5]); c.onZoom(null); })(window.trajscope.charts.loss)")
        time.sleep(1.5)
        assert page.evaluate("window.trajscope.page.range") is None and page.input_value("#step-from") == ""
        # a refusal stays said while the live run is redrawn
        page.fill("#step-from", "900")
        page.fill("#step-to", "1000")
        page.click("#apply-range")
        page.wait_for_function("window.trajscope.refusedRanges === 1")
        commit(root, "grow", 32)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 31", timeout=30_000)
        assert page.inner_text("#range-refused").startswith("range not shown: ")
        assert page.evaluate("[fmt(0.00099996), fmt(999999999999999.5), fmt(12345.6), fmt(1234.5), fmt(0.5)]") == [
            "0.001", "1e+15", "12,350", "1,235", "0.5"]
        only_local(page, srv.url)
        assert [e for e in page.errors if "400" not in e] == [], page.errors


def test_comparing_two_runs_overlays_both(server, page, expected, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_selector("#runs tbody tr")
    page.check("#runs tr[data-run=done] .pick")
    page.check("#runs tr[data-run=live] .pick")
    page.click("#compare")
    loaded(page)
    data = page.evaluate(DATA)
    labels = page.evaluate(LABELS, "cmp-loss")
    assert len(data["cmp-loss"]) == 3 and len(labels) == 2
    assert labels[0].startswith("done (") and "seed=0" in labels[0] and "seed=1" in labels[1]
    x = np.array(data["cmp-loss"][0])
    assert x.tolist() == list(range(1, 40))  # done: 40 states, live: 20 committed; joined on steps
    done, live = (np.array([np.nan if v is None else v for v in s]) for s in data["cmp-loss"][1:])
    np.testing.assert_allclose(done, expected["done"]["loss"].values[1:])
    np.testing.assert_allclose(live[:19], expected["live"]["loss"].values[1:20])
    assert np.isnan(live[19:]).all()
    assert len(data["cmp-alignment"]) == 5 and len(data["cmp-rank"]) == 3
    ylabels = page.evaluate("Object.values(window.trajscope.charts).filter(c => c.u).map(c => c.u.axes[1].label)")
    assert ylabels == ["loss", "cosine", "stable rank", "‖θ(k) − θ(0)‖"], ylabels
    assert "seed" in page.inner_text("#differing")
    page.screenshot(path=str(artifacts(tmp_path) / "comparison.png"), full_page=True)
    only_local(page, server.url)
    assert page.errors == []


def test_failed_run_and_a_run_without_commits(tmp_path, server, page, write_run, serve):
    page.goto(f"{server.url}/#/run/bad")
    loaded(page)
    assert page.inner_text("#status") == "failed"
    assert len(page.evaluate("window.trajscope.charts.loss.u.data[0]")) == 7  # NaN in W does not stop the page
    assert page.errors == []
    only_local(page, server.url)
    page.requests.clear()
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "fresh", steps=16, chunk_steps=8, finish=None, commit_to=0)
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/fresh")
        page.wait_for_selector("#waiting")
        assert page.evaluate("window.trajscope.loads || 0") == 0  # nothing asked of a run with no states
        page.fill("#step-from", "0")  # a range typed before any commit: refused once (found by a review: every
        page.fill("#step-to", "10")  # chart kept the server's refusal after the states came)
        page.click("#apply-range")
        page.wait_for_function("window.trajscope.refusedRanges === 1")
        assert "no committed states yet" in page.inner_text("#range-refused")
        commit(root, "fresh", 8)
        loaded(page)
        assert page.evaluate("window.trajscope.charts.loss.u.data[0]") == list(range(1, 8))
        only_local(page, srv.url)
    assert [e for e in page.errors if "422" not in e and "400" not in e] == [] and len(page.errors) <= 1, page.errors


def test_a_run_whose_writer_is_gone_stops_being_followed_and_is_followed_again_once_resumed(
        tmp_path, write_run, serve, page):
    """A running run whose producer was killed shows "writer gone" and is no longer polled every second; a
    ``trajscope resume`` (here: its writer committing again) is noticed within a few seconds, no reload."""
    import socket
    import subprocess
    import sys

    root = StoreRoot(tmp_path / "runs")
    write_run(root, "gone", steps=32, chunk_steps=8, finish=None, commit_to=8)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(root.lock_path("gone")).write_text(f"pid {dead.pid} on {socket.gethostname()}\n")  # its producer: killed
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/gone")
        loaded(page)
        page.evaluate("window.__sameDocument = true")
        assert "writer gone" in page.inner_text("#status") and page.inner_text("#live") == ""
        commit(root, "gone", 16)  # resumed: a live writer holds the run and commits
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 15", timeout=30_000)
        page.wait_for_function("document.querySelector('#live').textContent.includes('live')", timeout=30_000)
        assert "writer gone" not in page.inner_text("#status")
        commit(root, "gone", 32, finish="complete")
        page.wait_for_function("document.querySelector('#status').textContent === 'complete'", timeout=30_000)
        time.sleep(1.5)  # settled: a finished run is not polled
        n = len(page.requests)
        time.sleep(6)
        assert len(page.requests) == n
        assert page.evaluate("window.__sameDocument") is True
        only_local(page, srv.url)
    assert page.errors == []
