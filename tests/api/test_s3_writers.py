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
