"""An object store that never answers, or drops every connection: a command fails after a bounded number of
attempts (s3fs's :data:`S3_ATTEMPTS` around botocore's 3), not after 25 of them (over 6 minutes, found by a
review), and says so in one line."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading

import pytest

pytest.importorskip("s3fs")

from trajscope.store.errors import object_store_error  # noqa: E402
from trajscope.store.root import S3_ATTEMPTS, S3_BOTOCORE_RETRIES, StoreRoot  # noqa: E402

BOTOCORE_ATTEMPTS = S3_BOTOCORE_RETRIES["total_max_attempts"]


class SilentEndpoint:
    """A TCP server on 127.0.0.1 that counts the connections it accepts, and holds each one unanswered
    (``hold``) or resets it at once (``reset``)."""

    def __init__(self, mode: str):
        self.mode, self.connections, self._held = mode, 0, []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == "reset":
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.close()
            else:
                self._held.append(connection)

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def endpoint(request, monkeypatch):
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = SilentEndpoint(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("endpoint", ["hold"], indirect=True)
def test_an_endpoint_that_never_answers_is_tried_a_bounded_number_of_times(endpoint):
    # a read timeout of 1 s (s3fs's is 15 s) keeps this short; the attempts are what is bounded
    root = StoreRoot("s3://bucket/runs", {"endpoint_url": endpoint.url, "config_kwargs": {"read_timeout": 1}})
    with pytest.raises(Exception) as raised:
        root.run_ids()
    assert object_store_error(raised.value).startswith("the object store did not answer (ReadTimeoutError")
    assert endpoint.connections == S3_ATTEMPTS * BOTOCORE_ATTEMPTS
    assert root.zarr_store("r", read_only=True).fs.retries == S3_ATTEMPTS  # zarr's reads: the same bound


@pytest.mark.parametrize("endpoint", ["reset"], indirect=True)
def test_an_endpoint_that_drops_every_connection_is_one_line(endpoint, python_env):
    # (no count here: aiohttp opens a second connection for some attempts, depending on timing)
    env = dict(python_env, AWS_ENDPOINT_URL=endpoint.url, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        env.pop(name, None)
    result = subprocess.run(["trajscope", "ls", "--root", "s3://bucket/runs"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "could not be reached" in result.stderr, result.stderr
    assert endpoint.connections >= 1


@pytest.mark.parametrize("endpoint", ["hold"], indirect=True)
@pytest.mark.parametrize("where", ["storage_options", "environment", "profile"])
def test_retries_set_by_the_user_are_kept(endpoint, where, monkeypatch, tmp_path):
    options = {"endpoint_url": endpoint.url, "config_kwargs": {"read_timeout": 1}}
    if where == "storage_options":
        options["config_kwargs"]["retries"] = {"mode": "standard", "total_max_attempts": 1}
    elif where == "environment":
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    else:  # the AWS config file's profile (found by a review: it was overridden)
        (tmp_path / "config").write_text("[default]\nretry_mode = standard\nmax_attempts = 1\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.delenv("AWS_PROFILE", raising=False)
    root = StoreRoot("s3://bucket/runs", options)
    with pytest.raises(Exception):
        root.run_ids()
    assert endpoint.connections == S3_ATTEMPTS * 1
