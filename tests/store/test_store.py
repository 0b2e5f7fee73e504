"""The store contract: layout, commit protocol, trimming, checksums, plain zarr/xarray access, roots."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from trajscope.producer.two_layer import variables as two_layer_variables
from tests import cli_fork
from trajscope.store import (
    CorruptData,
    RunLocked,
    RunNotFound,
    RunWriter,
    StoreRoot,
    UserError,
    WriterLock,
    list_runs,
    open_run,
    validate_run_id,
)


def new_writer(root, run_id="r", capacity=50, h=3, dim=4, n=5, chunk_bytes=3 * 4 * 4 * 8):
    rng = np.random.default_rng(0)
    return RunWriter.create(
        root, run_id, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=capacity, static={"X": rng.normal(size=(n, dim)), "y": np.array([1, -1, 1, -1, 1])},
        attrs={"config": {"train": {"lr": 0.1}}}, chunk_bytes=chunk_bytes,
    )


def hold_lock_in_another_process(root_path, python_env) -> subprocess.Popen:
    """A process holding run ``r``'s writer lock under ``root_path`` (returned once it holds it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from trajscope.store import StoreRoot, WriterLock; "
         f"WriterLock(StoreRoot({str(root_path)!r}), 'r').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=python_env,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def block(start, count, h=3, dim=4, n=5):
    rng = np.random.default_rng(start)
    steps = np.arange(start, start + count)
    return {"W": rng.normal(size=(count, h, dim)), "v": rng.normal(size=(count, h)), "loss": rng.random(count),
            "output": rng.normal(size=(count, n)), "step": steps, "t": steps * 0.1}


def test_layout_chunks_codecs_and_attributes(tmp_path):
    root = StoreRoot(tmp_path)
    writer = new_writer(root)
    assert writer.chunk_steps == 8  # 3*4 float32 = 48 bytes a step, 384-byte chunks
    meta = json.loads((tmp_path / "r.zarr" / "W" / "zarr.json").read_text())
    assert meta["dimension_names"] == ["step", "neuron", "feature"]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [8, 3, 4]
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "crc32c"]
    assert meta["data_type"] == "float32"
    for name, dims in {"v": ["step", "neuron"], "loss": ["step"], "output": ["step", "sample"], "X": ["sample", "feature"],
                       "y": ["sample"], "step": ["step"], "t": ["step"]}.items():
        assert json.loads((tmp_path / "r.zarr" / name / "zarr.json").read_text())["dimension_names"] == dims
    attrs = root.read_attrs("r")
    assert attrs["status"] == "running" and attrs["committed_steps"] == 0
    assert {"trajscope", "zarr", "numpy", "python", "torch"} <= set(attrs["versions"])
    writer.finish("complete")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_a_plain_open_gives_them(tmp_path, umask, mode):
    """The root document, array metadata, chunk files and the lock file are readable by other users unless the
    umask says otherwise (a server in a container may run as another user than the producer), and writable by
    the group where the umask lets it (found by a review: in a root shared by a group, umask 002, chunk files and
    the lock file were 0o644 whatever the umask, so no one else of the group could resume a crashed run)."""
    old = os.umask(umask)
    try:
        writer = new_writer(StoreRoot(tmp_path))
        writer.write_block(0, block(0, writer.chunk_steps)).wait(20)
        writer.commit()
        writer.finish("complete")
    finally:
        os.umask(old)
    run = tmp_path / "r.zarr"
    for path in (run / "zarr.json", run / "W" / "zarr.json", run / "W" / "c" / "0" / "0" / "0",
                 tmp_path / ".locks" / "r.lock"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_readers_trim_to_committed_steps_and_see_fresh_metadata(tmp_path):
    root = StoreRoot(tmp_path)
    writer = new_writer(root)
    first, second = block(0, 8), block(8, 8)
    writer.write_block(0, first)
    writer.commit(8)
    writer.write_block(8, second)  # written but not committed: invisible
    ds = open_run("r", root)
    assert ds.sizes["step"] == 8
    np.testing.assert_allclose(ds.W.values, first["W"].astype(np.float32))
    writer.commit(16)
    ds = open_run("r", root)
    assert ds.sizes["step"] == 16 and ds.attrs["status"] == "running"
    np.testing.assert_allclose(ds.loss.values[8:], second["loss"])
    writer.write_block(16, block(16, 3))  # the final partial chunk
    writer.commit(19)
    writer.finish("complete")
    ds = open_run(str(tmp_path / "r.zarr"))
    assert ds.sizes["step"] == 19 and ds.attrs["status"] == "complete"
    assert ds.W.shape == (19, 3, 4)
    np.testing.assert_array_equal(ds.step.values, np.arange(19))
    assert "t" in ds.coords and ds.W.chunks[0] == (8, 8, 3)


def test_writes_must_be_whole_chunks_within_capacity(tmp_path):
    writer = new_writer(StoreRoot(tmp_path), capacity=20)
    with pytest.raises(ValueError, match="not within one chunk"):
        writer.write_block(3, block(3, 2))
    with pytest.raises(ValueError, match="exceeds the run's capacity"):
        writer.write_block(16, block(16, 8))
    writer.finish("failed", error="test")


def test_corrupted_chunk_is_detected_not_returned(tmp_path):
    root = StoreRoot(tmp_path)
    writer = new_writer(root)
    writer.write_block(0, block(0, 8))
    writer.commit(8)
    writer.finish("complete")
    chunk = tmp_path / "r.zarr" / "W" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    ds = open_run("r", root)
    np.testing.assert_array_equal(ds.v.values, block(0, 8)["v"].astype(np.float32))  # other arrays intact
    # named, not zarr's bare ValueError "checksum do not match" (which names no chunk)
    with pytest.raises(CorruptData, match=r"variable W: chunk W/c/0/0/0 \(states 0–7\) fails its crc32c checksum") as err:
        ds.W.values
    assert [(c.variable, c.key, c.steps, c.missing) for c in err.value.chunks] == [("W", "W/c/0/0/0", (0, 7), False)]
    with pytest.raises(CorruptData, match="W/c/0/0/0"):  # through dask's threads too, on a slice of the chunk
        ds.W.isel(step=slice(2, 4)).compute(scheduler="threads")
    # zarr itself still sees the same bytes as corrupt (the store's check is an addition, not a replacement)
    import zarr
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(str(tmp_path / "r.zarr" / "W"), mode="r")[:]


def test_one_writer_per_run(tmp_path, python_env):
    root = StoreRoot(tmp_path)
    writer = new_writer(root)
    with pytest.raises(RunLocked, match="already being written"):
        RunWriter.reopen(root, "r")
    with pytest.raises(RunLocked, match="being written"):  # a live run: its writer is named
        new_writer(root)
    writer.commit(0)
    writer.lock.release()
    # another process holds the lock: refused with a message naming it
    holder = hold_lock_in_another_process(tmp_path, python_env)
    try:
        with pytest.raises(RunLocked, match=r"being written by pid \d+"):
            RunWriter.reopen(root, "r")
    finally:
        holder.kill()
        holder.wait()
    reopened = RunWriter.reopen(root, "r")  # the dead holder's lock is gone
    reopened.finish("interrupted")


def test_plain_zarr_and_xarray_open_a_finished_run_without_trajscope(make_run, python_env):
    ds = make_run("plain")
    path = make_run.root / "plain.zarr"
    code = f"""
import sys, numpy as np, xarray as xr, zarr
ds = xr.open_zarr({str(path)!r})
g = zarr.open_group({str(path)!r}, mode="r")
assert not any(m.startswith("trajscope") for m in sys.modules), "trajscope was imported"
assert dict(ds.sizes) == {{"step": {ds.sizes['step']}, "neuron": 8, "feature": 6, "sample": 30}}, dict(ds.sizes)
assert ds.W.dims == ("step", "neuron", "feature") and ds.output.dims == ("step", "sample")
assert "t" in ds.coords and "step" in ds.coords
assert g["W"].shape == ({ds.sizes['step']}, 8, 6) and g.attrs["status"] == "complete"
np.save(sys.argv[1], ds.W.values)
"""
    out = make_run.root / "w.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=python_env, timeout=120)
    np.testing.assert_array_equal(np.load(out), ds.W.values)


def test_memory_root_and_catalog(small_config):
    from trajscope.producer import produce

    root = StoreRoot("memory://trajscope-test-catalog")
    produce(small_config(), root=root, name="m1")
    produce(small_config(train={"steps": 5}), root=root, name="m2")
    infos = {info.run_id: info for info in list_runs(root)}
    assert set(infos) == {"m1", "m2"}
    assert infos["m2"].committed_steps == 6 and infos["m2"].status == "complete" and infos["m2"].size_bytes > 0
    ds = open_run("m1", root)
    assert ds.sizes["step"] == 41 and np.isfinite(ds.W.values).all()
    root.delete("m2")
    assert [info.run_id for info in list_runs(root)] == ["m1"]


def test_unknown_runs_and_bad_ids(tmp_path):
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        open_run("nope", tmp_path)
    for bad in ["../etc", "a/b", "", ".hidden", "x" * 200, "r.zarr", "done\n"]:
        with pytest.raises(UserError, match="invalid run id"):
            validate_run_id(bad)
    assert list_runs(tmp_path / "does-not-exist") == []


def test_writer_lock_context_manager(tmp_path):
    root = StoreRoot(tmp_path)
    with WriterLock(root, "x"):
        with pytest.raises(RunLocked):
            WriterLock(root, "x").acquire()
    WriterLock(root, "x").acquire().release()


def test_a_lock_that_cannot_name_its_holder_is_not_taken_and_keeps_no_descriptor(tmp_path, monkeypatch):
    """Writing the holder's name into the lock file fails (a full disk): the lock is not taken, its file
    descriptor (which held the flock) is closed, and the next attempt takes it."""
    import errno

    root = StoreRoot(tmp_path)
    WriterLock(root, "x").acquire().release()  # the lock file exists already
    descriptors = len(os.listdir("/proc/self/fd"))

    def disk_full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "ftruncate", disk_full)
    with pytest.raises(OSError, match="No space left"):
        WriterLock(root, "x").acquire()
    assert len(os.listdir("/proc/self/fd")) == descriptors
    monkeypatch.undo()
    WriterLock(root, "x").acquire().release()


def test_a_forked_child_does_not_keep_the_run_locked(tmp_path, python_env):
    """A child forked while the lock is held (as a DataLoader's workers are) closes its copy of the lock's
    descriptor: once the writer releases the lock, another process takes it while the child still lives."""
    root = StoreRoot(tmp_path)
    lock = WriterLock(root, "x").acquire()
    child = os.fork()
    if child == 0:  # the child: lives on for a while, as a worker would, then leaves without cleanup
        time.sleep(5)
        os._exit(0)
    try:
        lock.release()
        take = ("from trajscope.store import StoreRoot, WriterLock; import sys; "
                "WriterLock(StoreRoot(sys.argv[1]), 'x').acquire().release(); print('taken')")
        proc = subprocess.run([sys.executable, "-c", take, str(tmp_path)], env=python_env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and "taken" in proc.stdout, proc.stderr[-2000:]
        assert os.waitpid(child, os.WNOHANG) == (0, 0)  # the child was alive all along
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_xarray_backend_trims_a_live_run(tmp_path):
    root = StoreRoot(tmp_path)
    writer = new_writer(root)
    writer.write_block(0, block(0, 8))
    writer.commit(5)  # e.g. a partial flush: 5 of 8 rows committed
    ds = xr.open_dataset(tmp_path / "r.zarr", engine="trajscope")
    assert ds.sizes["step"] == 5 and ds.attrs["status"] == "running"
    np.testing.assert_allclose(ds.v.values, block(0, 8)["v"][:5].astype(np.float32))
    assert "loss" not in xr.open_dataset(tmp_path / "r.zarr", engine="trajscope", drop_variables="loss")
    writer.finish("complete")


def test_a_static_array_equal_to_its_fill_value_is_stored_and_fsck_is_clean(tmp_path):
    """zarr skips a chunk that is all fill value unless told otherwise; an all-zero static array then had no
    chunk file and fsck reported it missing. The writer stores every chunk."""
    from trajscope.store.fsck import fsck_run

    root = StoreRoot(tmp_path)
    writer = RunWriter.create(
        root, "r", variables=two_layer_variables(), sizes={"neuron": 3, "feature": 4, "sample": 5}, capacity=8,
        static={"X": np.zeros((5, 4)), "y": np.zeros(5)}, attrs={"config": {"train": {"lr": 0.1}}},
        chunk_bytes=3 * 4 * 4 * 8)
    writer.write_block(0, block(0, 8)).wait(20)
    writer.commit()
    writer.finish("complete")
    assert (tmp_path / "r.zarr" / "y" / "c" / "0").exists() and (tmp_path / "r.zarr" / "X" / "c" / "0" / "0").exists()
    report = fsck_run(root, "r")
    assert report.problems == [], report.problems
    np.testing.assert_array_equal(open_run("r", root)["y"].values, np.zeros(5))


def write_whole(root, seed):
    """A finished run ``r`` of 40 states in five chunks (the blocks of ``seed``)."""
    writer = new_writer(root, capacity=40)
    for start in range(0, 40, 8):
        writer.write_block(start, block(seed + start, 8)).wait(20)
    writer.commit(40)
    writer.finish("complete")


async def _gather(store, keys):
    from zarr.core.buffer import default_buffer_prototype

    return await asyncio.gather(*(store.get(key, default_buffer_prototype()) for key in keys))


def _snapshot_store(ds):
    """The SnapshotStore behind an ``open_run`` dataset (built again the way open_run builds it)."""
    import json as _json

    from trajscope.store.reader import SnapshotStore
    from trajscope.store.snapshot import LostChunkCheck, snapshot

    root, run_id = StoreRoot(ds.attrs["root"]), ds.attrs["run_id"]
    snap = snapshot(root, run_id)
    return SnapshotStore(root.zarr_store(run_id, read_only=True), _json.dumps(snap.document()).encode(),
                         LostChunkCheck(root, run_id, snap.attrs, snap.arrays))


def whole_w(seed):
    return np.concatenate([block(seed + start, 8)["W"] for start in range(0, 40, 8)]).astype(np.float32)


@pytest.mark.parametrize("replaced", [True, False])
def test_a_lazy_dataset_kept_across_a_delete_and_a_new_run_of_its_id_raises(tmp_path, replaced):
    """A dataset opened with ``open_run`` before its run was deleted and created again under the same id
    read the new run's chunks under the old run's attributes (found by a review: a notebook's ``ds`` kept
    across ``trajscope rm`` and ``produce --name``). Every chunk found is checked to be of the run opened:
    ``RunNotFound`` saying so."""
    from trajscope.store.reader import SnapshotStore
    from trajscope.store.run_attrs import delete_run

    root = StoreRoot(tmp_path)
    write_whole(root, 0)
    checks = []
    original = SnapshotStore._root_document

    async def counted(self):
        checks.append(1)
        return await original(self)

    SnapshotStore._root_document = counted
    try:  # a run's own chunks read as they are; on an object store reads done together share one check
        np.testing.assert_array_equal(open_run("r", root)["W"].values, whole_w(0))
        remote = StoreRoot(f"memory://lazy-{replaced}")
        write_whole(remote, 0)
        ds = open_run("r", remote)
        np.testing.assert_array_equal(ds["W"].values, whole_w(0))
        checks.clear()
        keys = [f"W/c/{i}/0/0" for i in range(5)] * 8  # 40 reads at once, as one zarr read of many chunks
        values = asyncio.run(_gather(_snapshot_store(ds), keys))
        assert all(v is not None for v in values) and 1 <= len(checks) <= 10, len(checks)  # (one a read: 40)
    finally:
        SnapshotStore._root_document = original
    reads = []  # on a local root the document is read again only when its stamp changed (found by a review: it was
    original_read = StoreRoot.read_attrs  # read and parsed once a chunk, 10 s for one quantity of a run of 500
    # parameters)

    def counted_read(self, run_id, *args, **kwargs):
        reads.append(run_id)
        return original_read(self, run_id, *args, **kwargs)

    ds = open_run("r", root)
    StoreRoot.read_attrs = counted_read
    try:
        np.testing.assert_array_equal(ds["W"].values, whole_w(0))
    finally:
        StoreRoot.read_attrs = original_read
    assert len(reads) <= 1, reads  # (5 chunks read)
    old = open_run("r", root)
    delete_run("r", root)
    if replaced:  # the same id, the same shapes, other numbers
        write_whole(root, 100)
    with pytest.raises(RunNotFound, match="deleted \\(or replaced\\) while it was read; open it again"):
        old["W"].values
    if replaced:
        np.testing.assert_array_equal(open_run("r", root)["W"].values, whole_w(100))
    old = open_run("r", remote)  # the same on an object store (the awaited check)
    delete_run("r", remote)
    if replaced:
        write_whole(remote, 100)
    with pytest.raises(RunNotFound, match="deleted \\(or replaced\\) while it was read; open it again"):
        old["W"].values


def test_a_running_run_whose_writer_is_gone_is_told_apart(tmp_path, python_env, capsys):
    """Found by a review: a run whose producer was killed showed ``running`` for ever in ``ls``, the API and the
    dashboard (which polled it every second). Listings now say ``writer_gone`` where no writer can hold it:
    the process the lock file names is dead, or an object store's lease is stale or absent."""
    from trajscope.cli import main
    from trajscope.store import describe_run
    from trajscope.store.locks import LEASE_SECONDS, writer_gone

    root = StoreRoot(tmp_path)
    writer = new_writer(root)
    assert not describe_run("r", root).writer_gone  # held by this process
    writer.lock.release()
    holder = hold_lock_in_another_process(tmp_path, python_env)
    try:
        assert not describe_run("r", root).writer_gone  # another live process holds it
    finally:
        holder.kill()
    try:  # killed, not yet reaped: its pid still answers (a zombie), its flock is gone (found by a review)
        for _ in range(500):  # (its main thread a zombie and its other threads gone: they held its files)
            with open(f"/proc/{holder.pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z" and os.listdir(f"/proc/{holder.pid}/task") == [
                        str(holder.pid)]:
                    break
            time.sleep(0.01)
        assert describe_run("r", root).writer_gone
    finally:
        holder.wait()
    assert root.read_attrs("r")["status"] == "running" and describe_run("r", root).writer_gone
    capsys.readouterr()
    main(["ls", "--root", str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["writer_gone"] is True
    main_ls = cli_fork.run(["ls", "--root", str(tmp_path)], env=python_env, timeout=120)
    assert "writer gone" in main_ls.stdout and "trajscope resume r" in main_ls.stdout.replace("\n", "")
    RunWriter.reopen(root, "r").finish("complete")
    assert not describe_run("r", root).writer_gone  # only a running run
    # an object store: the lease's heartbeat
    remote = StoreRoot("memory://gone-writer")
    other = new_writer(remote)
    other.lock.release()
    assert writer_gone(remote, "r")  # no lease at all
    lease = remote.fs._strip_protocol("memory://gone-writer/.locks/r.lease")
    for age, gone in ((0.0, False), (LEASE_SECONDS + 5, True)):
        remote.fs.pipe_file(lease, json.dumps({"token": "t", "host": "h", "pid": 1,
                                               "heartbeat": time.time() - age}).encode())
        assert writer_gone(remote, "r") is gone


@pytest.mark.parametrize("name", ["a b", "x/y", "..", "zarr.json", "__meta", ""])
def test_a_variable_name_no_reader_could_read_is_refused_before_anything_is_made(tmp_path, name):
    """The snapshot that readers open lists arrays by :data:`~trajscope.store.layout.VARIABLE_NAME`; a run with
    another name was written to the end and then read as corrupt (found by a review)."""
    from trajscope.store.layout import VariableSpec

    variables = {**two_layer_variables(), name: VariableSpec(name, ("step",), "float64", "scalar")}
    with pytest.raises(UserError, match="cannot be stored: use 1-128 characters.*nothing was created"):
        RunWriter.create(StoreRoot(tmp_path), "r", variables=variables, sizes={"neuron": 3, "feature": 4, "sample": 5},
                         capacity=8, static={"X": np.zeros((5, 4)), "y": np.ones(5)}, attrs={})
    assert not StoreRoot(tmp_path).run_ids() and not (tmp_path / "r.zarr").exists()


def test_an_object_stores_dropped_connections_leave_no_tracebacks(capsys):
    """Found by a review: an S3 outage printed dozens of ten-line "Task exception was never retrieved" aiohttp
    tracebacks (from fsspec's I/O loop) before the one-line error. Those are dropped; other errors are not."""
    import asyncio
    import logging

    aiohttp = pytest.importorskip("aiohttp")
    from trajscope.store.root import _connection_noise

    root = StoreRoot("s3://bucket/prefix")  # (nothing is asked of the store)
    assert root.fs.loop.get_exception_handler() is _connection_noise
    loop = asyncio.new_event_loop()
    try:
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("asyncio").addHandler(handler)
        try:
            for exc in (aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
                        ConnectionResetError(104, "reset")):
                _connection_noise(loop, {"message": "Task exception was never retrieved", "exception": exc})
            assert records == []
            _connection_noise(loop, {"message": "Task exception was never retrieved", "exception": KeyError("x")})
            assert len(records) == 1 and "never retrieved" in records[0].getMessage()
        finally:
            logging.getLogger("asyncio").removeHandler(handler)
    finally:
        loop.close()


def test_a_copy_with_other_chunk_keys_is_read_as_plain_zarr_reads_it(tmp_path):
    """Found by a review: open_run served every crc32c array's metadata without the codec but checked and cut the
    checksum only of keys NAME/c/...; a valid copy whose chunk keys are c.0.0 (separator ".") read as garbage."""
    import glob
    import shutil

    root = StoreRoot(tmp_path / "runs")
    writer = new_writer(root)
    writer.write_block(0, block(0, 8))
    writer.commit(8)
    writer.finish("complete")
    copy = tmp_path / "dot.zarr"
    shutil.copytree(tmp_path / "runs" / "r.zarr", copy)
    dotted = {"name": "default", "configuration": {"separator": "."}}
    for array in [p for p in copy.iterdir() if p.is_dir()]:
        meta = json.loads((array / "zarr.json").read_text())
        meta["chunk_key_encoding"] = dotted
        (array / "zarr.json").write_text(json.dumps(meta))
        for chunk in glob.glob(str(array / "c" / "**"), recursive=True):
            if os.path.isfile(chunk):
                os.rename(chunk, array / os.path.relpath(chunk, array).replace("/", "."))
        shutil.rmtree(array / "c", ignore_errors=True)
    group = json.loads((copy / "zarr.json").read_text())
    for meta in (group.get("consolidated_metadata") or {}).get("metadata", {}).values():
        if meta.get("node_type") == "array":
            meta["chunk_key_encoding"] = dotted
    (copy / "zarr.json").write_text(json.dumps(group))
    original = open_run("r", root)
    dotted_run = open_run(str(copy))
    for name in ("W", "v", "loss", "output"):
        np.testing.assert_array_equal(dotted_run[name].values, original[name].values)
        np.testing.assert_array_equal(xr.open_zarr(copy)[name].values, original[name].values)


def test_a_resumed_run_holds_no_end_of_the_segment_before_until_it_ends_again(tmp_path):
    """Found by a review: a run being resumed (or killed while resumed) listed the final loss of its earlier end."""
    import numpy as np

    from trajscope.producer.two_layer import variables as two_layer_variables
    from trajscope.store import RunWriter

    root = StoreRoot(tmp_path)
    writer = RunWriter.create(root, "r", variables=two_layer_variables(), sizes={"neuron": 2, "feature": 3, "sample": 4},
                              capacity=8, static={"X": np.zeros((4, 3)), "y": np.ones(4)}, attrs={"config": {}},
                              chunk_bytes=2 * 3 * 4 * 4)
    block = {"W": np.ones((4, 2, 3)), "v": np.ones((4, 2)), "loss": np.ones(4), "output": np.ones((4, 4)),
             "step": np.arange(4), "t": np.arange(4.0)}
    writer.write_block(0, block)
    writer.commit(4)
    writer.finish("interrupted", final_loss=float("nan"), last_step=3)
    ended = root.read_attrs("r")
    assert {"finished", "last_step", "not_finite"} <= set(ended) and ended["final_loss"] is None
    again = RunWriter.reopen(root, "r")
    resumed = root.read_attrs("r")
    assert resumed["status"] == "running" and not {"final_loss", "last_step", "not_finite", "finished"} & set(resumed)
    again.finish("complete", final_loss=0.5, last_step=3)
    assert root.read_attrs("r")["final_loss"] == 0.5 and "finished" in root.read_attrs("r")
