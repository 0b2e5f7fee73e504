"""Slow requests queue behind the work limiter and never starve ``/health``; abandoned ones are not computed.

Found by a review: 40 slow requests (each a few seconds of analysis) held every thread of the server, so
``/health`` answered after 32 s (the image's health check gives 5 s), and requests whose clients had already
gone kept the server computing for half a minute. A real uvicorn server; the analysis is made slow here by
wrapping the route's computation with a sleep (counted).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from trajscope.store import StoreRoot


@pytest.fixture()
def slow_analysis(monkeypatch):
    """Every analysis computation takes 1.5 s more; ``started`` counts those that began."""
    from trajscope.api import routes_analysis

    started: list[float] = []
    real = routes_analysis.call

    def slow(*args, **kwargs):
        started.append(time.monotonic())
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes_analysis, "call", slow)
    return started


def test_slow_requests_queue_and_abandoned_ones_are_not_computed(tmp_path, write_run, serve, slow_analysis):
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "r", steps=16, chunk_steps=8)
    with serve(root, max_computations=1) as srv:
        def abandoned(i: int) -> None:  # a client that gives up after 0.3 s (distinct requests: no cache sharing)
            try:
                httpx.get(f"{srv.url}/api/runs/r/analysis/stable_rank", params={"step": f"0:{8 + i}"}, timeout=0.3)
            except httpx.TimeoutException:
                pass

        clients = [threading.Thread(target=abandoned, args=(i,)) for i in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        srv.app.state.trajscope.root_problem()  # (a check that stands: answered on the event loop)
        began = time.monotonic()
        health = httpx.get(f"{srv.url}/health", timeout=10)
        assert health.status_code == 200 and time.monotonic() - began < 1.0
        srv.app.state.trajscope._root_checked = None  # a check due: made in a thread of its own, not behind the work
        began = time.monotonic()
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200 and time.monotonic() - began < 1.0
        listing = httpx.get(f"{srv.url}/api/runs", timeout=10)  # the default pool's threads are free
        assert listing.status_code == 200 and time.monotonic() - began < 2.0
        time.sleep(4)  # what was queued has had its turn by now
        assert 1 <= len(slow_analysis) <= 2, len(slow_analysis)  # not 8: the gone clients' turns were skipped
        kept = httpx.get(f"{srv.url}/api/runs/r/analysis/stable_rank", params={"step": "0:3"}, timeout=30)
        assert kept.status_code == 200 and len(kept.json()["result"]["values"]) == 4  # one that waits is answered
