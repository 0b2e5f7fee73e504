"""Fault injection at every named point of the commit protocol (create, write, commit, finish, resume).

For each point of :data:`trajscope.store.faults.POINTS` the writer is stopped there, by SIGKILL (a
subprocess kills itself, as a crash would) and by an exception. Then: the run opens (or, stopped during
creation, is invisible or recognisably incomplete), nothing committed is lost (the committed prefix is
bit-identical to the uninterrupted run), and resume / ``produce --name`` / ``fsck --repair`` completes it
bit-identically. The run stops early (``stop_loss``) so that finishing really shrinks the arrays.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr
import yaml

from trajscope import open_run
from trajscope.producer import produce, resume
from trajscope.store import StoreRoot, UserError, list_runs
from trajscope.store import faults
from trajscope.store.chunkio import stale_temporaries
from trajscope.store.fsck import fsck_run
from tests import cli_fork

VARIABLES = ("W", "v", "loss", "output", "step", "t")
#: which hit of a point to stop at: the 3rd chunk write, the 2nd commit (each commit raises ``committed_steps``
#: by at least one chunk, so the 2nd covers two or more). Not the 3rd commit: the writer thread commits whatever
#: is written when it wakes, so on a loaded machine a run may need only two commits, the last at close, and
#: never reach a 3rd: the likely cause of a failure seen once in about 30 runs with both cores kept busy.
NTH = {"write.chunk": 3, "commit.attrs": 2, "write.renaming": 5}


def base_config(small_config, stop_loss=None):
    # commit_seconds 0: commit as soon as a block is written (the default batches commits by 0.5 s)
    return small_config(train={"lr": 0.01, "steps": 60, "stop_loss": stop_loss},
                        record={"chunk_mib": 0.001, "commit_seconds": 0})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_config):
    """The uninterrupted run, stopping early at ``stop_loss`` (so capacity > committed)."""
    root = tmp_path_factory.mktemp("ref")
    produce(base_config(small_config), root=root, name="full")
    loss = open_run("full", root).loss.values
    config = base_config(small_config, stop_loss=float(loss[45]))
    produce(config, root=root, name="ref")
    ds = open_run("ref", root).load()
    assert 40 <= ds.sizes["step"] < 61 and ds.attrs["chunk_steps"] < 10  # early stop, many chunks
    return config, ds


def assert_committed_prefix(root, name, ref):
    """The run opens, every committed state equals the reference, and the checksums hold."""
    ds = open_run(name, root)
    committed = ds.attrs["committed_steps"]
    assert ds.sizes["step"] == committed <= ref.sizes["step"]
    loaded = ds.load()  # decodes every committed chunk (crc32c)
    for var in VARIABLES:
        np.testing.assert_array_equal(loaded[var].values, ref[var].values[:committed], err_msg=var)
    report = fsck_run(StoreRoot(root), name)
    assert not [p for p in report.problems if "chunk" in p or "fewer" in p], report.problems
    return ds.attrs


def complete_and_compare(root, name, config, ref):
    """Finish the run the way a user would, then check it equals the uninterrupted run."""
    store = StoreRoot(root)
    status = store.read_attrs(name).get("status") if store.exists(name) else None
    if status in (None, "creating"):
        produce(config, root=root, name=name)  # replaces a half-created run
    elif status != "complete":
        resume(name, root=root)
    assert stale_temporaries(store.run_url(name)) == []  # resume removed what a kill left in mid-write
    report = fsck_run(store, name, repair=True)
    assert report.ok, report.problems
    assert fsck_run(store, name).ok
    final = open_run(name, root).load()
    assert final.attrs["status"] == "complete" and final.sizes == ref.sizes
    for var in VARIABLES:
        np.testing.assert_array_equal(final[var].values, ref[var].values, err_msg=var)
    plain = xr.open_zarr(store.run_url(name), zarr_format=3).load()  # no trajscope involved
    assert plain.sizes["step"] == ref.sizes["step"]
    np.testing.assert_array_equal(plain.W.values, ref.W.values)


def check_stopped_run(root, name, point, ref):
    store = StoreRoot(root)
    if point == "create.locked":
        assert not store.exists(name) and name not in [r.run_id for r in list_runs(store)]
        return
    if point == "create.arrays":
        assert [r.status for r in list_runs(store) if r.run_id == name] == ["creating"]
        with pytest.raises(UserError, match="is being created, or its producer stopped while creating it"):
            open_run(name, root)
        return
    attrs = assert_committed_prefix(root, name, ref)
    if point == "commit.attrs":
        assert attrs["committed_steps"] >= 2 * attrs["chunk_steps"]
    # at "write.chunk" blocks are written concurrently with the commits of earlier ones: any committed
    # prefix (even 0) is legitimate; what matters is checked above (nothing committed lost) and below
    if point.startswith("finish"):
        assert attrs["status"] in ("complete", "failed") and attrs["committed_steps"] == ref.sizes["step"]
        plain = xr.open_zarr(store.run_url(name), zarr_format=3)  # the consolidated metadata is cut already
        assert plain.sizes["step"] == ref.sizes["step"]


def run_cli(args, env, point, tmp_path):
    env = {**env, faults.ENV: f"{point}:kill:{NTH.get(point, 1)}"}
    proc = cli_fork.run([*args, "--root", str(tmp_path), "--quiet"], env=env, timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


def stopped_for_resume(root, config, name, monkeypatch):
    """A run stopped by an exception when its 3rd chunk is written (status failed; the committed prefix, if
    any, ends before that chunk, so before the run's stop point). A fault at the 3rd commit would depend on
    how many commits there are: the writer thread commits whatever is written when it wakes, so a fast loop
    may need only one or two, the last of them covering the whole run."""
    monkeypatch.setenv(faults.ENV, "write.chunk:raise:3")
    faults._hits.clear()
    with pytest.raises(RuntimeError, match="injected fault"):
        produce(config, root=root, name=name)
    monkeypatch.delenv(faults.ENV)


def test_every_point_is_visited_in_protocol_order():
    assert len(set(faults.POINTS)) == len(faults.POINTS)
    assert [p.split(".")[0] for p in faults.POINTS] == sorted(
        (p.split(".")[0] for p in faults.POINTS), key=["create", "write", "commit", "finish", "resume"].index)


@pytest.mark.parametrize("point", faults.POINTS)
def test_sigkill_at_point(point, tmp_path, reference, python_env, monkeypatch):
    config, ref = reference
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    if point.startswith("resume"):
        stopped_for_resume(tmp_path, config, "r", monkeypatch)
        run_cli(["resume", "r"], python_env, point, tmp_path)
    else:
        run_cli(["produce", str(path), "--name", "r"], python_env, point, tmp_path)
    check_stopped_run(tmp_path, "r", point, ref)
    if point == "write.renaming":  # killed between writing a chunk's temporary file and renaming it
        left = stale_temporaries(StoreRoot(tmp_path).run_url("r"))
        assert left and all(os.path.basename(p).startswith(".tmp-") for p in left)
        assert [p for p in fsck_run(StoreRoot(tmp_path), "r").problems if "temporary file" in p]
    complete_and_compare(tmp_path, "r", config, ref)


@pytest.mark.parametrize("point", faults.POINTS)
def test_exception_at_point(point, tmp_path, reference, monkeypatch):
    config, ref = reference
    if point.startswith("resume"):
        stopped_for_resume(tmp_path, config, "r", monkeypatch)
    monkeypatch.setenv(faults.ENV, f"{point}:raise:{NTH.get(point, 1)}")
    faults._hits.clear()
    with pytest.raises((faults.InjectedFault, RuntimeError), match="injected fault"):
        if point.startswith("resume"):
            resume("r", root=tmp_path)
        else:
            produce(config, root=tmp_path, name="r")
    monkeypatch.delenv(faults.ENV)
    if StoreRoot(tmp_path).exists("r"):  # a failed write removes its temporary file: none is ever left
        assert stale_temporaries(StoreRoot(tmp_path).run_url("r")) == []
    check_stopped_run(tmp_path, "r", point, ref)
    complete_and_compare(tmp_path, "r", config, ref)
