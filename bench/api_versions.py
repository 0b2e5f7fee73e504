"""This API against an earlier one, in the same run: cache hits and ``/zarr`` byte ranges.

Usage::

    python bench/api_versions.py [--baseline REV] [--steps 400] [--requests 200] [--repeats 3] [--write]

Exports ``api/`` of git revision ``REV`` (default ``d7bb331``: hand-written caches, ranges answered by
reading the whole chunk) with ``git archive`` to a temporary folder, writes one run (h=100, D=50, n=200,
``--steps`` states: ``W`` chunks of several MiB), and starts two ``trajscope serve`` subprocesses on
127.0.0.1 over the same root — the baseline API and this worktree's — then times, for each, the same
requests over one keep-alive ``httpx`` connection each, alternating between the two servers request by
request (so both see the same background load):

* ``range 4 KiB``  ``GET /zarr/bench/W/c/0/0/0`` with ``Range: bytes=0-4095`` (a reader's partial read)
* ``chunk``        the whole chunk ``W/c/1/0/0``
* ``slice hit``    a cached ``/vars/W`` slice (response cache ``get`` on the event loop)
* ``analysis hit`` a cached analysis (response cache ``get_or_build``)

and reports p50 latency and requests/s for both and the ratio this/baseline (below 1 = faster).
``--write`` replaces the ``## API versions`` section of BENCHMARKS.md with the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from trajscope.store import StoreRoot

HERE = Path(__file__).resolve().parent
SECTION = "## API versions"


def _make_run():
    spec = importlib.util.spec_from_file_location("api_latency", HERE / "api_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_run, module.free_port


def serve(root: str, port: int, api_dir: str | None) -> subprocess.Popen:
    prelude = f"import trajscope.api as a; a.__path__[:] = [{api_dir!r}]; " if api_dir else ""
    return subprocess.Popen([sys.executable, "-c", prelude + "from trajscope.cli import main; main()", "serve",
                             "--root", root, "--port", str(port)], stderr=subprocess.DEVNULL)


def wait_up(url: str) -> None:
    for _ in range(600):
        try:
            httpx.get(url + "/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="d7bb331", help="git revision whose api/ is the baseline")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--requests", type=int, default=200, help="requests per case, server and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    make_run, free_port = _make_run()
    tmp = tempfile.mkdtemp(prefix="trajscope-bench-")
    old_api = os.path.join(tmp, "baseline")
    os.makedirs(old_api)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", args.baseline, "api"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", old_api], input=archive, check=True)
    root = os.path.join(tmp, "runs")
    make_run(StoreRoot(root), args.steps)
    chunk = os.path.getsize(os.path.join(root, "bench.zarr", "W", "c", "0", "0", "0"))
    ports = {"baseline": free_port(), "this": free_port()}
    procs = {"baseline": serve(root, ports["baseline"], os.path.join(old_api, "api")),
             "this": serve(root, ports["this"], None)}
    cases = {
        "range 4 KiB": ("/zarr/bench/W/c/0/0/0", {"Range": "bytes=0-4095"}, 206),
        "chunk": ("/zarr/bench/W/c/0/0/0", {}, 200),
        "slice hit": ("/api/runs/bench/vars/W?step=100:199&neuron=0:9", {}, 200),
        "analysis hit": (f"/api/runs/bench/analysis/stable_rank?step=0:{args.steps}:10", {}, 200),
    }
    lat: dict[tuple[str, str], list[float]] = {}
    try:
        clients = {}
        for name, port in ports.items():
            wait_up(f"http://127.0.0.1:{port}")
            clients[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        for name, client in clients.items():  # warm the caches, and check both answer the same bytes
            for path, headers, status in cases.values():
                assert client.get(path, headers=headers).status_code == status
        for path, headers, _ in cases.values():
            a, b = (clients[n].get(path, headers=headers).content for n in ("baseline", "this"))
            assert a == b, path
        for rep in range(args.repeats):
            for case, (path, headers, status) in cases.items():
                for _ in range(args.requests):  # alternate the servers request by request: same load for both
                    for name, client in clients.items():
                        t0 = time.perf_counter()
                        r = client.get(path, headers=headers)
                        lat.setdefault((case, name), []).append(time.perf_counter() - t0)
                        assert r.status_code == status
            print(f"# repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(20)
    n = args.requests * args.repeats
    head = ("| request | baseline p50 ms | this p50 ms | baseline req/s | this req/s | p50 ratio this/baseline |\n"
            "|---|---:|---:|---:|---:|---:|\n")
    rows = []
    for case in cases:
        p_old, p_new = (np.median(lat[(case, k)]) * 1e3 for k in ("baseline", "this"))
        r_old, r_new = (n / np.sum(lat[(case, k)]) for k in ("baseline", "this"))
        rows.append(f"| {case} | {p_old:.2f} | {p_new:.2f} | {r_old:.0f} | {r_new:.0f} | {p_new / p_old:.2f} |\n")
    table = head + "".join(rows)
    print(table)
    if args.write:
        cpu = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        text = (f"{SECTION}\n\nCommand: `python bench/api_versions.py --baseline {args.baseline} --steps {args.steps} "
                f"--requests {args.requests} --repeats {args.repeats} --write` ({cpu}; two `trajscope serve` "
                f"subprocesses on 127.0.0.1 over one root, the baseline's `api/` from `git archive`; one keep-alive "
                f"httpx client per server, sequential requests alternating between the servers; {n} requests per cell; req/s = requests / time spent in them; W chunk "
                f"{chunk / 2**20:.1f} MiB). The baseline reads the whole chunk to answer a range and keeps "
                "hand-written caches; this API reads only the range (os.pread) from the descriptor the store's "
                "check opened, and its caches are `cachetools` (LRUCache with getsizeof, TLRUCache).\n\n"
                f"{table}\n")
        path = HERE.parent / "BENCHMARKS.md"
        old = path.read_text()
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        path.write_text(pattern.sub(lambda _: text + "\n", old) if pattern.search(old)
                        else old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
