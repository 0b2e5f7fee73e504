"""Benchmark: how long a request to an S3 endpoint that fails takes to give up, with the retries a store root sets
(``StoreRoot``: botocore "standard" mode, 5 attempts, inside 2 of s3fs) against s3fs's and botocore's defaults
(5 × 5 "legacy" attempts), in the same run.

    python bench/s3_retries.py [--read-timeout 1] [--repeats 3]

Two endpoints on 127.0.0.1, started here: one that accepts connections and never answers (each attempt costs the
read timeout: s3fs's default is 15 s, ``--read-timeout`` shortens it for both configurations alike), and one that
answers every request ``503 SlowDown`` (throttling: how long a write rides it out). For each, a listing
(``run_ids``) or a PUT (``pipe_file``) is timed; prints the attempts the endpoint saw and the seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class Throttling(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(503)
        self.send_header("Content-Length", str(len(SLOW_DOWN)))
        self.end_headers()
        self.wfile.write(SLOW_DOWN)

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, *args) -> None:  # noqa: D102 - quiet
        pass


class Silent:
    """Accepts connections, counts them, never answers."""

    def __init__(self) -> None:
        self.hits, self.held = 0, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            connection, _ = self.server.accept()
            self.hits += 1
            self.held.append(connection)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-timeout", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    import s3fs

    from trajscope.store import StoreRoot

    silent = Silent()
    throttling = ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=throttling.serve_forever, daemon=True).start()
    endpoints = {"never answers (list)": (f"http://127.0.0.1:{silent.port}", lambda: silent.hits),
                 "503 SlowDown (PUT)": (f"http://127.0.0.1:{throttling.server_port}", lambda: Throttling.hits)}
    print(f"{'endpoint':<22} {'retries':<34} {'attempts':>8} {'seconds (median)':>17}")
    for label, (url, hits) in endpoints.items():
        for config in ("store root (now)", "s3fs + botocore defaults (before)"):
            attempts, seconds = [], []
            for repeat in range(args.repeats):
                options = {"endpoint_url": url, "config_kwargs": {"read_timeout": args.read_timeout},
                           "skip_instance_cache": True}
                fs = (StoreRoot(f"s3://b/runs{repeat}", options).fs if config.startswith("store")
                      else s3fs.S3FileSystem(**options))
                before, began = hits(), time.perf_counter()
                try:
                    fs.ls("b/runs") if label.endswith("(list)") else fs.pipe_file(f"b/runs/x{repeat}", b"0" * 1000)
                except Exception:  # noqa: BLE001 - the failure is the point
                    pass
                seconds.append(time.perf_counter() - began)
                attempts.append(hits() - before)
            print(f"{label:<22} {config:<34} {statistics.median(attempts):>8.0f} {statistics.median(seconds):>17.1f}")
    print(f"(read timeout {args.read_timeout} s for both; at s3fs's 15 s an attempt at the silent endpoint costs 15 s)")


if __name__ == "__main__":
    main()
