"""Dashboard load: page load to first chart, to all charts, and time to apply a live update.

Usage::

    python bench/dashboard_load.py [--root DIR] [--repeats 3] [--screenshots docs/screenshots]

Records two runs with the producer into ``--root`` (a temporary folder by default; runs already there
are reused): ``s6001`` (``configs/quickstart.yaml``: 6001 states, h=100, D=50, n=200) and ``s100k``
(the same config with h=4, D=4, n=20 and 99 999 steps: 100 000 states, every step recorded). For each it
also writes ``live-<run>``: the same arrays through the store's writer, left ``running`` one time
chunk short of the end. A uvicorn server on 127.0.0.1 serves the root; headless Chromium (Debian's,
through Playwright) opens the pages.

Measured, per run (median over ``--repeats``, each on a fresh server so its response cache is cold):

* ``first chart``: navigation start → the first chart has data (``window.trajscope.firstChartAt``);
* ``all charts``: navigation start → every chart drawn (``window.trajscope.loadedAt``);
* ``warm reload``: the same, reloading the page on the same server (responses cached);
* ``live update``: the live copy is left :data:`UPDATES` time chunks short; they are committed one at a
  time, each once the page has drawn the previous one: ``apply`` is the page's own time from noticing
  the new ``committed_steps`` to the charts drawn (median over the updates and repeats);
  ``commit→drawn`` adds the polling delay (the page polls once a second).
* ``live apply, lazy tails``: the same updates with the series route's in-memory path for small
  step ranges turned off (``routes_series.MEMORY_STATES = 0``): every tail computed on the lazy dataset,
  as the dashboard did before it — the baseline of the live update, measured in the same run.

Baseline, measured in the same run: the previous dashboard's way, every server-drawn figure of the run
(``GET /api/runs/<run>/plots/<kind>.png`` for each kind, in parallel, fresh server) for a page load,
and the same figures again after the commit (the previous page redrew them all on each commit).
Timings on the shared 2-core machine are noisy: compare the ratios, not the seconds; the load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from trajscope.api import routes_series
from trajscope.api.app import create_app
from trajscope.store import RunWriter, StoreRoot, open_run, run_attr

try:  # the two-layer variables moved out of the store with the model adapters
    from trajscope.producer.two_layer import variables as two_layer_variables
except ImportError:
    from trajscope.store import two_layer_variables

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
UPDATES = 3
#: the app's ``max_computations`` (0: its default, one per usable core, at least 2); ``--max-computations``
MAX_COMPUTATIONS = 0
RUNS = {
    "s6001": [],
    "s100k": ["--set", "train.steps=99999", "--set", "data.n=20", "--set", "data.dim=4", "--set", "model.width=4"],
}


class Server:
    """A uvicorn server in a thread on 127.0.0.1 (a new app each time: cold caches)."""

    def __init__(self, root: StoreRoot):
        config = uvicorn.Config(create_app(root, max_computations=MAX_COMPUTATIONS), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def produce(root: Path) -> None:
    for name, extra in RUNS.items():
        if (root / f"{name}.zarr").exists():
            continue
        cmd = [sys.executable, "-m", "trajscope", "produce", str(REPO / "configs/quickstart.yaml"), "--root", str(root),
               "--name", name, "-q", *extra]
        subprocess.run(cmd, check=True)


def live_copy(root: StoreRoot, name: str, short: int = UPDATES) -> tuple[str, int, int, int]:
    """``live-<name>``: the run's arrays rewritten through the writer, committed ``short`` chunks short.

    Returns ``(run_id, committed, total, chunk)``."""
    run_id = f"live-{name}"
    src = open_run(name, root)
    n = src.sizes["step"]
    chunk = int(src["W"].encoding["preferred_chunks"]["step"])
    if root.exists(run_id):
        root.delete(run_id)
    sizes = {d: src.sizes[d] for d in ("neuron", "feature", "sample")}
    writer = RunWriter.create(root, run_id, variables=two_layer_variables(), sizes=sizes, capacity=n,
                              static={"X": src["X"].values, "y": src["y"].values},
                              attrs={"config": run_attr(src, "config")},
                              chunk_bytes=chunk * sizes["neuron"] * sizes["feature"] * 4)
    chunk = writer.chunk_steps
    arrays = {k: src[k].values for k in ("W", "v", "loss", "output", "step", "t")}
    for a in range(0, n, chunk):
        writer.write_block(a, {k: v[a:a + chunk] for k, v in arrays.items()})
    committed = max(1, n - short * chunk)
    writer.commit(committed)
    writer.lock.release()
    return run_id, committed, n, chunk


def commit(root: StoreRoot, run_id: str, upto: int) -> None:
    writer = RunWriter.reopen(root, run_id)
    try:
        writer.commit(upto)
    finally:
        writer.lock.release()


def shot(page, path: Path) -> None:
    """A full-page screenshot, reduced to a 256-colour palette (small enough to commit)."""
    page.screenshot(path=str(path), full_page=True)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def load_page(page, url: str) -> dict[str, float]:
    page.goto(url)
    page.wait_for_function("(window.trajscope.loads || 0) >= 1", timeout=600_000)
    return page.evaluate("({first: window.trajscope.firstChartAt, all: window.trajscope.loadedAt})")


def figures(url: str, run_id: str) -> float:
    """Seconds to fetch every figure of the run in parallel (the previous dashboard's page load)."""
    with httpx.Client(base_url=url, timeout=600) as c:
        t0 = time.perf_counter()
        kinds = c.get(f"/api/runs/{run_id}/plots", params={"check": "true"}).json()["items"]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda u: c.get(u, params={"v": str(time.time())}).status_code, kinds.values()))
        assert all(code == 200 for code in codes), codes
        return time.perf_counter() - t0


def measure(root: StoreRoot, browser, name: str, repeats: int, shots: Path | None) -> dict[str, float]:
    out: dict[str, list[float]] = {k: [] for k in ("first", "all", "warm_first", "warm_all", "png", "apply",
                                                   "apply_lazy", "commit_drawn", "png_after")}
    memory_states = routes_series.MEMORY_STATES
    for r in range(repeats):
        with Server(root) as srv:
            out["png"].append(figures(srv.url, name))
        with Server(root) as srv:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            cold = load_page(page, f"{srv.url}/#/run/{name}")
            out["first"].append(cold["first"] / 1e3)
            out["all"].append(cold["all"] / 1e3)
            page.reload()
            page.wait_for_function("(window.trajscope.loads || 0) >= 1", timeout=600_000)
            warm = page.evaluate("({first: window.trajscope.firstChartAt, all: window.trajscope.loadedAt})")
            out["warm_first"].append(warm["first"] / 1e3)
            out["warm_all"].append(warm["all"] / 1e3)
            if shots is not None and r == 0 and name == "s6001":
                page.wait_for_function("document.querySelector('#phases').textContent.includes('t1')", timeout=600_000)
                shot(page, shots / "run-page.png")
            ctx.close()
        for lazy in (False, True):
            routes_series.MEMORY_STATES = 0 if lazy else memory_states
            applies, delays = live_updates(root, browser, name, shots if (r == 0 and not lazy) else None)
            out["apply_lazy" if lazy else "apply"] += applies
            if not lazy:
                out["commit_drawn"] += delays
        routes_series.MEMORY_STATES = memory_states
        with Server(root) as srv:
            out["png_after"].append(figures(srv.url, f"live-{name}"))
    return {k: statistics.median(v) for k, v in out.items()}


def live_updates(root: StoreRoot, browser, name: str, shots: Path | None) -> tuple[list[float], list[float]]:
    """Open ``live-<name>`` (left :data:`UPDATES` chunks short), commit one chunk at a time; per update the
    page's apply time and the commit→drawn time (seconds)."""
    run_id, committed, total, chunk = live_copy(root, name)
    applies, delays = [], []
    with Server(root) as srv:
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        load_page(page, f"{srv.url}/#/run/{run_id}")
        for upto in [min(total, committed + (i + 1) * chunk) for i in range(UPDATES)]:
            t0 = time.perf_counter()
            commit(root, run_id, upto)
            page.wait_for_function(f"(window.trajscope.lastUpdate || {{}}).committed === {upto}", timeout=600_000)
            delays.append(time.perf_counter() - t0)
            upd = page.evaluate("window.trajscope.lastUpdate")
            applies.append((upd["drawn"] - upd["detected"]) / 1e3)
        if shots is not None and name == "s6001":
            shot(page, shots / "live-run.png")
        ctx.close()
    return applies, delays


def compare_shot(root: StoreRoot, browser, shots: Path) -> None:
    with Server(root) as srv:
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        page = ctx.new_page()
        page.goto(f"{srv.url}/#/compare/s6001,s6001-lr")
        page.wait_for_function("(window.trajscope.loads || 0) >= 1", timeout=600_000)
        shot(page, shots / "comparison.png")
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, help="store root for the bench runs (default: a temporary folder)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshots", type=Path, help="also save run-page, live-run and comparison PNGs here")
    ap.add_argument("--max-computations", type=int, default=0, help="the server's heavy computations at once "
                    "(0: its default; 40 is what the default thread pool allowed before the work limiter)")
    args = ap.parse_args()
    global MAX_COMPUTATIONS
    MAX_COMPUTATIONS = args.max_computations
    load0 = os.getloadavg()
    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory(prefix="trajscope-dashboard-")
        args.root = Path(tmp.name)
    args.root.mkdir(parents=True, exist_ok=True)
    produce(args.root)
    root = StoreRoot(args.root)
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        if not (args.root / "s6001-lr.zarr").exists():
            subprocess.run([sys.executable, "-m", "trajscope", "produce", str(REPO / "configs/quickstart.yaml"),
                            "--root", str(args.root), "--name", "s6001-lr", "-q", "--set", "train.lr=5e-4"], check=True)
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for name in RUNS:
            states = open_run(name, root).sizes["step"]
            m = measure(root, browser, name, args.repeats, args.screenshots)
            rows.append((name, states, m))
        if args.screenshots:
            compare_shot(root, browser, args.screenshots)
        browser.close()
    print(f"\nmedian of {args.repeats} (live: of {args.repeats} x {UPDATES} updates); seconds; load average "
          f"{load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after; baselines: every server-drawn figure of the run "
          "(previous dashboard), lazy tails (live updates without the in-memory path)\n")
    print("| run | states | first chart | all charts | baseline: all figures | all charts / baseline | warm reload: first / all "
          "| live: apply | baseline: apply, lazy tails | apply / lazy | live: commit→drawn | baseline: figures again "
          "| commit→drawn / figures |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, states, m in rows:
        print(f"| {name} | {states} | {m['first']:.2f} | {m['all']:.2f} | {m['png']:.2f} | {m['all'] / m['png']:.2f} "
              f"| {m['warm_first']:.2f} / {m['warm_all']:.2f} | {m['apply']:.3f} | {m['apply_lazy']:.3f} "
              f"| {m['apply'] / m['apply_lazy']:.2f} | {m['commit_drawn']:.2f} "
              f"| {m['png_after']:.2f} | {m['commit_drawn'] / m['png_after']:.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
