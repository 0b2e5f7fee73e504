"""Server memory under load: resident memory of ``trajscope serve`` with its heap bound and trimmed (``api/heap.py``)
against glibc's own behaviour (``TRAJSCOPE_SERVER_HEAP=glibc``), in one run; also trimmed only (``trim``), and glibc's threshold fixed at
128 KiB or 1 MiB instead of 4 MiB (``MALLOC_MMAP_THRESHOLD_``, which the server then leaves to glibc).

Usage::

    python bench/server_memory.py [--requests 300] [--clients 3] [--idle 20] [--repeats 2] [--quick] [--json]

Records two runs with ``trajscope produce configs/quickstart.yaml`` into a temporary root (the quickstart, 128 MB,
and one of width 300 over 3000 steps, 190 MB), then, for each repeat, serves the root once per variant (the
variants alternate, their order swapped each repeat) and sends the same seeded sequence of distinct requests
(``--requests``, from ``--clients`` threads): slices as JSON and ``.npy``, analyses, series, figures, the raw
store, listings. It samples the server's resident memory (``VmRSS``) every 0.25 s and reports, per variant:

* ``start``: after start-up, before any request;
* ``peak``: the highest sample during the load (``VmHWM``, the kernel's high-water mark, beside it);
* ``after``: right after the last answer;
* ``idle``: after ``--idle`` seconds without requests;
* the load's wall time and the median and 90th-percentile latency of a request (the cost of the bound: large
  blocks are mapped and unmapped each time).

Figures are the medians over the repeats. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: id -> (label, environment of the server)
VARIANTS = {"glibc": ("glibc (before)", {"TRAJSCOPE_SERVER_HEAP": "glibc"}),
            "trim": ("trim", {"TRAJSCOPE_SERVER_HEAP": "trim"}),
            "bound": ("bound 4 MiB + trim (now)", {"TRAJSCOPE_SERVER_HEAP": "bound"}),
            "bound128k": ("bound 128 KiB + trim", {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}),
            "bound1m": ("bound 1 MiB + trim", {"MALLOC_MMAP_THRESHOLD_": str(2**20)})}
RUNS = {"q": [], "wide": ["--set", "model.width=300", "--set", "train.steps=3000"]}
QUANTITIES = ["stable_rank", "effective_rank", "update_norms", "distance_from_init", "cone_fractions",
              "aligned_fraction", "neuron_norms", "balance_drift", "spectral_norms"]
SERIES = ["loss", "stable_rank", "update_norms", "distance_from_init", "cone_fractions", "step_series"]
FIGURES = ["alignment", "cones", "loss", "spectra", "param_norms"]


def requests_for(count: int, steps: dict[str, int], widths: dict[str, int], seed: int = 0) -> list[str]:
    """``count`` paths, drawn with a fixed seed so every variant gets the same sequence."""
    rng = random.Random(seed)

    def span(run: str) -> tuple[int, int]:
        a = rng.randrange(0, steps[run] - 10)
        return a, rng.randrange(a + 1, steps[run] + 1)

    paths = []
    for _ in range(count):
        run = rng.choice(sorted(steps))
        kind = rng.choices(["list", "var", "analysis", "series", "plot", "zarr"], [2, 25, 20, 25, 8, 10])[0]
        a, b = span(run)
        if kind == "list":
            paths.append("/api/runs")
        elif kind == "var":
            n0 = rng.randrange(0, widths[run] - 5)
            paths.append(f"/api/runs/{run}/vars/W?step={a}:{b}:{rng.choice([1, 5, 20])}&neuron={n0}:{n0 + 5}"
                         f"&format={rng.choice(['json', 'npy'])}")
        elif kind == "analysis":
            paths.append(f"/api/runs/{run}/analysis/{rng.choice(QUANTITIES)}?step={a}:{b}:{rng.choice([5, 20, 50])}")
        elif kind == "series":
            paths.append(f"/api/runs/{run}/series/{rng.choice(SERIES)}?step={a}:{b}&points={rng.choice([100, 400])}")
        elif kind == "plot":
            paths.append(f"/api/runs/{run}/plots/{rng.choice(FIGURES)}.png?step={a}:{b}")
        else:
            paths.append(f"/zarr/{run}/W/c/{rng.randrange(0, 8)}/0/0")
    return paths


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(root: Path, env: dict[str, str], paths: list[str], clients: int, idle: float) -> dict[str, float]:
    port = free_port()
    log = open(root.parent / f"server-{port}.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "trajscope", "serve", "--root", str(root), "--port", str(port)],
                              env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.25)
        time.sleep(1.0)
        start = rss_mib(server.pid)
        samples, stop = [], threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                samples.append(rss_mib(server.pid))

        def get(path: str) -> tuple[float, int]:
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(base + path, timeout=600) as answer:
                    answer.read()
                    code = answer.status
            except urllib.error.HTTPError as refused:
                refused.read()
                code = refused.code
            return time.perf_counter() - began, code

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(get, paths))
        wall = time.perf_counter() - began
        stop.set()
        sampler.join()
        after = rss_mib(server.pid)
        time.sleep(idle)
        latencies = sorted(t for t, _ in answers)
        return {"start": start, "peak": max(samples, default=after), "hwm": rss_mib(server.pid, "VmHWM"),
                "after": after, "idle": rss_mib(server.pid), "wall": wall,
                "p50": statistics.median(latencies), "p90": latencies[int(0.9 * (len(latencies) - 1))],
                "ok": sum(code == 200 for _, code in answers) / len(answers)}
    except BaseException:
        log.flush()
        sys.stderr.write(f"server ({env}) exited {server.poll()}; its log:\n"
                         + (root.parent / f"server-{port}.log").read_text()[-3000:] + "\n")
        raise
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds without requests before 'idle'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="60 requests, one repeat, 8 s idle")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--variants", type=lambda text: [v.strip() for v in text.split(",")], default=None,
                        help="a comma-separated subset of: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    if args.variants and set(args.variants) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(set(args.variants) - set(VARIANTS))}; choose from {list(VARIANTS)}")
    if args.quick:
        args.requests, args.repeats, args.idle = 60, 1, 8.0
    with tempfile.TemporaryDirectory(prefix="server-memory-") as tmp:
        root = Path(tmp) / "runs"
        for name, options in RUNS.items():
            subprocess.run([sys.executable, "-m", "trajscope", "produce", str(REPO / "configs/quickstart.yaml"),
                            "--root", str(root), "--name", name, "-q", *options], check=True, stdout=subprocess.DEVNULL)
        steps = {"q": 6000, "wide": 3000}
        widths = {"q": 100, "wide": 300}
        paths = requests_for(args.requests, steps, widths)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS
                                                      if not args.variants or name in args.variants}
        for repeat in range(args.repeats):
            order = list(results) if repeat % 2 == 0 else list(reversed(results))
            for name in order:
                results[name].append(measure(root, VARIANTS[name][1], paths, args.clients, args.idle))
    table = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
    if args.json:
        print(json.dumps({"requests": args.requests, "clients": args.clients, "repeats": args.repeats,
                          "idle_seconds": args.idle, "variants": table, "runs": results}))
        return
    print(f"{args.requests} requests from {args.clients} clients, {args.repeats} repeats (medians), idle {args.idle:.0f} s")
    print("| heap | start MiB | peak MiB (VmHWM) | after load MiB | idle MiB | load s | p50 s | p90 s | 200s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {VARIANTS[name][0]} | {row['start']:.0f} | {row['peak']:.0f} ({row['hwm']:.0f}) | {row['after']:.0f} | "
              f"{row['idle']:.0f} | {row['wall']:.1f} | {row['p50']:.3f} | {row['p90']:.3f} | {row['ok']:.0%} |")


if __name__ == "__main__":
    main()
