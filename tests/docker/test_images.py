"""The docker/ images, built and run with podman: the producer records into an S3-compatible server,
the API serves that bucket, and the compose stack (s3, bucket, api, producer, dask) runs end to end.

Skipped, with the reason, where podman or a base image is missing (see tests/docker/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import time

import httpx
import numpy as np
import pytest
import xarray as xr

from trajscope.api.state import public_root  # what /health says of a root (s3://…/runs)
from trajscope.store import StoreRoot, open_run

pytestmark = pytest.mark.containers

RUN = "quickstart"
PRODUCE = ["configs/quickstart.yaml", "--name", RUN, "--quiet"]  # compose.yaml's producer command, too
SHORT = ["--set", "train.steps=600"]  # the quickstart config, shortened: 601 states, ~13 MiB


def wait_healthy(url: str, seconds: float = 120) -> dict:
    """``GET url/health`` until it answers 200; returns its body."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as err:
            last = repr(err)
        time.sleep(0.5)
    raise AssertionError(f"{url}/health did not answer 200 within {seconds} s: {last}")


def assert_same_run(over_http: xr.Dataset, direct: xr.Dataset) -> None:
    """The run read over HTTP equals the run read straight from the bucket (values, coords, dims)."""
    xr.testing.assert_identical(over_http.drop_attrs().load(), direct.drop_attrs().load())


def test_producer_image_records_into_s3_and_api_image_serves_it(images, moto_server, helpers, containers,
                                                                  host_env, tmp_path):
    podman, env = helpers.podman, helpers.s3_env(moto_server)
    env_args = [a for k, v in {**env, "TRAJSCOPE_ROOT": "s3://trajscope/runs"}.items() for a in ("-e", f"{k}={v}")]

    # the producer: its entrypoint is `trajscope produce`, as a non-root user, into the s3:// root
    assert podman("image", "inspect", "--format", "{{.Config.User}}", images["producer"]).stdout.strip() == "trajscope"
    name = f"ts-producer-{os.getpid()}"
    containers.append(name)
    produced = podman("run", "--name", name, "--network", "host", *env_args, images["producer"],
                      *PRODUCE, *SHORT, check=False, timeout=900)
    assert produced.returncode == 0, produced.stdout + produced.stderr
    assert "complete, 601 states recorded" in produced.stdout

    # the run, read straight from the bucket on the host, equals the same config trained here
    from trajscope.producer import load_config, produce

    bucket = StoreRoot("s3://trajscope/runs", storage_options={
        "endpoint_url": moto_server, "key": "testing", "secret": "testing"})
    direct = open_run(RUN, bucket)
    assert direct.attrs["status"] == "complete" and direct.sizes["step"] == 601
    local = tmp_path / "runs"
    produce(load_config(helpers.repo / "configs/quickstart.yaml", ["train.steps=600"]), root=local, name=RUN)
    here = open_run(RUN, StoreRoot(local))
    np.testing.assert_array_equal(direct.W.values, here.W.values)
    np.testing.assert_array_equal(direct.loss.values, here.loss.values)

    # a mounted root (the image's default root /runs), writable by the image's user
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    if os.geteuid() == 0:
        os.chown(mounted, 10001, 10001)  # the image's user, as the README tells users to do
    else:
        mounted.chmod(0o777)
    name = f"ts-producer-mounted-{os.getpid()}"
    containers.append(name)
    podman("run", "--name", name, "-v", f"{mounted}:/runs", images["producer"], "configs/quickstart.yaml",
           "--name", "short", "--quiet", "--set", "train.steps=20", timeout=900)
    short = open_run("short", StoreRoot(mounted))
    assert short.attrs["status"] == "complete" and short.sizes["step"] == 21
    np.testing.assert_array_equal(short.W.values, here.W.values[:21])

    # `podman stop` right after the start (found by a review: PID 1 ignored SIGTERM until training began, so
    # the stop waited out its grace period, then SIGKILLed a run left `running`): it ends at once, and a run
    # that was made is `interrupted`, not left `running`
    for delay in (0.5, 2.5):
        name = f"ts-producer-stop-{delay}-{os.getpid()}"
        containers.append(name)
        podman("run", "-d", "--name", name, "-v", f"{mounted}:/runs", images["producer"], "configs/quickstart.yaml",
               "--name", f"stop{delay}", "--quiet", "--set", "train.steps=1000000", timeout=120)
        time.sleep(delay)
        started = time.monotonic()
        podman("stop", "--time", "60", name, timeout=120)
        stopped_in = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert stopped_in < 30 and code in ("130", "143"), (delay, stopped_in, code, podman("logs", name).stderr[-2000:])
        if StoreRoot(mounted).exists(f"stop{delay}"):
            assert open_run(f"stop{delay}", StoreRoot(mounted)).attrs["status"] == "interrupted", delay

    # the API: no torch, non-root, token from a secret file, health check, the bucket over HTTP
    no_torch = podman("run", "--rm", "--entrypoint", "python", images["api"], "-c",
                      "import importlib.util as u; print(u.find_spec('torch') is None)")
    assert no_torch.stdout.strip() == "True"
    token = "container-token-1234"
    secret = f"ts-token-{os.getpid()}"
    (tmp_path / "token").write_text(token + "\n")
    podman("secret", "rm", secret, check=False)
    podman("secret", "create", secret, str(tmp_path / "token"))
    port = helpers.free_port()
    api = f"ts-api-{os.getpid()}"
    containers.append(api)
    try:
        podman("run", "-d", "--name", api, "--network", "host", *env_args, "-e", f"TRAJSCOPE_PORT={port}",
               "--secret", secret, "-e", f"TRAJSCOPE_TOKEN_FILE=/run/secrets/{secret}", images["api"])
        url = f"http://127.0.0.1:{port}"
        health = wait_healthy(url)
        assert health["status"] == "ok" and health["root"] == public_root(bucket)  # the bucket, not /runs
        assert health["writable"] is True  # the token was read from the secret file
        assert podman("healthcheck", "run", api, check=False).returncode == 0
        assert podman("exec", api, "id", "-u").stdout.strip() not in ("", "0")
        over_http = xr.open_zarr(f"{url}/zarr/{RUN}", zarr_format=3)
        assert_same_run(over_http, direct)
        runs = httpx.get(f"{url}/api/runs", timeout=30).json()["runs"]
        assert [(r["run_id"], r["status"], r["committed_steps"]) for r in runs] == [(RUN, "complete", 601)]
        wrong = httpx.delete(f"{url}/api/runs/{RUN}", headers={"Authorization": "Bearer not-the-token"}, timeout=30)
        assert wrong.status_code == 401
        assert direct.attrs["status"] == "complete" and bucket.exists(RUN)
    finally:
        podman("rm", "--force", api, check=False)
        podman("secret", "rm", secret, check=False)


def stack_settings(tmp_path, ports: dict[str, int] | None = None) -> dict[str, str]:
    """Every variable compose.yaml reads, set explicitly (the shell's stay out: conftest.compose_env)."""
    token = tmp_path / "token"
    token.write_text("compose-token-5678\n")
    ports = ports or dict.fromkeys(("S3", "API", "SCHEDULER", "DASHBOARD"), 0)
    return {"TRAJSCOPE_BUCKET": "trajscope", "AWS_ENDPOINT_URL": "http://s3:5000", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "TRAJSCOPE_S3_WAIT": "60",
            "TRAJSCOPE_TOKEN_SECRET": str(token), "TRAJSCOPE_CONFIG": PRODUCE[0], "TRAJSCOPE_RUN": RUN,
            **{f"TRAJSCOPE_{k}_PORT": str(v) for k, v in ports.items()}}


def test_compose_file_resolves_to_the_commands_the_image_test_runs(compose_project, tmp_path, monkeypatch):
    """Both profiles parse; the shell's AWS_* / TRAJSCOPE_* / COMPOSE_* variables do not leak in (they hung
    `up` once); the GPU producer has the documented device reservation and the CPU producer's command
    plus train.device=cuda; the producer and API run as the image test runs them."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (podman-compose needs it even to resolve the file)")
    import yaml

    for name, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "TRAJSCOPE_BUCKET": "elsewhere",
                        "TRAJSCOPE_RUN": "other", "COMPOSE_PROFILES": "gpu"}.items():
        monkeypatch.setenv(name, value)
    settings = stack_settings(tmp_path)
    project = compose_project(settings, profiles=("cpu", "gpu"))
    resolved = yaml.safe_load(project("config", timeout=120).stdout)
    services = resolved["services"]
    assert set(services) == {"s3", "bucket", "api", "producer-cpu", "producer-gpu", "dask-scheduler", "dask-worker"}
    for name, service in services.items():
        env = service.get("environment", {})
        if name != "s3":
            assert env["AWS_ENDPOINT_URL"] == "http://s3:5000" and env["TRAJSCOPE_ROOT"] == "s3://trajscope/runs", name

    cpu, gpu = services["producer-cpu"], services["producer-gpu"]
    assert cpu["command"] == PRODUCE and cpu["image"] == "localhost/trajscope-producer"
    assert gpu["command"] == PRODUCE + ["--set", "train.device=cuda"] and gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]  # the README's, docker compose's syntax
    assert "deploy" not in cpu and cpu["profiles"] == ["cpu"]
    for job in ("bucket", "producer-cpu", "producer-gpu"):
        assert services[job]["restart"] == "no"
    for waiting in ("api", "producer-cpu", "producer-gpu"):
        assert services[waiting]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
    api = services["api"]
    assert "command" not in api and "entrypoint" not in api  # the image's serve.sh, as the image test runs it
    assert api["environment"]["TRAJSCOPE_TOKEN_FILE"] == "/run/secrets/trajscope_token"
    assert resolved["secrets"]["trajscope_token"]["file"] == settings["TRAJSCOPE_TOKEN_SECRET"]

    # what podman-compose would run (--dry-run creates only the project's network, removed after the test)
    dry = project("--verbose", "--dry-run", "up", "--no-build", "-d", timeout=120)
    creates = {line.split("--name=")[1].split()[0]: line for line in (dry.stdout + dry.stderr).splitlines()
               if "podman create" in line}
    assert creates[project.container("producer-cpu")].endswith("localhost/trajscope-producer " + " ".join(PRODUCE))
    assert "--device nvidia.com/gpu=0" in creates[project.container("producer-gpu")]  # count: 1, as CDI
    assert creates[project.container("api")].endswith(" localhost/trajscope-api")
    assert "--entrypoint" not in creates[project.container("api")]


# the images' Debian Python and the host's may differ in the patch release only: dask warns, nothing breaks
@pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")
def test_compose_stack(images, compose_project, helpers, host_env, tmp_path, monkeypatch):
    """compose.yaml as written: s3 + bucket + api + the cpu producer + dask scheduler and workers;
    a client on the host (a notebook) analyses the run on the workers, reading the bucket."""
    podman = helpers.podman
    # the API tests' session fixture leaves AWS_ENDPOINT_URL=http://127.0.0.1:<its port> in os.environ
    # until the session ends; compose_env keeps it (and the like) out of the stack: this makes sure of it
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    ports = {k: helpers.free_port() for k in ("S3", "API", "SCHEDULER", "DASHBOARD")}
    stack = compose_project(stack_settings(tmp_path, ports))
    try:
        stack("up", "-d", "--no-build", timeout=300)
        # podman-compose starts the bucket's dependents once it has stopped, whatever its exit code
        assert podman("wait", stack.container("bucket"), timeout=120).stdout.strip() == "0"
        producer = stack.container("producer-cpu")
        code = podman("wait", producer, timeout=900).stdout.strip()
        assert code == "0", podman("logs", producer, check=False).stdout[-3000:]
        url = f"http://127.0.0.1:{ports['API']}"
        health = wait_healthy(url)
        assert health["root"] == public_root(StoreRoot("s3://trajscope/runs")) and health["writable"] is True
        assert podman("healthcheck", "run", stack.container("api"), check=False).returncode == 0
        host_env.update(helpers.s3_env(f"http://127.0.0.1:{ports['S3']}"))
        import fsspec

        fsspec.get_filesystem_class("s3").clear_instance_cache()
        direct = open_run(RUN, StoreRoot("s3://trajscope/runs"))
        assert direct.attrs["status"] == "complete" and direct.sizes["step"] == 6001  # the full quickstart
        assert_same_run(xr.open_zarr(f"{url}/zarr/{RUN}", zarr_format=3).isel(step=slice(0, None, 500)),
                        direct.isel(step=slice(0, None, 500)))

        # a notebook on the host: dask client -> the scheduler; the workers read the bucket themselves
        from distributed import Client, get_task_stream
        from trajscope.analysis.spectra import stable_rank

        with Client(f"tcp://127.0.0.1:{ports['SCHEDULER']}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            sub = direct.isel(step=slice(0, None, 250))
            with get_task_stream(client) as stream:
                on_cluster = stable_rank(sub).compute()
            workers = {task["worker"] for task in stream.data}
            assert workers and workers <= set(client.scheduler_info()["workers"])
        W = sub.W.values.astype(np.float64)
        s = np.linalg.svd(W, compute_uv=False)
        np.testing.assert_allclose(on_cluster.values, (s**2).sum(-1) / s[:, 0] ** 2, rtol=1e-5)
    except BaseException:
        print(stack.state())  # pytest shows it with the failure
        raise
