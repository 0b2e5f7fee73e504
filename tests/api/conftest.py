"""Fixtures of the API tests: real runs written through the store's writer, a real uvicorn server on
127.0.0.1 (random free port) in a thread, and a real S3-compatible server (moto) for object storage."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import numpy as np
import pytest
import uvicorn

from trajscope.api.app import create_app
from trajscope.store import RunWriter, StoreRoot
from trajscope.producer.two_layer import variables as two_layer_variables
from tests.api.dashboard_browser import names_a_live_writer, stops_naming_a_live_writer


def make_run(root: StoreRoot, run_id: str, *, steps: int = 40, h: int = 6, D: int = 4, n: int = 10,
             chunk_steps: int = 8, finish: str | None = "complete", seed: int = 0,
             commit_to: int | None = None, nan: bool = False) -> dict[str, np.ndarray]:
    """Write a small two-layer run; returns the arrays written (the expected values).

    ``finish=None`` leaves the run ``running`` with ``commit_to`` (default ``steps``) steps committed;
    states beyond ``commit_to`` are still written to the chunks (as a live writer may have done).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)).astype(np.float32)
    y = np.where(np.arange(n) % 2 == 0, 1, -1).astype(np.int8)
    data = {
        "W": rng.normal(size=(steps, h, D)).astype(np.float32),
        "v": rng.normal(size=(steps, h)).astype(np.float32),
        "loss": np.exp(-np.arange(steps) / 10.0),
        "output": rng.normal(size=(steps, n)).astype(np.float32),
        "step": np.arange(steps, dtype=np.int64),
        "t": np.arange(steps) * 0.01,
    }
    if nan:
        data["W"][3, 0, 0] = np.nan  # NaN must travel as null in JSON
    bytes_per_step = h * D * 4
    writer = RunWriter.create(
        root, run_id, variables=two_layer_variables(), sizes={"neuron": h, "feature": D, "sample": n},
        capacity=steps, static={"X": X, "y": y},
        attrs={"config": {"model": {"width": h}, "train": {"lr": 0.01, "steps": steps}, "seed": seed}},
        chunk_bytes=bytes_per_step * chunk_steps,
    )
    assert writer.chunk_steps == chunk_steps
    for start in range(0, steps, chunk_steps):
        stop = min(start + chunk_steps, steps)
        writer.write_block(start, {k: v[start:stop] for k, v in data.items()})
        if finish is not None or commit_to is None or stop <= commit_to:
            writer.commit(stop if commit_to is None else min(stop, commit_to))
    if commit_to is not None:
        writer.commit(commit_to)
    if finish is not None:
        writer.finish(finish)
    else:  # a writer that stopped: its writes landed, its threads are gone, the lock is free
        writer.close_writes()
        writer.lock.release()
        names_a_live_writer(root, run_id)  # yet the run reads as being written
    return {**data, "X": X, "y": y}


class LiveServer:
    """A uvicorn server in a thread; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, app):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app = app

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def serving(root, token: str | None = None, **kwargs) -> Iterator[LiveServer]:
    server = LiveServer(create_app(root, token=token, **kwargs)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def live_writers_yield(monkeypatch):
    """The stand-in live writer of :func:`names_a_live_writer` (this process holding a run's flock) lets go when a
    writer of this process takes the run, as a stopped producer's lock would have been free."""
    from trajscope.store.locks import WriterLock

    take = WriterLock.acquire

    def acquire(self):
        stops_naming_a_live_writer(self.root, self.run_id)
        return take(self)

    monkeypatch.setattr(WriterLock, "acquire", acquire)


@pytest.fixture(scope="session")
def local_root(tmp_path_factory) -> StoreRoot:
    """A local store root with a finished run ``done``, a live run ``live`` and a failed run ``bad``."""
    root = StoreRoot(tmp_path_factory.mktemp("runs"))
    make_run(root, "done", steps=40, chunk_steps=8)
    make_run(root, "live", steps=48, chunk_steps=8, finish=None, commit_to=20, seed=1)
    make_run(root, "bad", steps=8, chunk_steps=8, finish="failed", seed=2, nan=True)
    return root


@pytest.fixture(scope="session")
def expected(local_root) -> dict:
    """The values each run of ``local_root`` holds (rewritten deterministically from the seeds)."""
    from trajscope.store import open_run

    return {rid: open_run(rid, local_root).load() for rid in ("done", "live", "bad")}


@pytest.fixture(scope="session")
def server(local_root) -> Iterator[LiveServer]:
    with serving(local_root, token="s3cret-token", max_response_bytes=16 * 1024) as srv:
        yield srv


@pytest.fixture()
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def s3_env() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with a bucket ``trajscope``; the AWS_* variables point at it."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                              "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="trajscope")
    try:
        yield endpoint
    finally:
        moto.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def write_run():
    """:func:`make_run` (test modules cannot import this conftest under --import-mode=importlib)."""
    return make_run


@pytest.fixture(scope="session")
def serve():
    """:func:`serving`: a context manager starting another server on a root."""
    return serving
