"""Two writers of one run on an object-store root (moto's S3 server): exactly one wins (issue 8, item 10).

The lease is an object created with a conditional PUT (``If-None-Match: *``), so the race is decided by
the server, not by a read-then-write.
"""

from __future__ import annotations

import multiprocessing
import subprocess

import pytest
import yaml

from trajscope.store import RunLocked, StoreRoot, WriterLock, open_run


def _take_lease(url: str, run_id: str, barrier, results) -> None:
    root = StoreRoot(url)
    barrier.wait()
    try:
        lock = WriterLock(root, run_id).acquire()
    except RunLocked as err:
        results.put(("refused", str(err)))
        return
    results.put(("held", lock.token))


def test_two_processes_taking_the_lease_at_the_same_instant(s3_env):
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_take_lease, args=("s3://trajscope/lease-race", f"run{attempt}", barrier, results))
                 for _ in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        outcomes = sorted(results.get(timeout=10)[0] for _ in procs)
        assert outcomes == ["held", "refused"], outcomes


def test_a_dead_writers_lease_is_taken_over_once(s3_env, monkeypatch):
    from trajscope.store import locks

    root = StoreRoot("s3://trajscope/lease-stale")
    dead = WriterLock(root, "r").acquire()
    locks._HELD.discard(dead._key)  # as if its process had died: the lease object stays behind
    with pytest.raises(RunLocked, match="being written by pid"):
        WriterLock(root, "r").acquire()
    monkeypatch.setattr(locks, "LEASE_SECONDS", 0.0)  # its heartbeat is now too old
    taker = WriterLock(root, "r").acquire()
    locks._HELD.discard(taker._key)
    monkeypatch.setattr(locks, "LEASE_SECONDS", 60.0)
    with pytest.raises(RunLocked):  # the lease taken over is fresh again
        WriterLock(root, "r").acquire()
    taker._held_lease = True
    taker.release()
    WriterLock(root, "r").acquire().release()


def test_a_lease_says_what_its_holder_does_a_killed_deletion_too(s3_env, monkeypatch, write_run, python_env):
    """Found by a review: a `trajscope rm` killed on another host left its lease, and for a minute every writer was
    told the run was "being written". The lease records what it was taken for, and the refusal says it. Here the
    deletion runs in a child that calls itself another host and is killed (SIGKILL) once it holds the lease."""
    import sys

    from trajscope.store import locks
    from trajscope.store.run_attrs import delete_run

    url = "s3://trajscope/lease-purpose"
    root = StoreRoot(url)
    write_run(root, "r", steps=16, chunk_steps=8)
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, socket; socket.gethostname = lambda: 'another-host'; "
         "from trajscope.store import StoreRoot; from trajscope.store.run_attrs import delete_run; "
         "StoreRoot.delete = lambda self, run_id: os.kill(os.getpid(), signal.SIGKILL); "
         f"delete_run('r', StoreRoot({url!r}))"], env=python_env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    with pytest.raises(RunLocked, match=r"is being deleted by pid \d+ on another-host .*retry after 60 s without a "
                                        r"heartbeat: `trajscope rm r --root s3://trajscope/lease-purpose` "
                                        r"then finishes it"):
        delete_run("r", root)
    with pytest.raises(RunLocked, match="is being deleted by pid"):  # (a writer is told the same)
        WriterLock(root, "r").acquire()
    monkeypatch.setattr(locks, "LEASE_SECONDS", 0.0)  # the deletion's heartbeat is now too old: taken over, finished
    assert delete_run("r", root) == "r" and not root.exists("r")
    monkeypatch.setattr(locks, "LEASE_SECONDS", 60.0)
    editing = WriterLock(root, "e", purpose="editing").acquire()
    locks._HELD.discard(editing._key)  # (as if killed; of this process, so not seen dead)
    with pytest.raises(RunLocked, match="is having its attributes edited by pid"):
        WriterLock(root, "e").acquire()
    with pytest.raises(ValueError, match="unknown lock purpose 'erasing'"):
        WriterLock(root, "r", purpose="erasing")
    for odd in (["deleting"], {"x": 1}, 3, "erasing"):  # (a later version's lease: said as being written, no crash)
        assert "is being written by pid 1 on h" in str(WriterLock(root, "r")._refused({"purpose": odd, "pid": 1,
                                                                                      "host": "h"}, 3.0))


def test_a_long_deletion_keeps_its_lease(s3_env, monkeypatch, write_run):
    """Found by a review: ``rm`` wrote its lease once and deleted for as long as it took; a deletion of a large run
    lasting over a minute let another writer take the run over beside it. The deleting process refreshes its lease
    meanwhile (here: a deletion of 2.5 s, leases of 1 s)."""
    import threading
    import time

    from trajscope.store import locks
    from trajscope.store.run_attrs import delete_run

    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(locks, "LEASE_SECONDS", 1.0)
    root = StoreRoot("s3://trajscope/lease-long-delete")
    write_run(root, "r", steps=16, chunk_steps=8)
    slow, original = threading.Event(), StoreRoot.remove_leftovers

    def slow_removal(self, run_id):
        slow.set()
        time.sleep(2.5)
        return original(self, run_id)

    monkeypatch.setattr(StoreRoot, "remove_leftovers", slow_removal)
    deleting = threading.Thread(target=delete_run, args=("r", StoreRoot("s3://trajscope/lease-long-delete")))
    deleting.start()
    try:
        assert slow.wait(30)
        time.sleep(1.6)  # past a lease written once, at the start
        locks._HELD.discard((root.location, "r"))  # (asked as another process would: the lease object decides)
        with pytest.raises(RunLocked, match="is being deleted by pid"):
            WriterLock(root, "r").acquire()
    finally:
        deleting.join(30)
    assert not root.exists("r")


def test_a_dead_writers_lease_is_taken_over_on_a_store_without_if_match(s3_env, monkeypatch):
    """Found by a review: on a store answering NotImplemented to If-Match, a dead writer's lease could never be taken
    over ("being written by pid ..., retry after 60 s", for ever). It is removed and created anew, as where there are
    no ETags."""
    import errno

    from trajscope.store import locks

    root = StoreRoot("s3://trajscope/lease-no-if-match")
    dead = WriterLock(root, "r").acquire()
    locks._HELD.discard(dead._key)  # its process died: the lease object stays behind
    real_pipe = root.fs.pipe_file

    def no_if_match(path, data, **conditions):
        if conditions.get("IfMatch"):
            raise OSError(errno.ENOSYS, "NotImplemented")
        return real_pipe(path, data, **conditions)

    monkeypatch.setattr(root.fs, "pipe_file", no_if_match)
    monkeypatch.setattr(locks, "LEASE_SECONDS", 0.0)  # its heartbeat is too old
    taker = WriterLock(root, "r").acquire()
    monkeypatch.setattr(locks, "LEASE_SECONDS", 60.0)
    assert taker.lease()["token"] == taker.token
    with pytest.raises(RunLocked, match="being written by"):  # and it holds the run now
        locks._HELD.discard(taker._key)
        WriterLock(root, "r").acquire()
    taker._held_lease = True
    taker.release()


def test_two_producers_started_together_on_s3(s3_env, tmp_path, small_config, python_env):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(small_config(train={"steps": 400})))
    cmd = ["trajscope", "produce", str(path), "--root", "s3://trajscope/race", "--name", "same", "--quiet"]
    procs = [subprocess.Popen(cmd, env=python_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outs)
    assert codes == [0, 2], outs
    loser_err = next(err for code, _, err in outs if code == 2)
    assert len(loser_err.strip().splitlines()) == 1 and "being written by" in loser_err, loser_err
    ds = open_run("same", StoreRoot("s3://trajscope/race"))
    assert ds.attrs["status"] == "complete" and ds.sizes["step"] == 401


def test_a_stalled_writer_whose_lease_was_taken_over_stops_instead_of_overwriting_it(s3_env, monkeypatch):
    """Writer A stalls past the lease (a paused process); B takes the lease over. A's next heartbeat finds
    the lease changed (``If-Match`` its ETag fails) and raises RunLocked naming B; from then on A writes
    nothing, not even when it ends its run (no final document, no shrinking); B's lease is left intact."""
    import json

    import numpy as np

    from trajscope.producer.two_layer import variables as two_layer_variables
    from trajscope.store import RunWriter, locks

    root = StoreRoot("s3://trajscope/lease-stalled")
    stalled = RunWriter.create(root, "r", variables=two_layer_variables(), sizes={"neuron": 2, "feature": 3,
                               "sample": 4}, capacity=8, static={"X": np.zeros((4, 3)), "y": np.ones(4)},
                               attrs={}, chunk_bytes=2 * 3 * 8 * 4)
    locks._HELD.discard(stalled.lock._key)  # (B runs in this process too: not refused as "this process")
    monkeypatch.setattr(locks, "LEASE_SECONDS", 0.0)  # A's heartbeat is too old
    taker = WriterLock(root, "r").acquire()
    monkeypatch.setattr(locks, "LEASE_SECONDS", 60.0)
    before = root.read_bytes("r", "zarr.json")
    stalled.lock._lease_written = 0.0  # A wakes up after a long pause: its lease is verified before it writes
    block = {"W": np.ones((4, 2, 3)), "v": np.ones((4, 2)), "loss": np.ones(4), "output": np.ones((4, 4)),
             "step": np.arange(4), "t": np.arange(4.0)}
    with pytest.raises(RunLocked, match="taken over by pid"):
        stalled.write_block(0, block)
    assert root.fs.exists(f"{root.run_url('r')}/W/zarr.json")  # (the path is right)
    assert not root.fs.exists(f"{root.run_url('r')}/W/c/0/0/0")  # no chunk of A's over B's
    with pytest.raises(RunLocked, match="taken over by pid"):
        stalled.commit(0)
    with pytest.raises(RunLocked, match="taken over by pid"):
        stalled.lock.lease()  # and stays stopped
    with pytest.raises(RunLocked, match="taken over by pid"):
        stalled.finish("failed", "stalled")
    assert root.read_bytes("r", "zarr.json") == before  # not a byte of A's after the take-over
    assert json.loads(root.fs.cat_file(taker._lease_path()))["token"] == taker.token
    taker._lease_written = 0.0
    assert taker.lease()["token"] == taker.token  # B's own heartbeats still go through
    taker.release()


def _refresh_meets_a_takeover_after_its_read(bucket: str, monkeypatch, first_put) -> None:
    """A writer's lease refresh whose first conditional PUT fails as ``first_put(real_pipe, path, data, conditions)``
    says; a takeover happens right after the writer reads the lease back. The refresh must stop the writer
    (RunLocked) and leave the taker's lease standing."""
    import json

    from trajscope.store import locks

    root = StoreRoot(f"s3://trajscope/{bucket}")
    stalled = WriterLock(root, "r").acquire()
    locks._HELD.discard(stalled._key)  # (the taker runs in this process too)
    real_pipe, real_cat = root.fs.pipe_file, root.fs.cat_file
    lease_path = stalled._lease_path()
    state = {"failed": False, "taker": None}

    def failing(path, data, **conditions):
        if path == lease_path and conditions.get("IfMatch") and not state["failed"]:
            state["failed"] = True
            return first_put(real_pipe, path, data, conditions)
        return real_pipe(path, data, **conditions)

    def read_then_taken_over(path, *args, **kwargs):
        content = real_cat(path, *args, **kwargs)
        if path == lease_path and state["failed"] and state["taker"] is None:  # the writer has read: now the taker
            state["taker"] = "taking"
            monkeypatch.setattr(locks, "LEASE_SECONDS", 0.0)
            state["taker"] = WriterLock(root, "r").acquire()
            monkeypatch.setattr(locks, "LEASE_SECONDS", 60.0)
        return content

    monkeypatch.setattr(root.fs, "pipe_file", failing)
    monkeypatch.setattr(root.fs, "cat_file", read_then_taken_over)
    with pytest.raises(RunLocked, match="taken over by pid"):
        stalled.confirm()
    taker = state["taker"]
    assert json.loads(real_cat(lease_path))["token"] == taker.token  # the taker's lease stands
    taker._lease_written = 0.0
    assert taker.lease()["token"] == taker.token  # and its heartbeats go on
    taker.release()


def test_a_lease_refresh_that_finds_its_own_token_does_not_overwrite_a_takeover_since(s3_env, monkeypatch):
    """Found by a review: a refresh refused because its retried PUT had landed reads the lease, finds its own token,
    and wrote it again unconditionally. A ``resume`` that took the run over between that read and that write had
    its lease overwritten: two writers each believed they held the run. The rewrite now names the object it read
    (``If-Match``), so the takeover stands and the stalled writer stops."""
    import errno

    def landed_then_refused(real_pipe, path, data, conditions):  # the first attempt landed, its retry refused
        real_pipe(path, data, **conditions)
        raise OSError(errno.EINVAL, "PreconditionFailed")

    _refresh_meets_a_takeover_after_its_read("lease-own-token", monkeypatch, landed_then_refused)


def test_a_lease_refresh_that_failed_before_reaching_the_store_keeps_its_condition(s3_env, monkeypatch):
    """Found by the review of the fix above: a refresh whose PUT failed without reaching the store (a timeout) read
    the lease back unchanged and then wrote without If-Match, over a takeover made between that read and the
    write. Only a refusal of the condition itself (412 on the object named, or NotImplemented) drops it."""
    import errno

    def timed_out(real_pipe, path, data, conditions):  # never reaches the store
        raise OSError(errno.ETIMEDOUT, "Read timeout on endpoint")

    _refresh_meets_a_takeover_after_its_read("lease-timeout", monkeypatch, timed_out)


def test_an_object_store_lost_as_the_run_ends_is_one_run_failed_line(s3_env, small_config, monkeypatch):
    """Found by a review: botocore's EndpointConnectionError (not an OSError) at the final document came out of
    ``produce`` raw, where a full disk gives the documented RunFailed naming what is kept and how to go on."""
    import botocore.exceptions

    from trajscope.producer import produce, resume
    from trajscope.store import root as root_module
    from trajscope.store.errors import RunFailed

    write_bytes = root_module.StoreRoot.write_bytes

    def endpoint_lost(self, run_id, key, data, **kwargs):
        if key == "zarr.json" and b'"status": "complete"' in data:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=s3_env)
        return write_bytes(self, run_id, key, data, **kwargs)

    monkeypatch.setattr(root_module.StoreRoot, "write_bytes", endpoint_lost)
    url = "s3://trajscope/endpoint-lost"
    with pytest.raises(RunFailed, match="its status could not be stored .*Could not connect") as failed:
        produce(small_config(), root=url, name="f")
    assert "\n" not in str(failed.value) and "trajscope resume s3://trajscope/endpoint-lost/f.zarr" in str(failed.value)
    attrs = StoreRoot(url).read_attrs("f")
    assert attrs["status"] == "running" and attrs["committed_steps"] == 41  # every state kept, for resume
    monkeypatch.setattr(root_module.StoreRoot, "write_bytes", write_bytes)
    assert resume("f", root=url).status == "complete" and open_run("f", url).sizes["step"] == 41


def test_a_document_write_landing_after_a_takeover_is_refused_by_the_store(s3_env, monkeypatch):
    """Found by a review (a proxy that held a stalled writer's requests): a commit sent before a takeover landed
    after the new writer had finished, and turned the complete run back into ``running`` with fewer states. The
    lease check before the write cannot see a stall that begins after it; the write itself carries ``If-Match``
    the ETag of the document this writer last wrote, and moto's S3 refuses it once another writer replaced it."""
    import numpy as np

    from trajscope.producer.two_layer import variables as two_layer_variables
    from trajscope.store import RunWriter

    root = StoreRoot("s3://trajscope/document-race")
    writer = RunWriter.create(root, "r", variables=two_layer_variables(), sizes={"neuron": 2, "feature": 3,
                              "sample": 4}, capacity=8, static={"X": np.zeros((4, 3)), "y": np.ones(4)},
                              attrs={}, chunk_bytes=2 * 3 * 8 * 4)
    block = {"W": np.ones((4, 2, 3)), "v": np.ones((4, 2)), "loss": np.ones(4), "output": np.ones((4, 4)),
             "step": np.arange(4), "t": np.arange(4.0)}
    writer.write_block(0, block)
    writer.commit(4)
    assert writer.lock.document_etag  # (the store gave an ETag: the next write is conditional)
    # another writer's document lands (what a resume that took the run over, and finished it, wrote)
    theirs = root.read_group_metadata("r")
    theirs["attributes"].update(status="complete", committed_steps=4, writer=None)
    root.write_bytes("r", "zarr.json", __import__("json").dumps(theirs).encode())
    replaced = root.read_bytes("r", "zarr.json")
    monkeypatch.setattr(writer.lock, "lease", lambda: {"token": writer.lock.token})  # the stall is after the check
    with pytest.raises(RunLocked, match="another writer replaced the run's document"):
        writer.commit(4)
    assert root.read_bytes("r", "zarr.json") == replaced and root.read_attrs("r")["status"] == "complete"
    with pytest.raises(RunLocked):  # and it stays stopped: not even its end is written
        writer.finish("failed", "stalled")
    assert root.read_bytes("r", "zarr.json") == replaced


def _s3_writer(root, run_id="r"):
    import numpy as np

    from trajscope.producer.two_layer import variables as two_layer_variables
    from trajscope.store import RunWriter

    writer = RunWriter.create(root, run_id, variables=two_layer_variables(), sizes={"neuron": 2, "feature": 3,
                              "sample": 4}, capacity=8, static={"X": np.zeros((4, 3)), "y": np.ones(4)},
                              attrs={}, chunk_bytes=2 * 3 * 8 * 4)
    block = {"W": np.ones((4, 2, 3)), "v": np.ones((4, 2)), "loss": np.ones(4), "output": np.ones((4, 4)),
             "step": np.arange(4), "t": np.arange(4.0)}
    writer.write_block(0, block)
    return writer, block


@pytest.mark.parametrize("refusal", ["retried", "not implemented"])
def test_a_writers_own_document_write_refused_on_a_retry_or_a_store_without_conditions_goes_on(s3_env, monkeypatch,
                                                                                               refusal):
    """Found by the review of the If-Match fix: a PUT whose first attempt landed, its answer lost, was retried with
    the old If-Match and refused (412): the writer took its own write for a takeover, stopped, and left the run
    ``running``. Its own bytes stored are success. A store that does not implement If-Match (NotImplemented) is
    written without it."""
    import errno

    root = StoreRoot(f"s3://trajscope/own-write-{refusal.replace(' ', '-')}")
    writer, block = _s3_writer(root)
    writer.commit(4)
    real = StoreRoot.write_bytes
    calls = []

    def flaky(self, run_id, key, data, *, durable=False, if_match=None):
        calls.append(if_match)
        if key == "zarr.json" and if_match and len(calls) == 1:
            if refusal == "retried":
                real(self, run_id, key, data, durable=durable, if_match=if_match)  # landed...
                raise OSError(errno.EINVAL, "PreconditionFailed")  # ...and the retry was refused
            raise OSError(errno.ENOSYS, "NotImplemented")
        return real(self, run_id, key, data, durable=durable, if_match=if_match)

    monkeypatch.setattr(StoreRoot, "write_bytes", flaky)
    writer.commit(4, note_of_commit="second")  # a commit: the document written again, with If-Match
    assert root.read_attrs("r")["note_of_commit"] == "second"
    writer.finish("complete")
    attrs = root.read_attrs("r")
    assert attrs["status"] == "complete" and attrs["committed_steps"] == 4
    assert writer.lock.lost is None
    if refusal == "not implemented":
        assert calls[-1] is None  # (unconditional from then on)


def test_a_chunk_write_landing_after_a_takeover_is_refused_by_the_store(s3_env, monkeypatch):
    """A stalled writer's chunk PUT, sent before a takeover and delivered after the new writer wrote that chunk,
    must not replace it (left open by the document fix: chunk writes carried no condition). Every chunk PUT of a
    writer on S3 names the object it replaces (``If-None-Match: *`` or ``If-Match``); the request is replayed
    here as the store would receive it late, and moto's S3 refuses it. The stalled writer's next chunk write is
    refused too, and stops it (its lease check, done just before, saw nothing yet)."""
    import time

    import numpy as np

    from trajscope.store import RunWriter, locks
    from trajscope.store.hotpath import WriteFailed

    from trajscope.producer.two_layer import variables as two_layer_variables

    root = StoreRoot("s3://trajscope/chunk-race")
    stalled = RunWriter.create(root, "r", variables=two_layer_variables(), sizes={"neuron": 2, "feature": 3,
                               "sample": 4}, capacity=16, static={"X": np.zeros((4, 3)), "y": np.ones(4)},
                               attrs={"config": {}}, chunk_bytes=2 * 3 * 8 * 4)
    assert stalled.chunk_steps == 8
    block = {"W": np.ones((8, 2, 3)), "v": np.ones((8, 2)), "loss": np.ones(8), "output": np.ones((8, 4)),
             "step": np.arange(8), "t": np.arange(8.0)}
    stalled.write_block(0, block)
    stalled.commit(8)
    fs = root.fs
    real_pipe, sent = fs.pipe_file, []

    def capture(path, data, **conditions):
        if "/W/c/" in path:
            sent.append((path, data, conditions))
        return real_pipe(path, data, **conditions)

    monkeypatch.setattr(fs, "pipe_file", capture)
    stalled.write_block(8, {n: v * 3 for n, v in block.items()}).wait()  # chunk 1: written, never committed
    monkeypatch.setattr(fs, "pipe_file", real_pipe)
    (late_path, late_data, late_conditions), = sent
    assert late_conditions == {"mode": "create"}  # (a key this writer had not written)

    locks._HELD.discard(stalled.lock._key)  # (the new writer runs in this process too)
    monkeypatch.setattr(locks, "LEASE_SECONDS", 0.0)  # the stalled writer's heartbeat is too old
    resumed = RunWriter.reopen(root, "r")
    monkeypatch.setattr(locks, "LEASE_SECONDS", 60.0)
    assert resumed.committed_steps == 8
    resumed.write_block(8, {n: v * 2 for n, v in block.items()}).wait()  # over the stalled writer's chunk 1
    resumed.commit(16)
    theirs = root.read_bytes("r", "W/c/1/0/0")

    with pytest.raises(OSError):  # the stalled writer's request, landing late: refused by the store
        fs.pipe_file(late_path, late_data, **late_conditions)
    assert root.read_bytes("r", "W/c/1/0/0") == theirs
    stalled.lock._lease_written = time.time()  # its lease looked fresh when it last checked
    with pytest.raises(WriteFailed, match="taken over by pid"):
        stalled.write_block(8, {n: v * 5 for n, v in block.items()}).wait()
    assert root.read_bytes("r", "W/c/1/0/0") == theirs
    resumed.finish("complete")
    np.testing.assert_array_equal(open_run("r", root)["W"].values[8:], block["W"] * 2)


@pytest.mark.parametrize("refusal", ["retried", "not implemented"])
def test_a_writers_own_chunk_write_refused_on_a_retry_or_a_store_without_conditions_goes_on(s3_env, monkeypatch,
                                                                                            refusal):
    """A chunk PUT whose first attempt landed (its answer lost) and whose retry was refused finds the writer still
    holding the run: it writes again over exactly what is there, and the run records on. A store that answers
    NotImplemented to conditions is written without them."""
    import errno

    import numpy as np

    root = StoreRoot(f"s3://trajscope/own-chunk-{refusal.replace(' ', '-')}")
    writer, block = _s3_writer(root)
    writer.commit(4)
    fs, calls = root.fs, []
    real_pipe = fs.pipe_file

    def flaky(path, data, **conditions):
        if "/W/c/" not in path:
            return real_pipe(path, data, **conditions)
        calls.append(conditions)
        if len(calls) == 1:
            if refusal == "retried":
                real_pipe(path, data, **conditions)  # landed...
                raise FileExistsError("PreconditionFailed")  # ...and the client's retry was refused
            raise OSError(errno.ENOSYS, "NotImplemented")
        return real_pipe(path, data, **conditions)

    monkeypatch.setattr(fs, "pipe_file", flaky)
    writer.write_block(0, {n: np.concatenate([v, v * 2]) for n, v in block.items()}).wait()  # rewrites chunk 0
    writer.commit(8)
    writer.finish("complete")
    assert writer.lock.lost is None and root.read_attrs("r")["status"] == "complete"
    np.testing.assert_array_equal(open_run("r", root)["W"].values[4:], block["W"] * 2)
    assert calls[0] == {"IfMatch": calls[0]["IfMatch"]}  # (chunk 0 was this writer's: If-Match its ETag)
    assert calls[-1] == {} if refusal == "not implemented" else calls[-1]["IfMatch"] != calls[0]["IfMatch"]


def test_a_chunk_key_gone_under_a_writer_is_written_again_once_the_lease_is_confirmed(s3_env, monkeypatch):
    """AWS answers a PUT with If-Match on a key that is gone with 404 NoSuchKey (found by the review of the fence:
    the writer failed with a bare FileNotFoundError): a refusal like any other, so the writer confirms its lease
    and creates the key again."""
    import numpy as np

    root = StoreRoot("s3://trajscope/chunk-gone")
    writer, block = _s3_writer(root)
    writer.commit(4)
    fs, real_pipe, calls = root.fs, root.fs.pipe_file, []

    def gone_once(path, data, **conditions):
        if "/W/c/" in path and conditions.get("IfMatch") and not calls:
            calls.append(conditions)
            fs.rm(path)  # the key removed under the writer...
            raise FileNotFoundError(path)  # ...and its If-Match PUT answered as AWS does
        return real_pipe(path, data, **conditions)

    monkeypatch.setattr(fs, "pipe_file", gone_once)
    writer.write_block(0, {n: np.concatenate([v, v * 2]) for n, v in block.items()}).wait()
    writer.commit(8)
    writer.finish("complete")
    assert calls and writer.lock.lost is None
    np.testing.assert_array_equal(open_run("r", root)["W"].values[4:], block["W"] * 2)


def test_a_lease_of_a_writer_of_this_machine_seen_dead_is_taken_over_at_once(s3_env, python_env):
    """Found by a review: a producer killed on this host left its run refused for a minute on S3 (the lease's
    heartbeat was fresh), where a local root's lock frees at once. A lease records the writer's process space
    (boot and pid namespace); one of this space whose pid is gone is taken over at once. One of another space,
    or without the record, is waited out as before."""
    import json
    import sys
    import time

    from trajscope.store import locks

    root = StoreRoot("s3://trajscope/lease-dead-here")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from trajscope.store import StoreRoot, WriterLock; "
         "WriterLock(StoreRoot('s3://trajscope/lease-dead-here'), 'r').acquire(); print('held', flush=True); "
         "time.sleep(120)"], stdout=subprocess.PIPE, text=True, env=python_env)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not locks.writer_gone(root, "r")
        with pytest.raises(RunLocked, match="being written by pid"):
            WriterLock(root, "r").acquire()
    finally:
        holder.kill()
        holder.wait()
    assert locks.writer_gone(root, "r")  # (ls says so at once)
    lease = json.loads(root.fs.cat_file(locks._lease_path(root, "r")))
    assert lease["pid"] == holder.pid and time.time() - lease["heartbeat"] < locks.LEASE_SECONDS
    taker = WriterLock(root, "r").acquire()  # at once, not after LEASE_SECONDS
    taker.release()
    for other in ({"processes": "another-boot/4026531836"}, {"processes": None}):  # (another machine or
        root.fs.pipe_file(locks._lease_path(root, "r"), json.dumps({**lease, **other, "heartbeat": time.time()}).encode())
        assert not locks.writer_gone(root, "r")  # container of the same name; a lease written before the record)
        with pytest.raises(RunLocked, match="being written by pid"):
            WriterLock(root, "r").acquire()
