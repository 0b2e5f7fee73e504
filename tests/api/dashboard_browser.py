"""Shared pieces of the dashboard's browser tests: Debian's Chromium driven by Playwright, a page that
records console errors and every request, and readers of the uPlot charts' data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

DATA = "Object.fromEntries(Object.entries(window.trajscope.charts).map(([k, c]) => [k, c.u ? c.u.data : null]))"
LABELS = "id => window.trajscope.charts[id].u.series.slice(1).map(s => s.label)"


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
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.errors = []
    pg.requests = []
    pg.on("console", lambda msg: pg.errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: pg.errors.append(f"page error: {exc}"))
    # a request the browser aborted (the page navigated away, or the app cancelled it) is not a failure
    pg.on("requestfailed", lambda req: None if "ERR_ABORTED" in (req.failure or "")
          else pg.errors.append(f"request failed: {req.url} ({req.failure})"))
    pg.on("request", lambda req: pg.requests.append(req.url))
    yield pg
    context.close()


def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("TRAJSCOPE_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def loaded(page, n: int = 1) -> None:
    page.wait_for_function(f"(window.trajscope.loads || 0) >= {n}", timeout=60_000)


def only_local(page, url: str) -> None:
    others = [u for u in page.requests if not (u.startswith(url) or u.startswith("data:") or u.startswith("blob:"))]
    assert others == [], others


def commit(root, run_id: str, upto: int, finish: str | None = None) -> None:
    """Raise a live run's ``committed_steps`` to ``upto`` as its writer would (and finish it if asked)."""
    from trajscope.store import RunWriter

    stops_naming_a_live_writer(root, run_id)
    writer = RunWriter.reopen(root, run_id)
    try:
        writer.commit(upto)
        if finish:
            writer.finish(finish)
    finally:
        if not finish:
            writer.lock.release()
            names_a_live_writer(root, run_id)


#: lock file -> a descriptor of it holding its flock, as a live producer's writer lock does
_HELD_AS_LIVE: dict[str, int] = {}


def names_a_live_writer(root, run_id: str) -> None:
    """Make a released local lock name a live process (this one) and hold its ``flock``, as a live producer's lock
    does: the run reads as being written, not as one whose writer is gone (a released lock's file says
    "released"; a named process that holds no flock is no writer). :func:`commit` lets it go to write."""
    import fcntl
    import socket

    if root.is_local:
        path = root.lock_path(run_id)
        with open(path, "w") as f:
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _HELD_AS_LIVE[path] = fd


def stops_naming_a_live_writer(root, run_id: str) -> None:
    """Let go of the flock :func:`names_a_live_writer` holds (a writer of this process may then take the run)."""
    if root.is_local:
        fd = _HELD_AS_LIVE.pop(root.lock_path(run_id), None)
        if fd is not None:
            os.close(fd)
