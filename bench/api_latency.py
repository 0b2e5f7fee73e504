"""API latency: p50/p99 and requests/s over loopback HTTP vs the same reads in-process.

Usage::

    python bench/api_latency.py [--steps 500] [--requests 200] [--cold 8] [--repeats 3]
                                [--cases slice,analysis,...] [--client asyncio|threads] [--write]

Writes one run (h=100, D=50, n=200, ``--steps`` states) to a temporary root, starts ``trajscope serve``
on it as a subprocess on 127.0.0.1, and times, at 1 and 16 concurrent clients (one keep-alive
connection each):

* ``slice``        ``GET /api/runs/bench/vars/W?step=100:199&neuron=0:9`` (cached after the first)
* ``analysis``     ``GET /api/runs/bench/analysis/stable_rank?step=0:STEPS:10`` (cached after the first)
* ``plot cached``  ``GET /api/runs/bench/plots/loss.png``
* ``plot cold``    ``GET /api/runs/bench/plots/loss.png?step=0:K`` with a new ``K`` each time (never cached)

The load generator must not eat the CPU it measures (client and server share the cores): the default
``--client asyncio`` is one event loop in this process speaking raw HTTP/1.1 over ``asyncio`` streams
(a few tens of microseconds of client CPU per request); ``--client threads`` is the former generator
(one ``httpx.Client`` per thread, same GIL), kept for comparison. The table reports the CPU the client
and the server used during each measurement, as a share of one core.

The baseline is the same read in-process on an opened dataset (no HTTP, no cache), measured in the
same run. Every case is measured ``--repeats`` times, the cases interleaved (all cases, then all again),
and the table shows the median of each column over the repeats. ``--api-dir DIR`` serves the
``trajscope.api`` package from DIR instead (e.g. an older ``api/`` exported with ``git archive``) to
compare versions. ``--write`` replaces the ``## API latency`` section of BENCHMARKS.md with the table.
"""

from __future__ import annotations

import argparse
import asyncio
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

from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.producer.two_layer import variables as two_layer_variables

SECTION = "## API latency"
CASES = ("slice", "analysis", "plot cached", "plot cold")


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; ``nan`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a GET and counts the response bytes (the body
    is not kept: the load generator must stay cheap next to the server)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future | None = None
        self.head = b""
        self.left = -1  # body bytes still to come; -1 while the head is incomplete

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get(self, path: str, host: str) -> asyncio.Future:
        self.done = asyncio.get_running_loop().create_future()
        self.head, self.left = b"", -1
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.left < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", self.head[:end])
            if length is None:
                self.done.set_exception(RuntimeError(f"no Content-Length in {self.head[:200]!r}"))
                return
            self.left = int(length.group(1)) - (len(self.head) - end - 4)
            self.head = self.head[: end + 4 + 300]  # the status line, and the start of an error body
        else:
            self.left -= len(data)
        if self.left <= 0 and not self.done.done():
            self.done.set_result(self.head)

    def connection_lost(self, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("the server closed the connection"))


async def _connection(host: str, port: int, paths, count: int, lat: list[float]) -> None:
    """``count`` GETs over one keep-alive connection."""
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(_Client, host, port)
    try:
        for _ in range(count):
            path = next(paths)
            t0 = time.perf_counter()
            head = await conn.get(path, f"{host}:{port}")
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"GET {path}: {head!r}")
    finally:
        transport.close()


def timed_asyncio(base: str, path_of, count: int, clients: int) -> tuple[np.ndarray, float]:
    """Latencies (s) of ``count`` GETs per client (``clients`` connections on one event loop), and the
    requests/s over all of them."""
    host, port = base.removeprefix("http://").split(":")
    counter = itertools.count()
    paths = (path_of(next(counter)) for _ in itertools.count())
    lat: list[float] = []

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_connection(host, int(port), paths, count, lat) for _ in range(clients)))
        return time.perf_counter() - t0

    wall = asyncio.run(run())
    return np.asarray(lat), len(lat) / wall


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
    ap.add_argument("--requests", type=int, default=200,
                    help="requests per client at 1 client (a quarter of it each at 16)")
    ap.add_argument("--cold", type=int, default=8, help="cold plots in all (split over the clients)")
    ap.add_argument("--repeats", type=int, default=3, help="measure every case this many times, interleaved; "
                    "the table shows medians")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--client", choices=("asyncio", "threads"), default="asyncio",
                    help="asyncio: one event loop, raw HTTP (lean); threads: one httpx.Client per thread")
    ap.add_argument("--api-dir", help="serve trajscope.api from this directory (compare another version)")
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = ap.parse_args()
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    tmp = tempfile.mkdtemp(prefix="trajscope-bench-")
    root = StoreRoot(tmp)
    make_run(root, args.steps)
    port = free_port()
    prelude = ""
    if args.api_dir:
        prelude = f"import trajscope.api as a; a.__path__[:] = [{os.path.abspath(args.api_dir)!r}]; "
    proc = subprocess.Popen([sys.executable, "-c", prelude + "from trajscope.cli import main; main()", "serve",
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

        for name in names:
            url = cases[name][0]
            if url is not None:
                assert client().get(url).status_code == 200  # warm the cache
        results: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        cold_offset = itertools.count()
        for rep in range(args.repeats):
            for name in names:
                url, local_fn = cases[name]
                for clients in (1, 16):
                    count = max(args.requests // (1 if clients == 1 else 4), 2)  # 16 clients: a quarter each
                    if name == "plot cold":
                        count = max(args.cold // clients, 1)
                    base_i = next(cold_offset) * 100_000

                    def path_of(i: int, url=url, base_i=base_i) -> str:  # cold plots: a new range each time
                        return url or f"/api/runs/bench/plots/loss.png?step=0:{S - 1 - (i + base_i) % (S - 2)}"

                    def http(i: int) -> None:
                        r = client().get(path_of(i))
                        assert r.status_code == 200, r.text

                    cpu_c, cpu_s, t0 = time.process_time(), cpu_seconds(proc.pid), time.perf_counter()
                    if args.client == "asyncio":
                        lat_h, rps_h = timed_asyncio(base, path_of, count, clients)
                    else:
                        lat_h, rps_h = timed(http, count, clients)
                    wall = time.perf_counter() - t0
                    client_cpu = (time.process_time() - cpu_c) / wall * 100
                    server_cpu = (cpu_seconds(proc.pid) - cpu_s) / wall * 100
                    # the in-process baseline draws a figure every time: time as many as the cold plots
                    local_count = max(args.cold // clients, 1) if name.startswith("plot") else count
                    lat_l, rps_l = timed(local_fn, local_count, clients)
                    row = (np.median(lat_h) * 1e3, np.percentile(lat_h, 99) * 1e3, rps_h, client_cpu, server_cpu,
                           np.median(lat_l) * 1e3, np.percentile(lat_l, 99) * 1e3, rps_l)
                    results.setdefault((name, clients), []).append(row)
                    print(f"# repeat {rep + 1}/{args.repeats} {name} x{clients}: HTTP p50 {row[0]:.1f} ms, "
                          f"{row[2]:.0f} req/s", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(20)
    rows = [(n, c, *np.median(np.asarray(v), axis=0)) for (n, c), v in results.items()]
    head = ("| request | clients | HTTP p50 ms | HTTP p99 ms | HTTP req/s | client CPU % | server CPU % "
            "| in-process p50 ms | in-process p99 ms | in-process req/s | p50 ratio HTTP/in-process |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {n} | {c} | {a:.1f} | {b:.1f} | {r:.0f} | {cc:.0f} | {sc:.0f} | {d:.1f} | {e:.1f} | {q:.0f} "
                   f"| {a / d:.2f} |\n" for n, c, a, b, r, cc, sc, d, e, q in rows)
    table = head + body
    print(table)
    if args.write:
        cpu = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        clients_text = ("one asyncio event loop in the bench process, raw HTTP/1.1, one keep-alive connection per "
                        "client" if args.client == "asyncio" else "threads, one httpx.Client (keep-alive) each")
        text = (f"{SECTION}\n\nCommand: `python bench/api_latency.py --steps {args.steps} --requests {args.requests} "
                f"--cold {args.cold} --repeats {args.repeats} --client {args.client} --write` ({cpu}; server = "
                f"`trajscope serve` subprocess on 127.0.0.1; clients = {clients_text}; in-process = the same read "
                f"on an opened dataset, no HTTP, no cache). Run: h=100, D=50, n=200, {args.steps} states. Each "
                f"cell is the median over {args.repeats} interleaved repeats; client/server CPU % = CPU time of "
                "the load generator / the server process during the HTTP measurement, per wall second "
                "(100 = one core).\n\n"
                f"{table}\n"
                "Cached slices and analyses are served from the response cache (keyed by run version and "
                "parameters) on the event loop; `plot cold` draws a new figure every request (a new step "
                "range each time).\n")
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        old = path.read_text() if path.exists() else "# Benchmarks\n"
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        path.write_text(new)


if __name__ == "__main__":
    main()
