"""The dashboard keeps telling the truth as things change under it (found by a review in a real browser):
labels, a killed producer, a deleted run, a server that goes away and comes back, refused charts, CSV labels.

Debian's Chromium driven by Playwright, as ``test_dashboard.py``; runs written by the store's own writer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from trajscope.store import StoreRoot
from trajscope.store.run_attrs import delete_run, tag_run

from tests.api.dashboard_browser import CHROMIUM, browser, commit, loaded, only_local, page  # noqa: F401

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")

ROWS = "els => els.map(e => e.dataset.run)"


def _kill_its_producer(root: StoreRoot, run_id: str) -> None:
    """Make the run's lock name a process of this host that has exited (what a SIGKILLed producer leaves)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(root.lock_path(run_id)).write_text(f"pid {dead.pid} on {socket.gethostname()}\n")


def test_the_run_list_shows_labels_follows_a_killed_producer_and_recovers_from_a_lost_server(
        tmp_path, write_run, serve, page):
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "short", steps=16, chunk_steps=8)  # config train.steps=16
    write_run(root, "long", steps=160, chunk_steps=8)  # train.steps=160: holds "16" too
    write_run(root, "live", steps=32, chunk_steps=8, finish=None, commit_to=8)
    write_run(root, "ends", steps=32, chunk_steps=8, finish=None, commit_to=8)
    tag_run("short", root, add=["baseline", "lr=0.1"], note="the first, try")
    write_run(root, "blown", steps=8, chunk_steps=8)
    document = Path(root.run_url("blown")) / "zarr.json"  # as finish stores a run whose last loss is NaN
    meta = json.loads(document.read_text())
    meta["attributes"].update(final_loss=None, not_finite={"final_loss": "nan"})
    document.write_text(json.dumps(meta))
    with serve(root) as srv:
        page.goto(srv.url + "/")
        page.wait_for_selector("#runs tr[data-run=live]")
        # a diverged run's final loss says so (its attributes hold null, and the text in not_finite)
        page.wait_for_function("document.querySelector('#runs tr[data-run=blown] .final-loss').textContent"
                               " === 'nan (diverged)'", timeout=15_000)
        page.wait_for_function("document.querySelector('#runs tr[data-run=short] .final-loss').textContent !== '–'",
                               timeout=15_000)
        assert "diverged" not in page.inner_text("#runs tr[data-run=short] .final-loss")
        assert page.inner_text("#runs tr[data-run=short] .tag:first-child") == "baseline"
        assert page.get_attribute("#runs tr[data-run=short] a", "title") == "the first, try"
        for text, shown in [("baseline", ["short"]), ("lr=0.1", ["short"]), ("train.steps=16", ["short"]),
                            ("train.steps=160", ["long"]), ("train.steps=1", []), ("lon", ["long"]),
                            ("train.steps=1.6e1", ["short"])]:  # (a number written another way: found by a review)
            page.fill("#filter", text)
            assert page.eval_on_selector_all("#runs tbody tr", ROWS) == shown, text
        page.fill("#filter", "")
        tag_run("long", root, add=["keep"])  # labelled while the page is open: shown at the next listing
        page.wait_for_function("document.querySelector('#runs tr[data-run=long]').textContent.includes('keep')",
                               timeout=15_000)
        assert page.inner_text("#runs tr[data-run=live] .status-running") == "running"
        _kill_its_producer(root, "live")  # nothing else about the run changes
        page.wait_for_function(
            "document.querySelector('#runs tr[data-run=live]').textContent.includes('writer gone')", timeout=15_000)
        assert "trajscope resume live" in page.get_attribute("#runs tr[data-run=live] td.status-running", "title")
        page.fill("#filter", "writer gone")  # (what the row shows is found: a review)
        assert page.eval_on_selector_all("#runs tbody tr", ROWS) == ["live"]
        page.fill("#filter", "")
        # with no run live any more, a run that ends while the page is open shows its final size (found by a
        # review: the size fetched after it ended was not drawn)
        commit(root, "ends", 32, finish="complete")
        page.wait_for_function(
            "document.querySelector('#runs tr[data-run=ends]').textContent.includes('complete')", timeout=15_000)
        size = next(r["size_bytes"] for r in httpx.get(f"{srv.url}/api/runs").json()["runs"] if r["run_id"] == "ends")
        page.wait_for_function(f"document.querySelector('#runs tr[data-run=ends] td:last-child').textContent"
                               f" === bytes({size})", timeout=15_000)

        page.evaluate("window.__sameDocument = true")
        page.route("**/api/runs*", lambda route: route.abort())  # the server is unreachable
        page.wait_for_function("document.querySelector('#error').textContent.includes('cannot reach the server')",
                               timeout=15_000)
        page.unroute("**/api/runs*")  # ...and back
        page.wait_for_function("document.querySelector('#error').textContent === ''", timeout=15_000)
        assert page.evaluate("window.__sameDocument") is True
        only_local(page, srv.url)
    page.errors[:] = [e for e in page.errors if "ERR_FAILED" not in e]  # (the aborted requests)
    assert page.errors == []


def test_a_run_page_says_when_its_run_is_deleted_and_shows_why_a_chart_is_empty(tmp_path, write_run, serve, page):
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "doomed", steps=32, chunk_steps=8, finish=None, commit_to=0)
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/doomed")
        page.wait_for_selector("#waiting")
        commit(root, "doomed", 8)
        loaded(page)
        assert page.query_selector("#waiting") is None  # the charts are there: no "no committed steps yet"
        assert page.evaluate("window.trajscope.charts.loss.u.data[0]") == list(range(1, 8))

        # a chart drawn from all the columns of its answer shows why the server refused it
        page.fill("#neurons", "999")
        page.click("#apply-neurons")
        page.wait_for_function("document.querySelector('#chart-neurons .note').textContent.includes('out of range')",
                               timeout=15_000)

        # labels in a CSV header are quoted (RFC 4180): the alignment chart's "cos(w̄+, x+)"
        csv = page.evaluate("tableCSV(['step', 'cos(w̄+, x+)', 'a \"b\"'], [[1, 2], [0.5, null], [3, 4]])")
        assert csv == 'step,"cos(w̄+, x+)","a ""b"""\n1,0.5,3\n2,,4\n'

        commit(root, "doomed", 16)
        page.wait_for_function("window.trajscope.charts.loss.u.data[0].length === 15", timeout=30_000)
        delete_run("doomed", root)
        page.wait_for_function("document.querySelector('#error').textContent.includes('no longer under the served root')",
                               timeout=15_000)
        assert page.inner_text("#live") == ""
        time.sleep(1.5)
        n = len(page.requests)
        time.sleep(3)
        assert len(page.requests) == n  # no longer polled
        only_local(page, srv.url)
    assert [e for e in page.errors if "400" not in e] == []  # (the refused rows answer 400)
