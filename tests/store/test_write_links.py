"""Links planted inside a store root never lead a *writer* through them (the write side of issue 8, item 1).

Anyone who may write the root's folders can plant a link where a writer is about to write: the lock file,
the lock folder, a chunk folder of a run being resumed, an array's folder, a writer's temporary file. Each
case plants one link to a victim outside the root and checks that trajscope's writer refuses it (one clear
error naming the link) or removes the link, and that the victim is left exactly as it was.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from trajscope.store import RunWriter, StoreRoot
from trajscope.store.chunkio import LocalSink
from trajscope.store.errors import PathOutsideRoot, UserError
from trajscope.store.hotpath import WriteFailed
from trajscope.store.layout import TEMPORARY_PREFIX
from trajscope.store.locks import WriterLock

from tests.store.test_symlinks import write_run
from tests import cli_fork

VICTIM = b"victim's own bytes\n"


@pytest.fixture
def victim(tmp_path):
    """A file and a folder outside the root, which no write may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(VICTIM)
    return outside


def untouched(outside) -> bool:
    return sorted(os.listdir(outside)) == ["victim.txt"] and (outside / "victim.txt").read_bytes() == VICTIM


def test_a_lock_file_planted_as_a_link_is_refused_and_not_written_through(tmp_path, victim):
    root = StoreRoot(tmp_path / "root")
    write_run(root, "r")
    os.unlink(root.lock_path("r"))  # (a released lock's file stays)
    os.symlink(victim / "victim.txt", root.lock_path("r"))
    with pytest.raises(PathOutsideRoot, match="lock file .* symbolic link"):
        WriterLock(root, "r").acquire()
    assert untouched(victim)
    with pytest.raises(PathOutsideRoot):  # and so is every writer that takes the lock (here: resume's)
        RunWriter.reopen(root, "r")
    assert untouched(victim)


def test_a_lock_folder_planted_as_a_link_is_refused(tmp_path, victim):
    root = StoreRoot(tmp_path / "root")
    write_run(root, "r")
    os.rename(os.path.join(root.location, ".locks"), tmp_path / "old-locks")
    os.symlink(victim, os.path.join(root.location, ".locks"))
    with pytest.raises(PathOutsideRoot, match="lock folder"):
        WriterLock(root, "r").acquire()
    assert untouched(victim)


def test_the_cli_says_so_in_one_line(tmp_path, victim):
    root = StoreRoot(tmp_path / "root")
    write_run(root, "r")
    os.unlink(root.lock_path("r"))
    os.symlink(victim / "victim.txt", root.lock_path("r"))
    result = cli_fork.run(["tag", "r", "newtag", "--root", root.location], timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "symbolic link" in lines[0] and "Traceback" not in result.stderr
    assert untouched(victim)


@pytest.mark.parametrize("where", ["W/c/9", "W/c", "W"])
def test_a_chunk_folder_planted_as_a_link_is_refused_when_written(tmp_path, victim, where):
    """A chunk written under a linked folder (``W/c/9`` for chunk 9, or above it) raises and creates nothing
    where the link points; the other chunks are written as usual."""
    run = tmp_path / "run"
    run.mkdir()
    if "/" in where:
        (run / os.path.dirname(where)).mkdir(parents=True)
    os.symlink(victim, run / where)
    sink = LocalSink(str(run))
    with pytest.raises(PathOutsideRoot, match="symbolic link"):
        sink.put("W/c/9/0/0", [np.arange(4.0)])
    assert untouched(victim)
    sink.put("v/c/9", [np.arange(4.0)])  # a real folder: written
    assert (run / "v" / "c" / "9").read_bytes() == np.arange(4.0).tobytes()


def test_a_temporary_file_name_planted_as_a_link_is_removed_not_followed(tmp_path, victim, monkeypatch):
    """The writer's temporary file has a predictable name: a link planted under it is unlinked, never opened
    (``O_EXCL | O_NOFOLLOW``), and the chunk lands where it belongs."""
    import threading

    run = tmp_path / "run"
    (run / "v" / "c").mkdir(parents=True)
    planted = run / "v" / "c" / f"{TEMPORARY_PREFIX}{os.getpid()}-{threading.get_ident()}-0"
    os.symlink(victim / "victim.txt", planted)
    LocalSink(str(run)).put("v/c/0", [np.arange(3.0)])
    assert untouched(victim)
    assert not os.path.lexists(planted)
    assert (run / "v" / "c" / "0").read_bytes() == np.arange(3.0).tobytes()


def test_resuming_a_run_whose_chunk_folder_links_out_fails_without_writing_out(tmp_path, victim):
    """End to end: a run reopened after a link was planted at its next chunk's folder writes nothing where
    the link points; the write's error reaches the commit."""
    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", steps=16, chunk=4, live=True)  # (a run killed while running: resumable)
    writer = RunWriter.reopen(root, "r")
    try:
        writer.grow(20)
        os.symlink(victim, os.path.join(root.run_url("r"), "W", "c", "4"))
        block = {"W": np.ones((4, 3, 4)), "v": np.ones((4, 3)), "loss": np.ones(4), "output": np.ones((4, 5)),
                 "step": np.arange(16, 20), "t": np.arange(16, 20) * 0.1}
        with pytest.raises(WriteFailed, match="W/c/4 is a symbolic link"):
            writer.write_block(16, block)
            writer.commit(20)
        assert writer.committed_steps == 16
    finally:
        writer.lock.release()
    assert untouched(victim)


def test_an_array_folder_linked_to_another_runs_is_not_written_through(tmp_path):
    """zarr writes an array's metadata by path (the resize of a reopened run): a run whose ``v`` folder is a
    link to another run's (inside the root, so readers follow it) must not resize that other run's array."""
    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", live=True)
    write_run(root, "other")
    run, other = root.run_url("r"), root.run_url("other")
    os.rename(os.path.join(run, "v"), tmp_path / "v-moved")
    os.symlink(os.path.join(other, "v"), os.path.join(run, "v"))
    before = open(os.path.join(other, "v", "zarr.json"), "rb").read()
    writer = RunWriter.reopen(root, "r")
    try:
        with pytest.raises(PathOutsideRoot, match="symbolic link"):
            writer.grow(40)
    finally:
        writer.lock.release()
    assert open(os.path.join(other, "v", "zarr.json"), "rb").read() == before


def test_a_store_root_that_is_a_file_is_one_clear_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        StoreRoot(path)


def test_a_link_planted_after_the_chunk_folders_were_walked_is_not_followed(tmp_path, victim):
    """The sink keeps a descriptor of ``W/c`` once walked: replacing ``W/c`` by a link afterwards changes nothing
    (the chunks go on into the folder that was walked), and a link at a chunk's own folder is refused."""
    run = tmp_path / "run"
    run.mkdir()
    sink = LocalSink(str(run))
    sink.put("W/c/0/0/0", [np.arange(2.0)])
    os.rename(run / "W" / "c", tmp_path / "walked")
    os.symlink(victim, run / "W" / "c")
    sink.put("W/c/1/0/0", [np.arange(2.0)])
    assert untouched(victim) and (tmp_path / "walked" / "1" / "0" / "0").exists()
    os.symlink(victim, tmp_path / "walked" / "2")
    with pytest.raises(PathOutsideRoot, match="W/c/2 is a symbolic link"):
        sink.put("W/c/2/0/0", [np.arange(2.0)])
    sink.close()
    with pytest.raises(PathOutsideRoot, match="W/c is a symbolic link"):  # walked again after close
        sink.put("W/c/3/0/0", [np.arange(2.0)])
    assert untouched(victim)


def test_a_failed_folder_fsync_leaks_no_descriptor(tmp_path, monkeypatch):
    """Durability fsync: a new folder's parent is fsynced; when that fails (a disk error) the write fails and
    the folder's descriptor, opened just before, is closed too (found by a review: one leaked a failure)."""
    import errno

    from trajscope.store import nolinks

    def failing(fd):
        raise OSError(errno.EIO, "injected")

    sink = LocalSink(str(tmp_path), durability="fsync")
    sink.put("W/c/0/0/0", [np.arange(2.0)])  # W/c walked and kept
    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(nolinks.os, "fsync", failing)
    for k in range(1, 21):
        with pytest.raises(OSError, match="injected"):
            sink.put(f"W/c/{k}/0/0", [np.arange(2.0)])
    assert len(os.listdir("/proc/self/fd")) == before
    sink.close()


def test_zarrs_synchronous_writes_are_checked_as_its_asynchronous_ones(tmp_path, victim):
    from zarr.core.buffer import default_buffer_prototype

    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", live=True)
    run = root.run_url("r")
    os.rename(os.path.join(run, "v"), tmp_path / "v-moved")
    os.symlink(victim, os.path.join(run, "v"))
    store = root.zarr_store("r")
    with pytest.raises(PathOutsideRoot, match="symbolic link"):
        store.set_sync("v/zarr.json", default_buffer_prototype().buffer.from_bytes(b"{}"))
    assert untouched(victim)


def test_a_link_swapped_in_while_zarr_writes_metadata_is_not_followed(tmp_path, victim, monkeypatch):
    """zarr's writes through a run's store go relative to a descriptor of the walked folder: a link swapped in
    at ``v/`` between the walk and the write (they went by path after a check before) is not followed."""
    from zarr.core.buffer import default_buffer_prototype

    from trajscope.store import safe

    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", live=True)
    run = root.run_url("r")
    original = safe.create_new_file

    def swap_then_create(name, dir_fd, *args):
        if not os.path.islink(os.path.join(run, "v")):
            os.rename(os.path.join(run, "v"), tmp_path / "v-walked")
            os.symlink(victim, os.path.join(run, "v"))
        return original(name, dir_fd, *args)

    monkeypatch.setattr(safe, "create_new_file", swap_then_create)
    store = root.zarr_store("r")
    new = default_buffer_prototype().buffer.from_bytes(b'{"new": 1}')
    store.set_sync("v/zarr.json", new)
    assert untouched(victim)
    assert (tmp_path / "v-walked" / "zarr.json").read_bytes() == b'{"new": 1}'
    assert not [n for n in os.listdir(tmp_path / "v-walked") if n.endswith(".partial")]


def test_zarrs_exclusive_write_through_a_runs_store_keeps_an_existing_key(tmp_path):
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", live=True)
    store = root.zarr_store("r")
    before = open(os.path.join(root.run_url("r"), "v", "zarr.json"), "rb").read()
    buffer = default_buffer_prototype().buffer.from_bytes
    asyncio.run(store.set_if_not_exists("v/zarr.json", buffer(b"{}")))
    asyncio.run(store.set_if_not_exists("v/new.json", buffer(b"[1]")))
    folder = os.path.join(root.run_url("r"), "v")
    assert open(os.path.join(folder, "zarr.json"), "rb").read() == before
    assert open(os.path.join(folder, "new.json"), "rb").read() == b"[1]"
    assert not [n for n in os.listdir(folder) if n.endswith(".partial")]


def test_a_file_beside_the_runs_replaces_a_planted_link_and_is_written_whole(tmp_path, victim, monkeypatch):
    """Found by a style review: a sweep's table was written by the sweep itself through the root's file system,
    in place (a sweep stopped while writing left half a table; a link planted under the table's name was written
    through). ``StoreRoot.write_file`` writes it as the store writes a key: a temporary file renamed over it."""
    root = StoreRoot(tmp_path / "root")
    os.makedirs(root.location)
    os.symlink(victim / "victim.txt", os.path.join(root.location, "s.sweep.csv"))
    path = root.write_file("s.sweep.csv", b"a,b\n1,2\n")
    assert untouched(victim) and not os.path.islink(path) and open(path, "rb").read() == b"a,b\n1,2\n"

    def cut_off(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", cut_off)
    with pytest.raises(KeyboardInterrupt):
        root.write_file("s.sweep.csv", b"a,b\n3,")
    monkeypatch.undo()
    assert open(path, "rb").read() == b"a,b\n1,2\n"  # the old table, whole, and no temporary file left
    assert sorted(os.listdir(root.location)) == ["s.sweep.csv"]
    for name in ("../x.csv", "a/b.csv", ".hidden", "r.zarr", ""):
        with pytest.raises(UserError, match="beside the runs"):
            root.write_file(name, b"x")
    assert untouched(victim) and sorted(os.listdir(root.location)) == ["s.sweep.csv"]
    stale, fresh = (os.path.join(root.location, f"{TEMPORARY_PREFIX}s.sweep.csv-{k}") for k in ("old", "new"))
    for leftover in (stale, fresh):  # a writer killed an hour ago; one writing now
        open(leftover, "wb").close()
    os.utime(stale, (os.path.getmtime(stale) - 7200,) * 2)
    root.write_file("s.sweep.csv", b"a,b\n1,2\n")
    assert not os.path.exists(stale) and os.path.exists(fresh)  # (found by a review: nothing removed them)
    os.unlink(fresh)
    os.mkdir(os.path.join(root.location, "d.csv"))
    with pytest.raises(UserError, match="a folder of that name is in the way"):
        root.write_file("d.csv", b"x")
    os.rmdir(os.path.join(root.location, "d.csv"))
    pandas = pytest.importorskip("pandas")
    from trajscope.experiments.sweep import write_table

    os.symlink(victim / "victim.txt", os.path.join(root.location, "t.sweep.csv"))
    written = write_table(pandas.DataFrame({"n": [16, 64]}), root.location, "t.sweep")
    assert untouched(victim) and open(written[0]).read() == "n\n16\n64\n"
    remote = StoreRoot("memory://side-files")
    url = remote.write_file("s.sweep.csv", b"x")
    assert url == "memory://side-files/s.sweep.csv" and remote.fs.cat_file(remote.fs._strip_protocol(url)) == b"x"


def test_a_folder_that_cannot_be_made_is_named_by_its_whole_path(tmp_path, monkeypatch):
    """Found by a review: on a read-only root, `trajscope tag`/`rm`/`produce` said "the file system is read-only at
    .locks" (the folder is made relative to its parent's descriptor, and the error named the component alone)."""
    import errno

    from trajscope.store.nolinks import open_real_dir

    def read_only(path, mode=0o777, *, dir_fd=None):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(OSError) as raised:
        open_real_dir(str(tmp_path), [".locks", "inner"], "the lock folder")
    assert raised.value.filename == str(tmp_path / ".locks")
    monkeypatch.undo()
    os.makedirs(tmp_path / "W" / "c" / "0")
    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(OSError) as raised:  # (a component met twice: the one that failed)
        open_real_dir(str(tmp_path), ["W", "c", "0", "0"], "a chunk")
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(tmp_path / "W" / "c" / "0" / "0")
