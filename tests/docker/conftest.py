"""Fixtures of the container tests: podman (or a clear skip), the images built once per session (in the
background while the other tests run; the container tests run last), a
moto S3 server on 127.0.0.1, free ports, containers that are always removed, and compose projects of
docker/compose.yaml that run in an environment of their own and are always taken down.

Every podman and podman-compose call is bounded in time (its whole process group is killed past the
limit, stdin is closed), and a failing compose call raises with the project's containers and their logs,
so a hang explains itself instead of holding CI.

The images are built with ``--build-arg BASE=$TS_PYTHON_IMAGE`` and the flags in ``$TS_BUILD_FLAGS``
(``source <(bash ../shared/containers/setup.sh)`` sets both: a local stand-in for the official Python
image and pip settings equal to the host's), and torch pinned to the host's version (a CPU wheel on the
pip path here; without the pin pip would pick a multi-GB CUDA build).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.metadata
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("api", "producer", "moto")
COMPOSE_FILE = REPO / "docker" / "compose.yaml"


def pytest_configure(config):
    config.addinivalue_line("markers", "containers: builds and runs the docker/ images with podman (minutes)")


_RUNNING: set[subprocess.Popen] = set()  # bounded calls in progress, killed if the session ends first


def bounded(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` with stdin closed, in a process group of its own; past ``timeout`` seconds the whole
    group is killed (podman-compose's ``podman wait`` children too) and the return code is 124."""
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True, **kwargs) as proc:
        _RUNNING.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code, err = 124, f"{err}\n[killed: still running after {timeout:.0f} s]"
        finally:
            _RUNNING.discard(proc)
    return subprocess.CompletedProcess(cmd, code, out, err)


def podman(*args: str, check: bool = True, timeout: float = 600, nice: int = 0,
           **kwargs) -> subprocess.CompletedProcess:
    """Run ``podman ARGS`` (bounded, see :func:`bounded`; at a lower CPU priority if ``nice``); a failure
    raises with podman's own message."""
    result = bounded([*(["nice", "-n", str(nice)] if nice else []), "podman", *args], timeout, **kwargs)
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


def build_images() -> tuple[dict[str, str], str]:
    """Build the api, producer and moto images, one after the other; returns their tags (as compose.yaml
    names them) and a report of the builds' times and sizes. Skips (raises pytest's Skipped) where the
    images cannot be built here."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    base = os.environ.get("TS_PYTHON_IMAGE")
    flags = shlex.split(os.environ.get("TS_BUILD_FLAGS", ""))
    torch_pin = f"torch=={importlib.metadata.version('torch').split('+')[0]}"
    tags, report = {}, []
    # api and producer share their first layers: the second reuses them
    for name in IMAGES:
        tag = f"localhost/trajscope-{name}"
        args = ["build", "--format", "docker", *flags, "-f", f"docker/{name}.Dockerfile", "-t", tag]
        if base:
            args += ["--build-arg", f"BASE={base}"]
        if name == "producer":
            args += ["--build-arg", f"TORCH={torch_pin}"]
        start = time.monotonic()
        podman(*args, ".", cwd=REPO, timeout=1800, nice=BUILD_NICENESS)
        size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
        report.append(f"  {tag:30s} built in {time.monotonic() - start:6.1f} s, {size / 1e6:7.0f} MB")
        tags[name] = tag
    return tags, "container images (built while the other tests ran):\n" + "\n".join(report)


# The images take minutes to build (mostly pip installing into them). They are built in the background from
# the moment the session knows a test will need them, at a low CPU priority, so that the build takes the CPU
# the other tests leave idle (they wait on servers and subprocesses) instead of minutes of its own; the tests
# that need them run last (pytest_collection_modifyitems).
BUILD_NICENESS = 10
_build: concurrent.futures.Future | None = None


def _build_in_background() -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(build_images())
        except BaseException as err:  # Skipped too: the fixture re-raises it in the test
            future.set_exception(err)

    # a daemon thread: a session that ends early does not wait for it (pytest_sessionfinish kills its podman)
    threading.Thread(target=run, name="build-images", daemon=True).start()
    return future


def _needs_images(item) -> bool:
    return "images" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items):
    """The tests of the images run last, so that their build has the whole session to overlap."""
    items[:] = [item for item in items if not _needs_images(item)] + [item for item in items if _needs_images(item)]


def pytest_collection_finish(session):
    global _build
    if _build is None and not session.config.option.collectonly and any(map(_needs_images, session.items)):
        _build = _build_in_background()


def pytest_sessionfinish(session):
    if _build is not None and not _build.done():
        for proc in list(_RUNNING):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The api, producer and moto images' tags, once built (see :func:`build_images`)."""
    global _build
    if _build is None:  # a session whose collection did not see this fixture coming
        _build = _build_in_background()
    tags, report = _build.result()
    print(report)
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


def compose_variables() -> set[str]:
    """Every variable compose.yaml interpolates (``${NAME:-default}``)."""
    return set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))


# What the shell may hold that compose.yaml, podman-compose or podman would pick up by accident: during the
# test suite the API tests' session fixture exports AWS_ENDPOINT_URL=http://127.0.0.1:<port>, which
# compose.yaml's ${AWS_ENDPOINT_URL:-http://s3:5000} took in, so the bucket job waited on the containers'
# own loopback and `up -d` hung (the first CI failure); podman passes *_proxy variables into containers.
FOREIGN = re.compile(r"^(AWS_|TRAJSCOPE_|COMPOSE_|PODMAN_COMPOSE_|DOCKER_)|_proxy$", re.IGNORECASE)


def compose_env(settings: dict[str, str]) -> dict[str, str]:
    """podman-compose's environment: the host's, less anything foreign (:data:`FOREIGN`), plus
    ``settings``, which must name every variable compose.yaml reads, so that none comes from the shell."""
    missing = compose_variables() - set(settings)
    assert not missing, f"compose settings lack {sorted(missing)}"
    return {**{k: v for k, v in os.environ.items() if not FOREIGN.search(k)}, **settings}


def compose_command() -> list[str]:
    """podman-compose run by this Python (the test extra installs it; no PATH or pyenv shim between), or skip."""
    import importlib.util

    if importlib.util.find_spec("podman_compose") is None:
        pytest.skip("podman-compose is not installed (pip install podman-compose; the test extra has it)")
    return [sys.executable, "-m", "podman_compose"]


class ComposeProject:
    """docker/compose.yaml as one podman-compose project with a name of its own.

    Calls are bounded in time; a failing one raises with :meth:`state` (the containers, their logs).
    :meth:`remove` takes everything down and returns what it could not remove.
    """

    def __init__(self, settings: dict[str, str], profiles: tuple[str, ...] = ("cpu",)):
        self.name = f"tstest{os.getpid()}{secrets.token_hex(3)}"
        self.env = compose_env(settings)
        self.base = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", self.name,
                     *(arg for profile in profiles for arg in ("--profile", profile))]

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = bounded([*self.base, *args], timeout, env=self.env, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"podman-compose {shlex.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{self.state()}")
        return result

    def container(self, service: str) -> str:
        return f"{self.name}_{service}_1"

    def containers(self) -> list[str]:
        listed = podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.name}",
                        "--format", "{{.Names}}", check=False, timeout=60)
        return listed.stdout.split()

    def state(self) -> str:
        """``podman ps -a`` of the project and the last lines of each container's log."""
        lines = [f"--- compose project {self.name}:",
                 podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.name}",
                        "--format", "{{.Names}}  {{.Status}}  {{.Ports}}", check=False, timeout=60).stdout]
        for name in self.containers():
            logs = podman("logs", "--tail", "30", name, check=False, timeout=60)
            lines.append(f"--- {name}:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        return "\n".join(lines)

    def remove(self) -> list[str]:
        """``down -v``, then whatever it left (containers, the network, volumes) by label and name."""
        self("down", "-v", "-t", "2", timeout=180, check=False)
        for name in self.containers():
            podman("rm", "--force", "--volumes", "--time", "2", name, check=False, timeout=120)
        podman("network", "rm", "--force", f"{self.name}_default", check=False, timeout=60)
        volumes = podman("volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={self.name}",
                         check=False, timeout=60).stdout.split()
        for volume in volumes:
            podman("volume", "rm", "--force", volume, check=False, timeout=60)
        left = self.containers()
        if podman("network", "exists", f"{self.name}_default", check=False, timeout=60).returncode == 0:
            left.append(f"network {self.name}_default")
        return left


@pytest.fixture
def compose_project() -> Iterator:
    """``compose_project(settings, profiles)`` makes a :class:`ComposeProject`; all are removed after
    the test, which fails if anything of theirs is left."""
    made: list[ComposeProject] = []

    def make(settings: dict[str, str], profiles: tuple[str, ...] = ("cpu",)) -> ComposeProject:
        made.append(ComposeProject(settings, profiles))
        return made[-1]

    yield make
    left = [item for project in made for item in project.remove()]
    assert not left, f"left behind: {left}"


@pytest.fixture(scope="session")
def helpers():
    """Module functions (tests cannot import this conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(podman=podman, free_port=free_port, s3_env=s3_env, repo=REPO)
