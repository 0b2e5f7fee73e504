"""``/docs`` renders offline (issue 11 item 7): in a real headless Chromium (Debian's /usr/bin/chromium),
every request the page makes is logged by route interception and any request to another host is
aborted; the page must still render every operation of the API, and no request may have left the
server's own origin."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from trajscope.store import StoreRoot

from .conftest import make_run, serving

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")


def test_docs_render_every_operation_with_no_request_to_another_host(tmp_path):
    from playwright.sync_api import sync_playwright

    root = StoreRoot(tmp_path)
    make_run(root, "r", steps=8, chunk_steps=8)
    with serving(root) as srv, sync_playwright() as p:
        origin = urlsplit(srv.url).netloc
        spec = __import__("httpx").get(f"{srv.url}/openapi.json").json()
        operations = {(m.upper(), path) for path, item in spec["paths"].items() for m in item}
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            requests, foreign, errors = [], [], []

            def route(r):
                requests.append(r.request.url)
                if urlsplit(r.request.url).netloc != origin:
                    foreign.append(r.request.url)
                    r.abort()
                else:
                    r.continue_()

            page.route("**/*", route)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.url}/docs", wait_until="networkidle")
            page.wait_for_selector(".opblock", timeout=30_000)
            shown = set()
            for block in page.query_selector_all(".opblock"):
                method = block.query_selector(".opblock-summary-method").inner_text().strip().upper()
                path = block.query_selector(".opblock-summary-path").get_attribute("data-path")
                shown.add((method, path))
            title = page.query_selector(".information-container .title").inner_text()
        finally:
            browser.close()
    assert foreign == [], foreign
    assert errors == [], errors
    assert f"{srv.url}/docs/swagger/swagger-ui-bundle.js" in requests and f"{srv.url}/openapi.json" in requests
    assert shown == operations and len(shown) >= 10, (shown ^ operations)
    assert "trajscope" in title


def test_swagger_assets_ship_with_their_license(client):
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"):
        r = client.get(f"/docs/swagger/{name}")
        assert r.status_code == 200 and len(r.content) > 50, name
    assert "Apache License" in client.get("/docs/swagger/LICENSE").text
    assert client.get("/docs/swagger/..%2F..%2Fapp.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc loads from a CDN: not offered
