"""The local writer lock when its holder has a writer process: a dead named holder's lock is waited for.

A trainer with a writer process shares one ``flock`` with it. When the trainer is SIGKILLed, the lock
stays held until the writer process has seen end-of-file and exited; a new writer (``resume``) waits a
short grace period for that instead of being refused. A live named holder is refused at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from trajscope.store import RunLocked, StoreRoot, WriterLock

#: holds the run's flock, names ``pid`` as its holder, exits after ``seconds``
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, f"pid {sys.argv[2]} on {sys.argv[3]}".encode(), 0)
print("held", flush=True)
time.sleep(float(sys.argv[4]))
"""


def hold(root: StoreRoot, run_id: str, named_pid: int, seconds: float) -> subprocess.Popen:
    path = root.lock_path(run_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(named_pid), socket.gethostname(), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_holders_lock_is_waited_for_until_its_writer_process_exits(tmp_path):
    root = StoreRoot(tmp_path)
    holder = hold(root, "r", dead_pid(), 1.0)  # the named trainer is dead, "its writer process" exits in 1 s
    lock = WriterLock(root, "r").acquire()  # refused without the grace period: the flock is still held
    try:
        assert holder.poll() is not None or holder.wait(5) == 0  # taken only once the holder was gone
    finally:
        lock.release()


def test_a_live_holder_is_refused_at_once_naming_it(tmp_path):
    root = StoreRoot(tmp_path)
    holder = hold(root, "r", os.getpid(), 1.0)  # gone after 1 s: waiting for a live holder would get the lock
    try:
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} on"):
            WriterLock(root, "r").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_still_locked_after_the_grace_period_is_refused_saying_to_retry(tmp_path, monkeypatch):
    """A writer process inside a slow last commit (an fsync) can outlast the grace period: the refusal names
    the dead trainer and says the lock is transient, instead of asking to stop a process that is gone."""
    from trajscope.store import locks

    monkeypatch.setattr(locks, "EXIT_GRACE_SECONDS", 0.2)
    root = StoreRoot(tmp_path)
    named = dead_pid()
    holder = hold(root, "r", named, 30.0)
    try:
        with pytest.raises(RunLocked, match=f"writer process of pid {named} on .* has exited.*retry in a few seconds"):
            WriterLock(root, "r").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_released_lock_says_so_and_a_crashed_run_stays_writer_gone(tmp_path):
    """Found while reviewing the lock: a released lock file kept naming its last holder. When that holder was a
    live process (a notebook or server that tagged the run), a crashed run still marked ``running`` was listed
    as having a live writer for as long as that process lived."""
    import numpy as np

    from trajscope.producer.two_layer import variables
    from trajscope.store import RunWriter, locks, open_run
    from trajscope.store.run_attrs import tag_run

    root = StoreRoot(tmp_path)
    writer = RunWriter.create(root, "crashed", variables=variables(), sizes={"neuron": 2, "feature": 3, "sample": 4},
                              capacity=8, static={"X": np.zeros((4, 3)), "y": np.array([1, -1, 1, -1])},
                              attrs={"config": {}})
    writer.commit(0)
    writer.lock.release()  # status running, no writer: as a killed producer leaves it
    with open(root.lock_path("crashed"), "w") as f:
        f.write(f"pid {dead_pid()} on {socket.gethostname()}")
    assert locks.writer_gone(root, "crashed")
    tag_run("crashed", root, add=["seen=yes"])  # this (live) process takes the lock and lets it go
    assert open_run("crashed", root).attrs["status"] == "running"
    with open(root.lock_path("crashed")) as f:
        assert f.read() == f"released by pid {os.getpid()} on {socket.gethostname()}"
    assert locks.writer_gone(root, "crashed") and locks.writer_named(root, "crashed") == ""


def test_a_released_lock_still_held_by_a_writer_process_is_waited_for(tmp_path):
    """The trainer released (its file says so) while its writer process, sharing the flock, still exits."""
    root = StoreRoot(tmp_path)
    holder = hold(root, "r", 0, 1.0)
    with open(root.lock_path("r"), "r+") as f:
        f.truncate(0)
        f.write(f"released by pid {dead_pid()} on {socket.gethostname()}")
    lock = WriterLock(root, "r").acquire()  # not refused as held by "released by …"
    try:
        assert holder.poll() is not None or holder.wait(5) == 0
    finally:
        lock.release()


def test_fsck_without_repair_asks_the_lock_without_writing_it(tmp_path, monkeypatch):
    """Found by a review: `fsck RUN` of a run marked running took the writer lock to ask whether a writer was alive,
    so on a read-only root, or with another user's lock file, it failed ("permission denied at r.lock"), and
    elsewhere it rewrote the lock file's holder line. Without --repair it only probes the flock now: a crashed run
    is checked (its lock file unchanged, even where it may not be opened for writing), a live writer's is told."""
    import errno

    from trajscope.store import locks
    from trajscope.store.fsck import fsck_run

    from tests.store.test_symlinks import write_run

    root = StoreRoot(tmp_path)
    write_run(root, "r", live=True)  # committed, still `running`, its writer gone
    with open(root.lock_path("r"), "w") as handle:
        handle.write(f"pid {dead_pid()} on {socket.gethostname()}")
    before = open(root.lock_path("r")).read()

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", root.lock_path("r"))

    monkeypatch.setattr(locks, "_open_lock_file", read_only)  # (what another user's lock file answers to a write)
    report = fsck_run(root, "r")
    assert report.status == "running" and report.committed == 16 and report.chunks_verified > 0
    assert any("no writer holds the run" in p for p in report.problems), report.problems
    assert open(root.lock_path("r")).read() == before
    holder = hold(root, "r", os.getpid(), 30)
    try:
        assert not any("no writer holds the run" in p for p in fsck_run(root, "r").problems)  # (a live writer's)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_this_user_may_not_open_is_named_whole(tmp_path, monkeypatch):
    """Found by a review: another user's lock file gave "permission denied at r.lock" (opened relative to its
    folder, the error named the file alone); the message names the whole path now."""
    import errno

    from trajscope.store import locks

    root = StoreRoot(tmp_path)
    real_open = os.open

    def denied(name, flags, mode=0o777, *, dir_fd=None):
        if name == "r.lock":
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open(name, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(locks.os, "open", denied)
    with pytest.raises(PermissionError) as refused:
        WriterLock(root, "r").acquire()
    assert refused.value.filename == root.lock_path("r")


def test_asking_about_a_runs_writer_makes_no_lock_folder(tmp_path):
    """The read-only probes (``writer_holds``, ``writer_gone``: fsck, listings) make nothing: a root copied without
    its ``.locks`` folder keeps none (found by the read-through: they made it, which a read-only root refuses)."""
    from trajscope.store.locks import writer_gone, writer_holds

    from tests.store.test_symlinks import write_run

    root = StoreRoot(tmp_path)
    write_run(root, "r", live=True)
    import shutil

    shutil.rmtree(tmp_path / ".locks")
    assert writer_holds(root, "r") is False and writer_gone(root, "r") is False
    assert not (tmp_path / ".locks").exists()


def test_a_readers_probe_of_the_lock_does_not_refuse_a_writer(tmp_path):
    """Found by a review: a listing asks whether a run's named holder (alive, but holding no flock: a zombie, a
    reused pid) still writes it by a shared ``flock`` of a few microseconds (``writer_holds``); a ``resume`` that
    tried the lock in that moment was refused at once, "being written by pid N". It is tried again first."""
    import fcntl
    import threading
    import time

    root = StoreRoot(tmp_path)
    WriterLock(root, "r").acquire().release()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # a live process, no writer
    try:
        with open(root.lock_path("r"), "w") as f:
            f.write(f"pid {alive.pid} on {socket.gethostname()}")
        probe = os.open(root.lock_path("r"), os.O_RDONLY)
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader's probe, let go 20 ms later
        threading.Timer(0.02, os.close, (probe,)).start()
        began = time.monotonic()
        lock = WriterLock(root, "r").acquire()
        lock.release()
        assert time.monotonic() - began < 1.0
    finally:
        alive.kill()
        alive.wait()


def test_rm_removes_the_lock_file_and_a_writer_that_opened_it_first_locks_the_new_one(tmp_path, monkeypatch):
    """Found by a review: ``rm`` left ``.locks/RUN.lock`` behind. It is removed as the deletion ends, which is
    safe only if a writer that opened the old file before its removal does not hold a lock on a file no other
    writer can see: it finds the name gone after taking the flock and locks the file made again."""
    import numpy as np

    import trajscope.store.locks as locks
    from trajscope.producer.two_layer import variables
    from trajscope.store import RunWriter
    from trajscope.store.run_attrs import delete_run

    root = StoreRoot(tmp_path / "runs")
    writer = RunWriter.create(root, "r", variables=variables(), sizes={"neuron": 2, "feature": 3, "sample": 4},
                              capacity=8, static={"X": np.zeros((4, 3)), "y": np.array([1, -1, 1, -1])},
                              attrs={"config": {}})
    writer.commit(0)
    writer.finish("complete")
    path = root.lock_path("r")
    assert os.path.exists(path)  # (its writer made it)
    os.symlink("r.zarr", os.path.join(root.location, "alias.zarr"))  # a link to the run, deleted as a link:
    delete_run("alias", root)  # the run it names stays, and its lock file (found by a review)
    assert root.exists("r") and os.path.exists(path)
    delete_run("r", root)
    assert not os.path.exists(path) and not root.exists("r")
    # a writer that opened the lock file just before a deleter removed it
    real = locks._open_lock_file
    first: list[int] = []

    def opened_before_the_removal(base, name):
        fd = real(base, name)
        if not first:
            first.append(fd)
            os.unlink(name)  # the deleter's remove_file, between this open and the flock
        return fd

    monkeypatch.setattr(locks, "_open_lock_file", opened_before_the_removal)
    lock = WriterLock(root, "r").acquire()
    try:
        held, named = os.fstat(lock._fd), os.stat(path)
        assert (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)  # the file others will open
        monkeypatch.setattr(locks, "_open_lock_file", real)
        probe = subprocess.run([sys.executable, "-c", "import sys; from trajscope.store import StoreRoot, WriterLock; "
                                "WriterLock(StoreRoot(sys.argv[1]), 'r').acquire()", root.location],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "RunLocked" in probe.stderr, probe.stderr  # another writer is excluded
    finally:
        lock.release()


def test_a_lock_file_that_is_a_folder_is_one_user_error(tmp_path):
    """Found by a review: ``fsck --repair``, ``resume``, ``rm`` and ``tag`` printed IsADirectoryError's traceback."""
    from trajscope.store import UserError

    root = StoreRoot(tmp_path)
    os.makedirs(root.lock_path("r"))
    with pytest.raises(UserError, match=r"the lock file .*r\.lock is a folder, not a regular file: remove it"):
        WriterLock(root, "r").acquire()
