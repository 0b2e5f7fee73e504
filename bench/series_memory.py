"""Benchmark: the server's peak memory for one ``/series/step_series`` request over a long run of tiny states,
computed whole (the way before) against piece by piece (``PIECE_STATES`` states at a time, as served now).

    python bench/series_memory.py --root DIR [--steps 1000000] [--port 18192]

Records (once) the run ``long`` under ``DIR``: the two-layer model with h=2, D=2, n=4 (16 bytes a state),
``--steps`` steps, every step. Then, for each mode, starts a fresh server process (uvicorn, 127.0.0.1), reads its
peak RSS (``VmHWM``) after the run's description, sends the dashboard's request
(``points=600&scale=log``, the whole run), and reads the peak again. Prints the growth per mode, the seconds,
and whether both answers are the same bytes (they must be).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVER = """
import sys, uvicorn
from trajscope.api import routes_series
from trajscope.api.app import create_app
if sys.argv[2] == "whole":
    routes_series.PIECE_STATES = 10**12
uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""

CONFIG = """name: long
seed: 0
data: {kind: synthetic, n: 4, dim: 2, mu: 0.4}
model: {width: 2}
init: {kind: balanced, scale: 1.0e-3}
train: {lr: 0.01, steps: %d}
"""


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as response:
        return response.read()


def measure(root: str, mode: str, port: int) -> tuple[float, float, bytes]:
    server = subprocess.Popen([sys.executable, "-c", SERVER, root, mode, str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                get(f"{base}/health")
                break
            except OSError:
                time.sleep(0.5)
        get(f"{base}/api/runs/long")
        before = peak_mib(server.pid)
        started = time.perf_counter()
        body = get(f"{base}/api/runs/long/series/step_series?points=600&scale=log")
        seconds = time.perf_counter() - started
        return peak_mib(server.pid) - before, seconds, body
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--port", type=int, default=18192)
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "long.zarr").exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "long.yaml").write_text(CONFIG % args.steps)
        subprocess.run(["trajscope", "produce", str(root / "long.yaml"), "--root", str(root), "--name", "long", "-q"],
                       check=True)
    results = {mode: measure(str(root), mode, args.port) for mode in ("whole", "pieces")}
    print(f"{'mode':<8} {'peak RSS growth MiB':>20} {'seconds':>8}")
    for mode, (growth, seconds, _) in results.items():
        print(f"{mode:<8} {growth:>20.0f} {seconds:>8.2f}")
    same = results["whole"][2] == results["pieces"][2]
    print(f"pieces / whole memory: {results['pieces'][0] / results['whole'][0]:.3f}; same answer: {same}")


if __name__ == "__main__":
    main()
