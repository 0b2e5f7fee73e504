"""Links planted inside a store root never lead a reader outside it (issue 8, item 1).

Each case plants one symbolic link, pointing at a valid run *outside* the root whose values are a marker,
and checks that trajscope's readers (``open_run``, the xarray backend, the snapshot, raw reads, the
catalog, sizes, fsck) refuse it with :class:`PathOutsideRoot` or skip it, and never return the marker.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import xarray as xr

from trajscope.producer.two_layer import variables as two_layer_variables
from trajscope.store import RunWriter, StoreRoot, list_runs, open_run
from trajscope.store.errors import PathOutsideRoot
from trajscope.store.fsck import fsck_run
from trajscope.store.snapshot import read_key, snapshot

MARKER = 12345.678


def write_run(root: StoreRoot, run_id: str, fill: float | None = None, steps: int = 16, chunk: int = 4,
              live: bool = False) -> None:
    h, dim, n = 3, 4, 5
    rng = np.random.default_rng(0)
    writer = RunWriter.create(
        root, run_id, variables=two_layer_variables(), sizes={"neuron": h, "feature": dim, "sample": n},
        capacity=steps, static={"X": rng.normal(size=(n, dim)), "y": np.array([1, -1, 1, -1, 1])},
        attrs={"config": {"train": {"lr": 0.1}}, "secret": "OUTSIDE-SECRET" if fill is not None else "inside"},
        chunk_bytes=h * dim * 4 * chunk,
    )
    values = {"W": rng.normal(size=(steps, h, dim)), "v": rng.normal(size=(steps, h)), "loss": rng.random(steps),
              "output": rng.normal(size=(steps, n)), "step": np.arange(steps), "t": np.arange(steps) * 0.1}
    if fill is not None:
        values = {k: np.full_like(v, fill) if k in ("W", "v", "loss", "output") else v for k, v in values.items()}
    for start in range(0, steps, chunk):
        writer.write_block(start, {k: v[start:start + chunk] for k, v in values.items()})
        writer.commit(start + chunk)
    if live:  # still "running": readers list the arrays and read each NAME/zarr.json
        writer.lock.release()
    else:
        writer.finish("complete")


@pytest.fixture(params=["live", "finished"])
def roots(tmp_path, request):
    """``(inside root, outside run dir)``: the root holds run ``r`` (live or finished) and ``ok``;
    ``outside/r.zarr`` is a marker run."""
    outside = StoreRoot(tmp_path / "outside")
    write_run(outside, "r", fill=MARKER)
    inside = StoreRoot(tmp_path / "root")
    write_run(inside, "r", live=request.param == "live")
    write_run(inside, "ok")
    return inside, tmp_path / "outside" / "r.zarr"


def plant(inside: StoreRoot, outside_run, key: str) -> None:
    """Replace ``r.zarr/KEY`` (a file or a directory) by a link to the same key of the outside run."""
    target = os.path.join(inside.run_url("r"), key) if key else inside.run_url("r")
    if os.path.isdir(target):
        shutil.rmtree(target)
    else:
        os.unlink(target)
    os.symlink(os.path.join(outside_run, key) if key else outside_run, target)


def assert_no_marker(ds: xr.Dataset) -> None:
    assert "OUTSIDE-SECRET" not in str(ds.attrs)
    for name in ("W", "v", "loss", "output"):
        assert not np.any(ds[name].values == np.float32(MARKER)), name


def refused_or_clean(read):
    """``read()`` either raises :class:`PathOutsideRoot` or returns data without the marker.

    (A finished run is opened through the consolidated metadata of its root document: its
    ``W/zarr.json`` is then never read at all.)"""
    try:
        result = read()
        if isinstance(result, xr.Dataset):
            assert_no_marker(result)  # reads every value
    except PathOutsideRoot as err:
        assert "outside the store root" in str(err) or "link" in str(err)
        return None
    if not isinstance(result, xr.Dataset):
        assert b"OUTSIDE-SECRET" not in result and np.float32(MARKER).tobytes() not in result
    return result


@pytest.mark.parametrize("key", ["zarr.json", "W/zarr.json", "loss"])
def test_metadata_links_out_of_the_root_are_refused(roots, key):
    inside, outside_run = roots
    live = inside.read_attrs("r")["status"] == "running"
    plant(inside, outside_run, key)
    opened = refused_or_clean(lambda: open_run("r", inside))
    if live or key == "zarr.json":
        assert opened is None  # the linked metadata had to be read: refused
    refused_or_clean(lambda: xr.open_dataset(inside.run_url("r"), engine="trajscope"))
    refused_or_clean(lambda: read_key(inside, "r", "zarr.json"))
    refused_or_clean(lambda: read_key(inside, "r", "W/zarr.json"))
    refused_or_clean(lambda: read_key(inside, "r", "loss/c/0"))
    with pytest.raises(PathOutsideRoot):
        inside.read_bytes("r", key if key != "loss" else "loss/zarr.json")
    report = fsck_run(inside, "r")
    assert not report.ok and any("links outside the store root" in p for p in report.problems)
    listed = [info.run_id for info in list_runs(inside)]
    assert "ok" in listed and ("r" not in listed if key == "zarr.json" else True)
    assert_no_marker(open_run("ok", inside).load())  # the other run is unaffected


def test_a_chunk_link_out_of_the_root_is_refused_when_read(roots):
    inside, outside_run = roots
    plant(inside, outside_run, "W/c/0/0/0")
    ds = open_run("r", inside)
    assert ds.v.notnull().all()  # the other variables still read
    with pytest.raises(PathOutsideRoot, match="W/c/0/0/0"):
        ds.W.isel(step=slice(0, 4)).values
    assert ds.W.isel(step=slice(4, 16)).notnull().all()  # chunks 1..3 are real and inside
    with pytest.raises(PathOutsideRoot):
        read_key(inside, "r", "W/c/0/0/0")
    before = inside.size_bytes("r")
    assert before < inside.size_bytes("ok")  # the linked chunk is not counted
    report = fsck_run(inside, "r")
    assert any("W/c/0/0/0 links outside" in p for p in report.problems)


def test_a_run_directory_linking_out_is_not_listed_nor_read(roots):
    inside, outside_run = roots
    plant(inside, outside_run, "")
    assert [info.run_id for info in list_runs(inside)] == ["ok"]
    assert inside.run_ids() == ["ok"]
    with pytest.raises(PathOutsideRoot):
        open_run("r", inside)
    assert inside.size_bytes("r") == 0
    with pytest.raises(PathOutsideRoot):
        inside.delete("r")
    assert os.path.exists(os.path.join(outside_run, "zarr.json"))  # nothing outside was touched


def test_links_that_stay_inside_the_root_are_followed(tmp_path):
    root = StoreRoot(tmp_path / "root")
    write_run(root, "ok")
    os.makedirs(tmp_path / "root" / "archive")
    os.rename(root.run_url("ok"), tmp_path / "root" / "archive" / "ok.zarr")
    os.symlink(tmp_path / "root" / "archive" / "ok.zarr", root.run_url("ok"))
    ds = open_run("ok", root).load()
    assert ds.sizes["step"] == 16 and np.isfinite(ds.W.values).all()
    assert fsck_run(root, "ok").ok


@pytest.mark.parametrize("stray", ["link out", "dangling link", "not JSON", "a list"])
def test_a_stray_entry_beside_a_live_runs_arrays_leaves_the_run_readable(tmp_path, stray):
    """A live run's arrays are found by listing its folder. A stray entry there (a link out of the root, a
    dangling link, a folder whose ``zarr.json`` is not an array's metadata) is skipped; before, it made the
    whole run unreadable (every read of it failed, the HTTP routes answered 404 or 500)."""
    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", live=True)
    extra = os.path.join(root.run_url("r"), "extra")
    if stray == "link out":
        write_run(StoreRoot(tmp_path / "outside"), "o", fill=MARKER)
        os.symlink(tmp_path / "outside" / "o.zarr" / "W", extra)
    elif stray == "dangling link":
        os.symlink(tmp_path / "nowhere", extra)
    else:
        os.makedirs(extra)
        with open(os.path.join(extra, "zarr.json"), "w") as f:
            f.write("x" if stray == "not JSON" else "[1, 2]")
    ds = open_run("r", root)
    assert "extra" not in ds and ds["W"].shape[0] == 16
    assert_no_marker(ds)
    assert set(snapshot(root, "r").arrays) == {"W", "v", "loss", "output", "step", "t", "X", "y"}
    with pytest.raises((KeyError, PathOutsideRoot)):
        read_key(root, "r", "extra/zarr.json")


def test_a_run_deleted_between_its_document_and_its_listing_is_not_found(tmp_path, monkeypatch):
    """A request reading a live run that is deleted meanwhile gets RunNotFound (a 404), not a 500."""
    from trajscope.store import RunNotFound

    root = StoreRoot(tmp_path)
    write_run(root, "r", live=True)

    def gone(*args, **kwargs):
        raise FileNotFoundError(root.run_url("r"))

    monkeypatch.setattr(type(root.fs), "ls", gone)
    with pytest.raises(RunNotFound, match="deleted while it was read"):
        snapshot(root, "r")


def test_an_own_array_with_lost_metadata_is_refused_not_dropped(tmp_path):
    """Stray entries are skipped, but an array the run's attributes name never is: unreadable metadata of
    ``W`` makes reads fail naming it (not a dataset without ``W``), and the final document of a finish is
    refused (the run stays resumable) instead of being written without ``W`` for good."""
    from trajscope.store.errors import CorruptData
    from trajscope.store.writer import final_document

    root = StoreRoot(tmp_path / "root")
    write_run(root, "r", live=True)
    with open(os.path.join(root.run_url("r"), "W", "zarr.json"), "w") as f:
        f.write("x")
    with pytest.raises(CorruptData, match=r"metadata W/zarr.json is missing or unreadable"):
        open_run("r", root)
    with pytest.raises(CorruptData):
        final_document(root, "r", root.read_attrs("r"))
    write_run(StoreRoot(tmp_path / "outside"), "o", fill=MARKER)
    os.remove(os.path.join(root.run_url("r"), "W", "zarr.json"))
    os.symlink(tmp_path / "outside" / "o.zarr" / "W" / "zarr.json", os.path.join(root.run_url("r"), "W", "zarr.json"))
    with pytest.raises(PathOutsideRoot):
        final_document(root, "r", root.read_attrs("r"))


def test_corrupt_data_crosses_processes():
    """Raised inside a dask task, CorruptData may be pickled (a process scheduler): it comes back whole."""
    import pickle

    from trajscope.store.errors import CorruptChunk, CorruptData

    error = CorruptData("r", [CorruptChunk("W", "W/c/1/0/0", (8, 15), missing=True)])
    back = pickle.loads(pickle.dumps(error))
    assert str(back) == str(error) and back.chunks == error.chunks and back.run_id == "r"


def test_an_own_array_whose_folder_is_gone_is_refused_and_fsck_repair_says_so(tmp_path):
    """A live run is read by listing its folder: an array the run names whose whole folder is gone was simply
    not listed (a dataset without ``W``, and a finish or ``fsck --repair`` that wrote the final document
    without it for good). It is CorruptData now; ``fsck --repair`` reports it instead of stopping."""
    from trajscope.store.errors import CorruptData
    from trajscope.store.snapshot import lost_last_chunks

    root = StoreRoot(tmp_path)
    write_run(root, "r", live=True)
    shutil.rmtree(os.path.join(root.run_url("r"), "W"))
    with pytest.raises(CorruptData, match="metadata W/zarr.json is missing"):
        open_run("r", root)
    report = fsck_run(root, "r", repair=True)
    assert any("not repaired" in p and "W/zarr.json" in p for p in report.problems), report.problems
    assert root.read_attrs("r")["status"] == "running"  # nothing finished over the loss
    assert [c.key for c in lost_last_chunks(root, "r", 16, ["W", "v"])] == ["W/zarr.json"]  # no KeyError


def test_a_deletion_removes_the_root_document_first_and_create_clears_what_one_left(tmp_path):
    """``delete`` removes ``zarr.json`` before the rest, so a reader meanwhile finds no run rather than a run
    losing chunks; a deletion stopped after that leaves a folder without it, which the next ``create`` of the
    same id clears before writing (its old chunks never lie under the new run's arrays)."""
    from trajscope.store.snapshot import missing_committed_chunk, snapshot

    root = StoreRoot(tmp_path)
    write_run(root, "r")
    removed = []
    original = type(root.fs).rm

    def rm(self, path, *args, **kwargs):
        removed.append(os.path.relpath(path, root.run_url("r")))
        return original(self, path, *args, **kwargs)

    type(root.fs).rm = rm
    try:
        root.delete("r")
    finally:
        type(root.fs).rm = original
    assert removed[0] == "zarr.json" and not os.path.exists(root.run_url("r"))
    write_run(root, "r")
    os.remove(os.path.join(root.run_url("r"), "zarr.json"))  # a deletion that stopped after its first step
    stale = os.path.join(root.run_url("r"), "W", "c", "9", "0", "0")  # a chunk no new run of 16 states writes
    os.makedirs(os.path.dirname(stale))
    with open(stale, "wb") as f:
        f.write(b"old")
    write_run(root, "r")
    assert not os.path.exists(stale) and open_run("r", root)["W"].shape[0] == 16
    snap = snapshot(root, "r")
    zero = {"z": {**snap.arrays["W"], "shape": [16, 0, 4]}}  # a parameter of no values: no key is in its grid
    assert missing_committed_chunk(16, zero, "z/c/0/0/0") is None


def test_a_deletion_stopped_half_way_leaves_a_folder_known_by_its_marker_and_rm_checks_what_it_showed(tmp_path,
                                                                                                     monkeypatch):
    """``delete`` writes its marker before removing the root document and removes the markers last, so a
    deletion stopped anywhere after that leaves a folder ``has_leftovers`` knows (also for a run written before
    ``.all_chunks_stored`` existed); ``delete_run(expect=...)`` deletes nothing when the id was created again
    since it was shown."""
    import trajscope.store.root as root_module
    from trajscope.store.errors import UserError
    from trajscope.store.layout import ALL_CHUNKS_STORED_KEY, DELETING_KEY
    from trajscope.store.run_attrs import LEFTOVERS, delete_run, run_identity

    root = StoreRoot(tmp_path)
    write_run(root, "marked")  # the marker is in place before the root document goes
    seen = []
    original_rm = type(root.fs).rm
    monkeypatch.setattr(type(root.fs), "rm", lambda fs, path, *a, **k: (
        seen.append((os.path.basename(path), os.path.exists(os.path.join(root.run_url("marked"), DELETING_KEY)))),
        original_rm(fs, path, *a, **k))[1])
    root.delete("marked")
    monkeypatch.undo()
    assert seen[0] == ("zarr.json", True) and not os.path.exists(root.run_url("marked"))
    for older in (False, True):  # a run of this version, and one written before .all_chunks_stored existed
        for stop_at in range(1, 100):  # the deletion stops at its stop_at-th removal of an entry of the folder
            write_run(root, "r")
            if older:
                os.remove(os.path.join(root.run_url("r"), ALL_CHUNKS_STORED_KEY))
            calls = []

            def stopping(path, calls=calls, stop_at=stop_at):
                calls.append(os.path.basename(path))
                if len(calls) == stop_at:
                    raise KeyboardInterrupt
                original_remove(path)

            original_remove = root_module._remove_entry
            monkeypatch.setattr(root_module, "_remove_entry", stopping)
            try:
                root.delete("r")
                finished = True
            except KeyboardInterrupt:
                finished = False
            monkeypatch.undo()
            assert not root.exists("r")  # the root document went first, whatever came after
            left = os.listdir(root.run_url("r")) if os.path.exists(root.run_url("r")) else []
            assert not left or (root.has_leftovers("r") and run_identity("r", root) == LEFTOVERS), (stop_at, left)
            if left:
                assert delete_run("r", root, expect=LEFTOVERS) == "r"
            if os.path.exists(root.run_url("r")):  # emptied, its folder left: rm (and the next create) clear it
                assert root.has_leftovers("r") and delete_run("r", root, expect=LEFTOVERS) == "r"
            if finished:
                markers = [DELETING_KEY] if older else [DELETING_KEY, ALL_CHUNKS_STORED_KEY]
                assert calls[-len(markers):] == markers and not set(markers) & set(calls[:-len(markers)])
                break
        assert stop_at > 3  # the folder's entries, then the markers
    write_run(root, "again")  # shown as one run, created again under its id before the deletion's turn
    shown = run_identity("again", root)
    root.delete("again")
    write_run(root, "again")
    with pytest.raises(UserError, match="changed since it was listed"):
        delete_run("again", root, expect=shown)
    assert root.exists("again")
    write_run(root, "gone")  # shown as what a deletion left, created again meanwhile: kept
    os.remove(os.path.join(root.run_url("gone"), "zarr.json"))
    shown = run_identity("gone", root)
    write_run(root, "gone")
    with pytest.raises(UserError, match="changed since it was listed"):
        delete_run("gone", root, expect=shown)
    assert root.exists("gone") and delete_run("gone", root, expect=run_identity("gone", root)) == "gone"


def test_removing_a_run_that_is_a_link_inside_the_root_removes_the_link_only(tmp_path):
    """``a.zarr -> b.zarr`` (a link that stays inside the root, followed by readers): deleting ``a`` removes the
    link and leaves ``b`` whole (its root document was removed through the link before)."""
    root = StoreRoot(tmp_path)
    write_run(root, "b")
    os.symlink(root.run_url("b"), root.run_url("a"))
    root.delete("a")
    assert not os.path.lexists(root.run_url("a")) and open_run("b", root)["W"].shape[0] == 16
    assert [info.run_id for info in list_runs(root)] == ["b"]


def test_what_a_stopped_deletion_left_is_removed_by_rm_and_a_subset_copy_opens(tmp_path):
    """A deletion stopped after the root document leaves a folder ``delete`` and ``delete_run`` now finish
    (on a local root and on an object store; never through a link), and a new run of that name clears; a
    folder of that name that no run left is neither deleted nor cleared; a plain copy of some of
    a run's variables, written without consolidated metadata, names arrays it lacks and still opens."""
    from trajscope.store.errors import RunNotFound, UserError
    from trajscope.store.layout import ALL_CHUNKS_STORED_KEY, TEMPORARY_PREFIX
    from trajscope.store.run_attrs import delete_run

    root = StoreRoot(tmp_path)
    write_run(root, "r")
    assert not root.has_leftovers("r")  # a whole run is not a leftover
    os.remove(os.path.join(root.run_url("r"), "zarr.json"))
    assert root.has_leftovers("r") and "r" not in [i.run_id for i in list_runs(root)]
    root.delete("r")
    assert not os.path.exists(root.run_url("r")) and not root.has_leftovers("r")
    write_run(root, "r")  # the same through delete_run (what `trajscope rm` calls): under the writer lock
    os.remove(os.path.join(root.run_url("r"), "zarr.json"))
    assert delete_run("r", root) == "r" and not os.path.exists(root.run_url("r"))
    with pytest.raises(RunNotFound):
        delete_run("r", root)  # nothing left: not found, as before
    write_run(root, "real")
    target = os.path.join(root.run_url("real"), "W", "c")  # a folder without a root document
    os.symlink(target, root.run_url("link"))  # a link is never a leftover, nor followed
    os.symlink(root.run_url("real"), os.path.join(target, ALL_CHUNKS_STORED_KEY))  # (a marker seen through it)
    assert not root.has_leftovers("link")
    with pytest.raises(RunNotFound):
        delete_run("link", root)
    assert os.listdir(target) and open_run("real", root)["W"].shape[0] == 16
    foreign = tmp_path / "v2.zarr"  # a folder named *.zarr that no trajscope run left: a Zarr v2 dataset
    (foreign / "x" / "0").mkdir(parents=True)
    (foreign / ".zgroup").write_text('{"zarr_format": 2}')
    assert not root.has_leftovers("v2")
    with pytest.raises(RunNotFound):
        delete_run(str(foreign))  # by path too
    assert (foreign / ".zgroup").exists() and (foreign / "x" / "0").exists()
    with pytest.raises(UserError, match="not a trajscope run"):  # nor does a new run of that name clear it
        write_run(root, "v2")
    assert (foreign / ".zgroup").exists() and (foreign / "x" / "0").exists()
    (tmp_path / "stopped.zarr").mkdir()  # what a creation stopped before its root document leaves: cleared
    (tmp_path / "stopped.zarr" / f"{TEMPORARY_PREFIX}abc").write_bytes(b"{")
    write_run(root, "stopped")
    assert open_run("stopped", root)["W"].shape[0] == 16
    (tmp_path / "empty.zarr").mkdir()  # an emptied folder (a removal stopped before its last step): no run, clearable
    assert root.has_leftovers("empty") and "empty" not in [i.run_id for i in list_runs(root)]
    write_run(root, "empty")
    assert root.exists("empty")
    (tmp_path / "cache.zarr" / f"{TEMPORARY_PREFIX}dir").mkdir(parents=True)  # temporaries are files, not this
    (tmp_path / "cache.zarr" / f"{TEMPORARY_PREFIX}dir" / "precious.bin").write_bytes(b"keep")
    with pytest.raises(UserError, match="not a trajscope run"):
        write_run(root, "cache")
    assert (tmp_path / "cache.zarr" / f"{TEMPORARY_PREFIX}dir" / "precious.bin").read_bytes() == b"keep"
    import zarr

    theirs = zarr.open_group(str(tmp_path / "v3.zarr"), mode="w", zarr_format=3)  # someone else's Zarr v3 group
    theirs.attrs["title"] = "not a run"
    theirs.create_array("x", shape=(3,), dtype="int8")
    with pytest.raises(UserError, match="not a trajscope run"):
        write_run(root, "v3")
    with pytest.raises(UserError, match="not a trajscope run"):  # (not "never fully created: produce replaces it")
        RunWriter.reopen(root, "v3")
    assert zarr.open_group(str(tmp_path / "v3.zarr"), mode="r").attrs["title"] == "not a run"
    memory = StoreRoot(f"memory://leftovers-{os.getpid()}")  # an object store: a prefix without its root document
    write_run(memory, "m")
    memory.fs.rm(memory._fs_path("m", "zarr.json"))
    assert memory.has_leftovers("m") and delete_run("m", memory) == "m"
    assert not memory.has_leftovers("m") and not memory.fs.exists(memory._fs_path("m"))
    memory.fs.pipe_file(memory._fs_path("theirs", "data.bin"), b"not a run's")  # the same on an object store
    with pytest.raises(UserError, match="not a trajscope run"):
        write_run(memory, "theirs")
    assert memory.fs.cat_file(memory._fs_path("theirs", "data.bin")) == b"not a run's"
    write_run(root, "full")
    open_run("full", root)[["W", "loss"]].to_zarr(root.run_url("part"), zarr_format=3, consolidated=False)
    assert set(open_run("part", root).data_vars) == {"W", "loss"}


def test_a_run_reached_through_a_link_is_locked_as_the_run_it_links_to(tmp_path):
    """Found by a review: the writer lock was taken on the link's id, so ``resume alias`` opened a second writer of
    ``real`` while its producer held ``real``'s lock, and ``tag alias`` was overwritten by that producer. The lock
    of a link to a run folder of the root is that run's."""
    from trajscope.store import RunLocked, WriterLock
    from trajscope.store.run_attrs import tag_run

    root = StoreRoot(tmp_path)
    write_run(root, "real")
    attrs = root.read_attrs("real")
    root.write_attrs("real", {**attrs, "status": "interrupted"})
    os.symlink("real.zarr", tmp_path / "alias.zarr")
    held = WriterLock(root, "real").acquire()
    try:
        with pytest.raises(RunLocked, match="'real'"):
            RunWriter.reopen(root, "alias")
        with pytest.raises(RunLocked, match="'real'"):
            tag_run("alias", root, add=["x"])
    finally:
        held.release()
    tag_run("alias", root, add=["x"])  # free: the link's edit is the run's
    assert root.read_attrs("real")["tags"] == ["x"]
    # the writer_gone reading follows the link too (found by a review: it read the link's own, absent, lock)
    from trajscope.store import describe_run

    held = WriterLock(root, "real").acquire()
    try:
        assert not describe_run("alias", root).writer_gone
    finally:
        held.release()
    # a link to a run folder deeper in the root keeps its own lock: it can still be tagged and removed
    (tmp_path / "sub").mkdir()
    shutil.copytree(tmp_path / "real.zarr", tmp_path / "sub" / "deep.zarr")
    os.symlink("sub/deep.zarr", tmp_path / "y.zarr")
    assert WriterLock(root, "y").run_id == "y" and not describe_run("y", root).writer_gone
    tag_run("y", root, add=["z"])
    root.delete("y")
    assert (tmp_path / "sub" / "deep.zarr").is_dir() and not os.path.lexists(tmp_path / "y.zarr")
