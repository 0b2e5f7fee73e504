"""Fixtures of the container tests: podman (or a clear skip), the images built once per session, a
moto S3 server on 127.0.0.1, free ports, and containers that are always removed.

The images are built with ``--build-arg BASE=$TS_PYTHON_IMAGE`` and the flags in ``$TS_BUILD_FLAGS``
(``source <(bash ../shared/containers/setup.sh)`` sets both: a local stand-in for the official Python
image and pip settings equal to the host's), and torch pinned to the host's version (a CPU wheel on the
pip path here; without the pin pip would pick a multi-GB CUDA build).
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("api", "producer", "moto")


def pytest_configure(config):
    config.addinivalue_line("markers", "containers: builds and runs the docker/ images with podman (minutes)")


def podman(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``podman ARGS``; a failure raises with podman's own message."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {shlex.join(args)[:300]} failed ({result.returncode}):\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _why_not() -> str | None:
    """Why the container tests cannot run here, or None."""
    if shutil.which("podman") is None:
        return ("podman is not installed (CI installs it: .ci/run runs ../shared/containers/setup.sh; "
                "elsewhere install podman)")
    base = os.environ.get("TS_PYTHON_IMAGE")
    if not base and os.environ.get("TRAJSCOPE_CONTAINER_TESTS") != "1":
        return ("no base image: `source <(bash ../shared/containers/setup.sh)` sets TS_PYTHON_IMAGE and "
                "TS_BUILD_FLAGS; or set TRAJSCOPE_CONTAINER_TESTS=1 to build on the official Python image")
    info = podman("info", check=False, timeout=120)
    if info.returncode != 0:
        return f"podman does not work here: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    if base and podman("image", "exists", base, check=False).returncode != 0:
        return f"the base image {base} (TS_PYTHON_IMAGE) does not exist: rerun ../shared/containers/setup.sh"
    return None


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Build the api, producer and moto images once; returns their tags (as compose.yaml names them)."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    base = os.environ.get("TS_PYTHON_IMAGE")
    flags = shlex.split(os.environ.get("TS_BUILD_FLAGS", ""))
    torch_pin = f"torch=={importlib.metadata.version('torch').split('+')[0]}"
    tags, report = {}, []
    for name in IMAGES:
        tag = f"localhost/trajscope-{name}"
        args = ["build", "--format", "docker", *flags, "-f", f"docker/{name}.Dockerfile", "-t", tag]
        if base:
            args += ["--build-arg", f"BASE={base}"]
        if name == "producer":
            args += ["--build-arg", f"TORCH={torch_pin}"]
        start = time.monotonic()
        podman(*args, ".", cwd=REPO, timeout=1800)
        size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
        report.append(f"  {tag:30s} built in {time.monotonic() - start:6.1f} s, {size / 1e6:7.0f} MB")
        tags[name] = tag
    print("container images:\n" + "\n".join(report))
    return tags


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (containers on the host network reach it) with a bucket ``trajscope``."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="trajscope")
    try:
        yield endpoint
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """The AWS_* variables of an S3-compatible endpoint with moto's test credentials."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names appended to this list are removed (with their anonymous volumes) after the test."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--volumes", name, check=False)


@pytest.fixture
def host_env() -> Iterator[dict]:
    """``os.environ``, restored after the test (the in-process S3 clients read AWS_* from it)."""
    saved = dict(os.environ)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def helpers():
    """Module functions (tests cannot import this conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(podman=podman, free_port=free_port, s3_env=s3_env, repo=REPO)
