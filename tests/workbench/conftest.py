"""Helpers for the researcher's-workbench tests: the CLI as a user runs it, in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import cli_fork

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; "  # `import torch` now raises ImportError


def cli(*args: str, prelude: str = "", input: str | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``trajscope ARGS`` in a process of its own: forked from a warm interpreter (:mod:`tests.cli_fork`), or,
    given a ``prelude`` (Python run first, e.g. to block an import) or an ``env`` that changes a variable read at
    start-up, a fresh one."""
    if prelude:
        return cli_fork.fresh(args, prelude=prelude, input=input, env=env, timeout=timeout)
    return cli_fork.run(args, input=input, env=env, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_answer(url: str, server: subprocess.Popen, timeout: float = 90):
    """The first answer of ``GET url`` from a ``trajscope serve`` subprocess that is starting (it must not exit)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=30)
        except httpx.TransportError:
            assert server.poll() is None, server.stderr.read() if server.stderr else "serve exited"
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, small_config):
    """A store root holding two small finished runs, ``a`` (lr 0.01) and ``b`` (lr 0.02, width 6)."""
    from trajscope.producer import produce

    root = tmp_path_factory.mktemp("workbench") / "runs"
    produce(small_config(), root=root, name="a", labels={"tags": ["base"], "note": "the reference"})
    produce(small_config(train={"lr": 0.02, "steps": 40}, model={"width": 6}), root=root, name="b")
    return root


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``run_cli(*args, input=None)``: the CLI's ``main`` in this process (fast), as a CompletedProcess."""
    import io

    from trajscope.cli import main

    def _run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["trajscope", *args], code, out, err)

    return _run
