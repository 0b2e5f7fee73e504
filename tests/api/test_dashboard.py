"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import os

import pytest

from trajscope.store import RunWriter, StoreRoot

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda msg: pg.errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: pg.errors.append(f"page error: {exc}"))
    pg.on("requestfailed", lambda req: pg.errors.append(f"request failed: {req.url}"))
    yield pg
    context.close()


def figures_loaded(page) -> list[dict]:
    page.wait_for_selector("figure img", timeout=60_000)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
    return page.eval_on_selector_all("figure img", "els => els.map(i => ({src: i.src, w: i.naturalWidth, "
                                                   "h: i.naturalHeight, ok: i.complete}))")


def test_dashboard_lists_runs_and_shows_a_runs_figures(server, page):
    page.goto(server.url + "/")
    page.wait_for_selector("#runs tbody tr")
    rows = page.eval_on_selector_all("#runs tbody tr", "els => els.map(e => e.dataset.run)")
    assert rows == ["bad", "done", "live"]
    assert "running" in page.inner_text("#runs tr[data-run=live]")
    assert "complete" in page.inner_text("#runs tr[data-run=done]")
    page.click("text=done")
    page.wait_for_selector("#summary tbody tr", timeout=60_000)
    images = figures_loaded(page)
    assert len(images) >= 5, images
    assert all(i["ok"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    assert "plane" in page.text_content("#unavailable")  # D = 4: listed as not shown, not a broken image
    assert int(page.eval_on_selector_all("#summary tbody tr", "els => els.length")) > 10
    assert page.errors == []


def test_live_run_page_refreshes_by_itself(tmp_path, write_run, serve, page):
    root = StoreRoot(tmp_path)
    write_run(root, "grow", steps=24, chunk_steps=8, finish=None, commit_to=8)
    with serve(root) as srv:
        page.goto(f"{srv.url}/#/run/grow")
        page.wait_for_selector("#committed")
        assert page.inner_text("#committed").startswith("8 /")
        first = {i["src"] for i in figures_loaded(page)}
        writer = RunWriter.reopen(root, "grow")
        try:
            writer.commit(16)
        finally:
            writer.lock.release()
        page.wait_for_function("document.querySelector('#committed').textContent.startsWith('16 /')",
                               timeout=30_000)
        images = figures_loaded(page)
        assert all(i["w"] > 0 for i in images) and not first & {i["src"] for i in images}  # redrawn
        assert "live" in page.inner_text("#live")
        assert page.errors == []
