"""``xr.open_dataset(url, engine="trajscope", storage_options=...)`` on a real S3-compatible server."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr


@pytest.fixture(scope="module")
def moto_endpoint(monkeypatch_module):
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch_module.delenv(name, raising=False)  # only the storage_options may say where S3 is
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def s3_options(endpoint: str) -> dict:
    """The storage options of the moto server at ``endpoint``."""
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}


def s3_bucket(endpoint: str, name: str):
    """A new bucket on the moto server; returns a boto3 client (to look at or change objects behind fsspec)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return client


def test_engine_trajscope_passes_storage_options(moto_endpoint, small_config):
    from trajscope.producer import produce
    from trajscope.store import StoreRoot, open_run

    options = s3_options(moto_endpoint)
    s3_bucket(moto_endpoint, "runs")
    root = StoreRoot("s3://runs/exp", storage_options=options)
    produce(small_config(), root=root, name="remote")
    ds = xr.open_dataset("s3://runs/exp/remote.zarr", engine="trajscope", storage_options=options,
                         drop_variables="output")
    local = open_run("remote", root)
    assert "output" not in ds and ds.sizes["step"] == 41 and ds.attrs["status"] == "complete"
    np.testing.assert_array_equal(ds["W"].values, local["W"].values)
    # open_run takes them too, as xr.open_zarr does (found by a review: a TypeError)
    for by_url in (open_run("s3://runs/exp/remote.zarr", storage_options=options),
                   open_run("remote", "s3://runs/exp", storage_options=options)):
        np.testing.assert_array_equal(by_url["W"].values, local["W"].values)
    with pytest.raises(Exception):  # without them the bucket is not reachable: the options really were used
        xr.open_dataset("s3://runs/exp/remote.zarr", engine="trajscope",
                        storage_options={"key": "testing", "secret": "testing", "endpoint_url": "http://127.0.0.1:9",
                                         "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}})


def test_a_lost_chunk_on_s3_is_refused_not_read_as_fill_values(moto_endpoint, small_config):
    """The missing-chunk rule on an object store: the marker object and the run's existence are read from
    inside zarr's asynchronous reads (no deadlock between zarr's and fsspec's event loops), and a lost
    chunk of ``W`` is CorruptData while a run without the marker reads fill values as before."""
    from trajscope.producer import produce
    from trajscope.store import StoreRoot, open_run
    from trajscope.store.errors import CorruptData

    options = s3_options(moto_endpoint)
    s3 = s3_bucket(moto_endpoint, "lost")
    root = StoreRoot("s3://lost/exp", storage_options=options)
    produce(small_config(), root=root, name="r")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lost", Prefix="exp/r.zarr/")["Contents"]]
    assert "exp/r.zarr/.all_chunks_stored" in keys
    chunk = sorted(k for k in keys if k.startswith("exp/r.zarr/W/c/"))[0]
    s3.delete_object(Bucket="lost", Key=chunk)
    with pytest.raises(CorruptData, match="is missing"):
        open_run("r", StoreRoot("s3://lost/exp", storage_options=options))["W"].values
    s3.delete_object(Bucket="lost", Key="exp/r.zarr/.all_chunks_stored")
    assert np.isnan(open_run("r", StoreRoot("s3://lost/exp", storage_options=options))["W"].values).any()


#: another process (its own fsspec instance and listing cache) reopens run ``r``, writes states 8..15, commits
WRITE_ELSEWHERE = """
import json, sys
import numpy as np
from trajscope.store import RunWriter, StoreRoot
writer = RunWriter.reopen(StoreRoot(sys.argv[1], storage_options=json.loads(sys.argv[2])), "r")
writer.write_block(8, {"step": np.arange(8, 16), "loss": np.arange(8, 16) / 10})
writer.commit(16)
writer.close_writes()
writer.lock.release()
"""


def test_a_resume_on_s3_sees_chunks_written_after_a_cached_listing(moto_endpoint):
    """fsspec caches S3 listings (``list_runs`` sizes every run with one). A chunk another process wrote after
    that was absent from this process's cache, and reopening the run took the chunk holding its last state
    for lost (CorruptData), as did a lost-chunk check. Existence is asked of the store itself."""
    import json
    import subprocess
    import sys

    from trajscope.store import RunWriter, StoreRoot, list_runs
    from trajscope.store.layout import VariableSpec

    options = s3_options(moto_endpoint)
    s3_bucket(moto_endpoint, "cached")
    root = StoreRoot("s3://cached/exp", storage_options=options)
    variables = {"step": VariableSpec("step", ("step",), "int64"), "loss": VariableSpec("loss", ("step",), "float64")}
    writer = RunWriter.create(root, "r", variables=variables, sizes={}, capacity=64, static={}, attrs={"config": {}},
                              chunk_bytes=64)
    assert writer.chunk_steps == 8  # 8 int64 or float64 states a chunk: loss/c/0, loss/c/1, ...
    writer.write_block(0, {"step": np.arange(8), "loss": np.arange(8) / 10})
    writer.commit(8)
    writer.close_writes()
    writer.lock.release()
    assert [info.run_id for info in list_runs(root)] == ["r"]  # this process now caches the run's listing
    elsewhere = subprocess.run([sys.executable, "-c", WRITE_ELSEWHERE, "s3://cached/exp", json.dumps(options)],
                               capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert root.read_attrs("r")["committed_steps"] == 16
    writer = RunWriter.reopen(root, "r")  # refused ("loss/c/1 is missing") when the cache answered
    try:
        np.testing.assert_array_equal(writer.read_states(8, 16)["loss"], np.arange(8, 16) / 10)
    finally:
        writer.lock.release()


#: another process creates run ``r`` (two 1-D arrays), commits 8 states
CREATE_ELSEWHERE = """
import json, sys
import numpy as np
from trajscope.store import RunWriter, StoreRoot
from trajscope.store.layout import VariableSpec
variables = {"step": VariableSpec("step", ("step",), "int64"), "loss": VariableSpec("loss", ("step",), "float64")}
writer = RunWriter.create(StoreRoot(sys.argv[1], storage_options=json.loads(sys.argv[2])), "r", variables=variables,
                          sizes={}, capacity=16, static={}, attrs={"config": {}}, chunk_bytes=64)
writer.write_block(0, {"step": np.arange(8), "loss": np.arange(8) / 10})
writer.commit(8)
writer.close_writes()
writer.lock.release()
"""


def test_a_live_run_created_after_a_cached_listing_is_read_whole_on_s3(moto_endpoint):
    """A live run's arrays are found by listing its folder. Listed (sized) by this process while another one was
    still creating it, the cached listing lacked its arrays: the run read as missing them. It is listed anew."""
    import json
    import subprocess
    import sys

    from trajscope.store import StoreRoot
    from trajscope.store.snapshot import snapshot

    options = s3_options(moto_endpoint)
    s3 = s3_bucket(moto_endpoint, "creating")
    root = StoreRoot("s3://creating/exp", storage_options=options)
    s3.put_object(Bucket="creating", Key="exp/r.zarr/zarr.json", Body=json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"status": "creating", "committed_steps": 0}}).encode())
    root.size_bytes("r")  # as list_runs does: this process caches the folder's listing, without arrays
    elsewhere = subprocess.run([sys.executable, "-c", CREATE_ELSEWHERE, "s3://creating/exp", json.dumps(options)],
                               capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert sorted(snapshot(root, "r").arrays) == ["loss", "step"]
