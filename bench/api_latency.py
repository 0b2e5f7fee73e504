"""API latency: p50/p99 and requests/s over loopback HTTP vs the same reads in-process.

Usage::

    python bench/api_latency.py [--steps 500] [--requests 50] [--cold 8] [--write]

Writes one run (h=100, D=50, n=200, ``--steps`` states) to a temporary root, starts ``trajscope serve``
on it as a subprocess on 127.0.0.1, and times, at 1 and 16 concurrent clients (threads, one
keep-alive connection each):

* ``slice``        ``GET /api/runs/bench/vars/W?step=100:199&neuron=0:9`` (cached after the first)
* ``analysis``     ``GET /api/runs/bench/analysis/stable_rank?step=0:STEPS:10`` (cached after the first)
* ``plot cached``  ``GET /api/runs/bench/plots/loss.png``
* ``plot cold``    ``GET /api/runs/bench/plots/loss.png?step=0:K`` with a new ``K`` each time (never cached)

The baseline is the same read in-process on an opened dataset (no HTTP, no cache), measured in the
same run. ``--write`` replaces the ``## API latency`` section of BENCHMARKS.md with the table.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from trajscope.store import RunWriter, StoreRoot, open_run, two_layer_variables

SECTION = "## API latency"


def make_run(root: StoreRoot, steps: int, h: int = 100, D: int = 50, n: int = 200) -> None:
    rng = np.random.default_rng(0)
    writer = RunWriter.create(root, "bench", variables=two_layer_variables(),
                              sizes={"neuron": h, "feature": D, "sample": n}, capacity=steps,
                              static={"X": rng.normal(size=(n, D)), "y": np.where(np.arange(n) % 2, 1, -1)},
                              attrs={"config": {"train": {"lr": 1e-3}}})
    T = writer.chunk_steps
    for start in range(0, steps, T):
        k = min(T, steps - start)
        writer.write_block(start, {
            "W": rng.normal(size=(k, h, D)).astype(np.float32), "v": rng.normal(size=(k, h)).astype(np.float32),
            "loss": np.exp(-np.arange(start, start + k) / steps), "output": rng.normal(size=(k, n)).astype(np.float32),
            "step": np.arange(start, start + k), "t": np.arange(start, start + k) * 1e-3})
        writer.commit(start + k)
    writer.finish("complete")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, count: int, clients: int) -> tuple[np.ndarray, float]:
    """Latencies (s) of ``count`` calls of ``fn(i)`` per client, and the requests/s over all of them."""
    lat: list[float] = []
    lock = threading.Lock()
    counter = itertools.count()

    def worker(_: int) -> None:
        local = []
        for _ in range(count):
            i = next(counter)
            t0 = time.perf_counter()
            fn(i)
            local.append(time.perf_counter() - t0)
        with lock:
            lat.extend(local)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    return np.asarray(lat), len(lat) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--requests", type=int, default=50, help="requests per client at 1 client (a quarter of it each at 16)")
    ap.add_argument("--cold", type=int, default=8, help="cold plots in all (split over the clients)")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="trajscope-bench-")
    root = StoreRoot(tmp)
    make_run(root, args.steps)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from trajscope.cli import main; main()", "serve",
                             "--root", tmp, "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        ds = open_run("bench", root)
        from trajscope.analysis import PLOT_KINDS, QUANTITIES

        def png(fig) -> bytes:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            return buf.getvalue()

        S = args.steps
        cases = {
            "slice": ("/api/runs/bench/vars/W?step=100:199&neuron=0:9",
                      lambda i: ds["W"].sel(step=slice(100, 199)).isel(neuron=slice(0, 10)).values),
            "analysis": (f"/api/runs/bench/analysis/stable_rank?step=0:{S}:10",
                         lambda i: QUANTITIES["stable_rank"](ds, step=slice(0, S, 10)).compute()),
            "plot cached": ("/api/runs/bench/plots/loss.png", lambda i: png(PLOT_KINDS["loss"](ds))),
            "plot cold": (None, lambda i: png(PLOT_KINDS["loss"](ds, step=slice(0, S - 1 - i)))),
        }
        clients_local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(clients_local, "c"):
                clients_local.c = httpx.Client(base_url=base, timeout=300)
            return clients_local.c

        rows = []
        for name, (url, local_fn) in cases.items():
            if url is not None:
                assert client().get(url).status_code == 200  # warm the cache
            for clients in (1, 16):
                count = max(args.requests // (1 if clients == 1 else 4), 2)  # 16 clients: a quarter each
                if name == "plot cold":
                    count = max(args.cold // clients, 1)
                offset = 0 if clients == 1 else 10_000

                def http(i: int, url=url, offset=offset) -> None:
                    u = url or f"/api/runs/bench/plots/loss.png?step=0:{S - 1 - (i + offset) % (S - 2)}"
                    r = client().get(u)
                    assert r.status_code == 200, r.text

                lat_h, rps_h = timed(http, count, clients)
                # the in-process baseline draws a figure every time: time as many as the cold plots
                local_count = max(args.cold // clients, 1) if name.startswith("plot") else count
                lat_l, rps_l = timed(local_fn, local_count, clients)
                rows.append((name, clients, np.median(lat_h) * 1e3, np.percentile(lat_h, 99) * 1e3, rps_h,
                             np.median(lat_l) * 1e3, np.percentile(lat_l, 99) * 1e3, rps_l))
    finally:
        proc.terminate()
        proc.wait(20)
    head = ("| request | clients | HTTP p50 ms | HTTP p99 ms | HTTP req/s | in-process p50 ms | in-process p99 ms "
            "| in-process req/s | p50 ratio HTTP/in-process |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {n} | {c} | {a:.1f} | {b:.1f} | {r:.0f} | {d:.1f} | {e:.1f} | {q:.0f} | {a / d:.2f} |\n"
                   for n, c, a, b, r, d, e, q in rows)
    table = head + body
    print(table)
    if args.write:
        cpu = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        text = (f"{SECTION}\n\nCommand: `python bench/api_latency.py --steps {args.steps} --requests {args.requests} "
                f"--cold {args.cold} --write` ({cpu}; server = `trajscope serve` subprocess on 127.0.0.1, clients = threads with "
                "keep-alive connections; in-process = the same read on an opened dataset, no HTTP, no cache). "
                f"Run: h=100, D=50, n=200, {args.steps} states.\n\n{table}\n"
                "Cached slices and analyses are served from the response cache (keyed by run, committed steps "
                "and parameters); `plot cold` draws a new figure every request (a new step range each time).\n")
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        old = path.read_text() if path.exists() else "# Benchmarks\n"
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        path.write_text(new)


if __name__ == "__main__":
    main()
