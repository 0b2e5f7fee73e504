"""``trajscope serve`` as a user runs it: a subprocess, 127.0.0.1 by default, the token file."""

from __future__ import annotations

import os

import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from trajscope.store import StoreRoot

CLI = [sys.executable, "-c", "from trajscope.cli import main; main()", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_binds_loopback_by_default_and_enables_delete_with_a_token(tmp_path, write_run):
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "a", steps=8, chunk_steps=8)
    token = tmp_path / "token"
    token.write_text("a-long-enough-token\n")
    port = free_port()
    proc = subprocess.Popen([*CLI, "--root", root.location, "--port", str(port), "--token-file", str(token)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        assert health["root"] == os.path.basename(root.location) and health["writable"] is True
        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port)}
        # a request addressed to another name (a page whose site rebound its name to 127.0.0.1: DNS rebinding)
        # is refused; localhost is served (found by a review)
        rebound = httpx.get(f"http://127.0.0.1:{port}/api/runs", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 400 and set(rebound.json()) == {"detail"}  # (no run listed)
        assert "names the host 'evil.example'" in rebound.json()["detail"]  # JSON, as every error (a review)
        assert httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"[::1]:{port}"}).status_code == 200
        assert httpx.get(f"http://localhost:{port}/api/runs").status_code == 200
        r = httpx.delete(f"http://127.0.0.1:{port}/api/runs/a", headers={"Authorization": "Bearer a-long-enough-token"})
        assert r.status_code == 200 and not root.exists("a")
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize("content, words", [("", "shorter than 8"), (None, "cannot read the token file"),
                                            (b"\xff\xfe\x00binary", "is not text")])  # (a traceback: a review)
def test_serve_refuses_a_bad_token_file(tmp_path, content, words):
    token = tmp_path / "token"
    if isinstance(content, bytes):
        token.write_bytes(content)
    elif content is not None:
        token.write_text(content)
    r = subprocess.run([*CLI, "--root", str(tmp_path), "--port", str(free_port()), "--token-file", str(token)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("flag", [[], ["--access-log"]])
def test_serve_logs_each_request_only_with_access_log(tmp_path, write_run, flag):
    """Found by a review (30 minutes, ~28,000 requests, one line in the log): a lab running the server had no
    record of what it answered. ``--access-log`` logs every request with its status on stdout (uvicorn's access
    log); without it, nothing is logged of a request that succeeds or is refused."""
    root = StoreRoot(tmp_path / "runs")
    write_run(root, "a", steps=8, chunk_steps=8)
    port = free_port()
    proc = subprocess.Popen([*CLI, "--root", root.location, "--port", str(port), *flag], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/runs/nothing-here", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)  # (the first request's line is written by now)
        time.sleep(0.5)
    finally:
        proc.terminate()
        log, errors = proc.communicate(timeout=20)
    logged = [line for line in log.splitlines() if "GET /api/runs/nothing-here" in line]
    assert "nothing-here" not in errors, errors
    assert (logged and "404" in logged[0]) if flag else not logged, log


def test_the_loopback_guard_names_what_the_request_lacks():
    """A request without a Host header (HTTP/1.0) is told so, not "names the host ''" (a review); the hosts it
    lists are ones a Host header can name; ``[::1]:PORT`` is served."""
    import asyncio
    import json

    from trajscope.api.guards import LoopbackHostOnly
    from trajscope.cli.serve import LOOPBACK_NAMES

    async def app(scope, receive, send):  # what the guard lets through
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    def ask(headers):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
        asyncio.run(LoopbackHostOnly(app, LOOPBACK_NAMES)(scope, receive, send))
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    status, body = ask([])
    assert status == 400 and "names no host (no Host header)" in json.loads(body)["detail"]
    assert "::1," not in json.loads(body)["detail"] and "[::1]" in json.loads(body)["detail"]
    assert ask([(b"host", b"[::1]:8000")]) == (200, b"served")
    assert ask([(b"host", b"LocalHost:80")]) == (200, b"served")
    assert ask([(b"host", b"evil.example")])[0] == 400
