"""Export: a run opened with open_run round-trips through Zarr, netCDF and .npz unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from trajscope import open_run
from trajscope.store import CorruptData, StoreRoot, UserError
from trajscope.store.export import copy_attrs, export, read_export



def _assert_same(back: xr.Dataset, ds: xr.Dataset) -> None:
    """Equal values, dims, coords and attributes (xarray's ``identical``), and equal dtypes too."""
    xr.testing.assert_identical(back, ds)
    assert {n: v.dtype for n, v in back.variables.items()} == {n: v.dtype for n, v in ds.variables.items()}


def test_plain_to_zarr_of_an_opened_run_round_trips(tiny_root, tmp_path):
    ds = open_run("a", tiny_root)
    ds.to_zarr(tmp_path / "copy.zarr", zarr_format=3)
    back = xr.open_zarr(tmp_path / "copy.zarr")
    _assert_same(back, ds)
    assert back.traj.config == ds.traj.config and back.traj.config["seed"] == 3
    part = ds.sel(step=slice(3, 20)).chunk(step=7)  # chunks that do not line up with the stored ones (5)
    part.to_zarr(tmp_path / "part.zarr", zarr_format=3)
    _assert_same(xr.open_zarr(tmp_path / "part.zarr"), part)


def test_plain_to_netcdf_of_an_opened_run_round_trips(tiny_root, tmp_path):
    ds = open_run("a", tiny_root)
    ds.to_netcdf(tmp_path / "a.nc")  # raised TypeError on the nested config attribute before
    with xr.open_dataset(tmp_path / "a.nc") as back:
        _assert_same(back.load(), ds.load())
        attrs = back.traj.attrs
    raw = StoreRoot(tiny_root).read_attrs("a")  # what the producer wrote, read independently of open_run
    for key in ("config", "schema", "data_info", "versions", "tags", "time_variables", "note", "status"):
        assert attrs[key] == raw[key], key
    part = ds.sel(step=slice(10, 30))[["W", "loss"]]
    part.to_netcdf(tmp_path / "part.nc")
    with xr.open_dataset(tmp_path / "part.nc") as back:
        _assert_same(back.load(), part.load())


def test_an_exported_zarr_opens_as_a_run(tiny_root, tmp_path):
    """A plain ``to_zarr`` copy of an opened run is itself a run: open_run and the catalog read it."""
    from trajscope.store import describe_run

    ds = open_run("a", tiny_root)
    ds.to_zarr(tmp_path / "copy" / "c.zarr", zarr_format=3)
    again = open_run("c", tmp_path / "copy")
    assert again.traj.config == ds.traj.config and again.traj.attrs["tags"] == ["base"]
    np.testing.assert_array_equal(again["W"].values, ds["W"].values)
    assert describe_run("c", tmp_path / "copy").config["train"]["lr"] == ds.traj.config["train"]["lr"]


@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".npz"])
def test_export_round_trips_equal_the_original(tiny_root, tmp_path, suffix):
    ds = open_run("a", tiny_root)
    path = export(ds, tmp_path / f"a{suffix}")
    back = read_export(path)
    expected = ds.copy()
    expected.attrs = copy_attrs(ds)  # (the copy's own: its states, what it was exported from)
    if suffix == ".zarr":  # a run of its own: its name, uid and chunks
        expected.attrs.update({k: back.attrs[k] for k in ("run_uid", "chunk_steps")})
    assert back.attrs["run_uid"] != ds.attrs["run_uid"] or suffix != ".zarr"
    xr.testing.assert_identical(back.load(), expected.load())
    assert back.traj.attrs["exported_from"] == {"run_id": "a", "run_uid": ds.traj.attrs["run_uid"]}
    assert type(back.attrs["capacity"]) is int and type(back.attrs["final_loss"]) is float  # (not numpy's)
    assert back["step"].dtype == np.int64 and back["y"].dtype == np.int8 and back.traj.config["seed"] == 3


@pytest.mark.parametrize("suffix", [".nc", ".zarr", ".npz"])
def test_export_command_with_steps_and_variables(run_cli, tiny_root, tmp_path, suffix):
    out = tmp_path / f"part{suffix}"
    proc = run_cli("export", "a", "--root", str(tiny_root), "-o", str(out), "--step", "5:30:5", "--vars", "W,loss")
    assert proc.returncode == 0, proc.stderr
    back = read_export(out).load()
    ds = open_run("a", tiny_root)
    expected = ds[["W", "loss"]].sel(step=slice(5, 30)).isel(step=slice(None, None, 5)).load()
    assert list(back["step"].values) == [5, 10, 15, 20, 25, 30]
    np.testing.assert_array_equal(back["W"].values, expected["W"].values)
    np.testing.assert_array_equal(back["loss"].values, expected["loss"].values)
    assert set(back.data_vars) == {"W", "loss"} and back.attrs["committed_steps"] == back.attrs["capacity"] == 6
    if suffix == ".zarr":  # a Zarr export is itself a run trajscope opens
        xr.testing.assert_identical(open_run(out).drop_attrs(), back.drop_attrs())
    again = run_cli("export", "a", "--root", str(tiny_root), "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites


@pytest.mark.parametrize("args, words", [
    (["-o", "x.csv"], ".nc"), (["-o", "x.nc", "--vars", "nope"], "no variable 'nope'"),
    (["-o", "x.nc", "--step", "500:600"], "no recorded state"),
    (["-o", "x.nc", "--vars", ""], "--vars names no variable"), (["-o", "x.nc", "--vars", " , "], "names no variable"),
    (["-o", "x.nc", "--vars", "X,y"], "hold no state of the trajectory (no step): add one of W"),  # (the copy
    # kept the run's committed_steps, and a Zarr one opened as no run: found by a review)
    (["-o", "s3://bucket/x.nc"], "'s3://bucket/"),  # (it said "directory
    # 's3:/bucket' does not exist", then quoted the URL as s3:/bucket/x.nc)
])
def test_export_errors_are_one_line(run_cli, tiny_root, tmp_path, args, words):
    proc = run_cli("export", "a", "--root", str(tiny_root), *[a.replace("x.", str(tmp_path / "x.")) for a in args])
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".npz", ".nc"])
def test_an_output_the_file_system_refuses_is_one_line_naming_it(run_cli, tiny_root, tmp_path, suffix):
    """Found by a review: a legal 240-character name made a hidden temporary name too long to create (a
    traceback); /proc (no file can be made there) and too long a name were tracebacks too, and netCDF's refusals
    (h5py's) named no path or the hidden one. Nothing is left behind."""
    long = tmp_path / ("b" * (250 - len(suffix)) + suffix)  # legal: 250 bytes
    proc = run_cli("export", "a", "--root", str(tiny_root), "--step", "0:3", "-o", str(long))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [long.name]
    assert open_run(tiny_root / "a.zarr").sizes["step"] > 3  # (the run is untouched)
    for out, words in ((tmp_path / ("c" * 260 + suffix), "is 26"), (Path("/proc") / f"x{suffix}", "cannot write /proc/x")):
        proc = run_cli("export", "a", "--root", str(tiny_root), "--step", "0:3", "-o", str(out))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0] and ".partial" not in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [long.name]


@pytest.mark.parametrize("inside", ["x.nc", "W/x.npz", "W/c/extra.zarr"])
def test_an_export_inside_a_run_is_refused_and_the_run_is_untouched(run_cli, tiny_root, inside):
    """An export written into a run's folder would be deleted with it by ``rm`` and taken for part of it."""
    run = tiny_root / "a.zarr"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = run_cli("export", "a", "--root", str(tiny_root), "-o", str(run / inside))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is inside the Zarr store" in proc.stderr and "write the export outside it" in proc.stderr
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.parametrize("suffix", ["pdf", "svg"])
def test_plot_writes_pdf_and_svg(run_cli, tiny_root, tmp_path, suffix):
    out = tmp_path / f"loss.{suffix}"
    proc = run_cli("plot", "a", "loss", "-o", str(out), "--root", str(tiny_root))
    assert proc.returncode == 0, proc.stderr
    head = out.read_bytes()[:200]
    assert head.startswith(b"%PDF") if suffix == "pdf" else b"<svg" in out.read_bytes()[:2000]


def test_plot_replaces_a_link_instead_of_writing_through_it_and_refuses_a_run_folder(run_cli, tiny_root, tmp_path):
    """Found by a review: ``plot -o out.png`` where ``out.png`` was a link to a run's ``zarr.json`` overwrote the
    run's document (fsck: "not JSON"). The figure now replaces the link; a path inside a run is refused."""
    document = tiny_root / "a.zarr" / "zarr.json"
    before = document.read_bytes()
    link = tmp_path / "link.png"
    os.symlink(document, link)
    proc = run_cli("plot", "a", "loss", "-o", str(link), "--root", str(tiny_root))
    assert proc.returncode == 0, proc.stderr
    assert document.read_bytes() == before and not link.is_symlink()
    assert link.read_bytes().startswith(b"\x89PNG") and sorted(p.name for p in tmp_path.iterdir()) == ["link.png"]
    private = tmp_path / "private.png"  # a file replaced keeps its permission bits (a review: 0600 became 0644)
    private.write_bytes(b"old")
    private.chmod(0o600)
    assert run_cli("plot", "a", "loss", "-o", str(private), "--root", str(tiny_root)).returncode == 0
    assert private.read_bytes().startswith(b"\x89PNG") and (private.stat().st_mode & 0o777) == 0o600
    run = tiny_root / "a.zarr"
    listed = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = run_cli("plot", "a", "loss", "-o", str(run / "W" / "loss.png"), "--root", str(tiny_root))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is inside the Zarr store" in proc.stderr and sorted(p.relative_to(run) for p in run.rglob("*")) == listed


def test_a_plain_copy_without_its_all_nan_chunks_still_opens_as_a_run(tiny_root, tmp_path):
    """zarr stores no file for a chunk that is all fill value (a diverged run's NaN states). A plain
    ``to_zarr`` copy read back with ``open_run`` gives those NaNs, not a missing-chunk error: the marker
    that every committed chunk is stored is an object of the run's own (``.all_chunks_stored``), which
    xarray does not copy, whether the copy comes from ``open_run`` or from a plain ``xr.open_zarr`` of the
    run's folder. ``export`` stores every chunk all the same."""
    import os

    assert os.path.exists(tiny_root / "a.zarr" / ".all_chunks_stored")
    for source, name in ((open_run("a", tiny_root), "c"), (xr.open_zarr(tiny_root / "a.zarr"), "d")):
        ds = source.copy()
        ds["W"][:5] = np.nan  # the first chunk of W (5 states), all NaN: zarr writes no file for it
        ds.to_zarr(tmp_path / "copy" / f"{name}.zarr", zarr_format=3)
        assert not os.path.exists(tmp_path / "copy" / f"{name}.zarr" / ".all_chunks_stored")
        assert not os.path.exists(tmp_path / "copy" / f"{name}.zarr" / "W" / "c" / "0" / "0" / "0")
        again = open_run(name, tmp_path / "copy")
        assert np.isnan(again["W"][:5].values).all()
        np.testing.assert_array_equal(again["W"][5:].values, ds["W"][5:].values)
    export(ds, tmp_path / "e.zarr")
    assert os.path.exists(tmp_path / "e.zarr" / "W" / "c" / "0" / "0" / "0")  # export keeps every chunk


def test_plot_of_a_kind_needing_two_states_on_one_is_one_line(run_cli, tiny_root, tmp_path):
    """It was a ValueError traceback (found by a read-through)."""
    proc = run_cli("plot", "a", "direction_field", "--step", "0:0", "-o", str(tmp_path / "d.png"), "--root",
                   str(tiny_root))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "needs two; the step range holds 1: widen the step range" in proc.stderr
    assert not (tmp_path / "d.png").exists()


def test_the_marker_object_warns_only_where_the_readme_says(tiny_root):
    """The README: zarr does not know ``.all_chunks_stored``, so what lists a run's members warns about it
    (harmless); ``open_run``, the ``trajscope`` engine and a default ``xr.open_zarr`` do not."""
    import warnings

    import zarr

    path = tiny_root / "a.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_run("a", tiny_root).load()
        xr.open_dataset(path, engine="trajscope").load()
        xr.open_zarr(path).load()
    with pytest.warns(UserWarning, match="Object at .all_chunks_stored is not recognized"):
        dict(zarr.open_group(path, mode="r", use_consolidated=False).members())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="Object at .all_chunks_stored")  # the README's filter
        xr.open_zarr(path, consolidated=False).load()


def test_selecting_steps_of_a_run_with_no_state_yet_is_a_user_error(tmp_path):
    """A library caller's select() on a run with nothing committed: a UserError, not an IndexError."""
    from trajscope.producer.two_layer import variables as two_layer_variables
    from trajscope.store import RunWriter, UserError
    from trajscope.store.export import select

    root = StoreRoot(tmp_path)
    writer = RunWriter.create(root, "empty", variables=two_layer_variables(), sizes={"neuron": 3, "feature": 4, "sample": 5},
                              capacity=8, static={"X": np.zeros((5, 4)), "y": np.ones(5)}, attrs={})
    writer.lock.release()  # nothing committed: a live run of no states
    with pytest.raises(UserError, match="no recorded state yet"):
        select(open_run("empty", root), step=slice(0, 5))


def test_a_range_between_two_recorded_steps_is_told_apart_from_one_outside_the_run():
    """Found by a review: ``show``, ``plot`` and ``export`` said "the run has steps 0 to 1500" of a range between
    two states of a log schedule, inside those steps; ``ds.traj`` already said where it falls."""
    import xarray as xr

    from trajscope.store import UserError
    from trajscope.store.export import select

    ds = xr.Dataset({"loss": ("step", np.ones(5))}, coords={"step": [0, 1, 2, 959, 1113]})
    with pytest.raises(UserError, match="steps 1000:1001: it falls between the recorded steps 959 and 1113; widen"):
        select(ds, step=slice(1000, 1001))
    with pytest.raises(UserError, match="steps 2000:: the run has steps 0 to 1113"):
        select(ds, step=slice(2000, None))


def test_a_reversed_range_or_a_slice_of_other_things_is_said_so():
    """Found by a review: ``step=50:20`` was answered "the run has steps 0 to 100" (50 and 20 both lie in it); a
    Python caller's negative stride read the states backwards and ``slice("0", 5)`` failed inside xarray."""
    import xarray as xr

    from trajscope.store import UserError
    from trajscope.store.export import select

    ds = xr.Dataset({"loss": ("step", np.ones(5))}, coords={"step": [0, 25, 50, 75, 100]})
    with pytest.raises(UserError, match="steps 50:20: the first step must not exceed the last .*e.g. 20:50"):
        select(ds, step=slice(50, 20))
    with pytest.raises(UserError, match="stride s must be a positive integer"):
        select(ds, step=slice(0, 100, -1))
    for odd in (slice("0", 50), slice(0, 50.5), slice(True, 50)):
        with pytest.raises(UserError, match="give slice\\(a, b, s\\) of integers"):
            select(ds, step=odd)
    assert list(select(ds, step=slice(np.int64(25), 75, 2))["step"].values) == [25, 75]


@pytest.mark.parametrize("suffix", ["nc", "zarr", "npz", "NPZ"])
def test_an_export_stopped_half_way_leaves_nothing(tiny_root, tmp_path, monkeypatch, suffix):
    """Found by a review: a Ctrl-C (or a corrupt chunk) during an export left a file that opened as the complete
    run, all NaN, and a second export was refused because it existed. Now written under a temporary name and
    renamed when whole: a stopped export leaves nothing, and one that ends is whole."""
    import xarray

    ds = open_run("a", tiny_root)
    calls = []

    def stop_half_way(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("store") or kwargs.get("path")
        calls.append(str(target))
        if str(target).endswith(".zarr"):
            Path(target).mkdir()
        elif not Path(target).exists():
            Path(target).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(xarray.Dataset, "to_netcdf", stop_half_way)
    monkeypatch.setattr(xarray.Dataset, "to_zarr", stop_half_way)
    def stop_in_the_archive(member, *args, **kwargs):  # (an .npz's arrays are written one by one into it)
        member.write(b"partial")
        stop_half_way(None, next(tmp_path.glob(".copy.partial-*")))

    monkeypatch.setattr(np.lib.format, "write_array", stop_in_the_archive)
    out = tmp_path / f"copy.{suffix}"
    with pytest.raises(KeyboardInterrupt):
        export(ds, out)
    assert calls and ".partial-" in calls[0] and not list(tmp_path.iterdir())  # nothing left, not even hidden
    monkeypatch.undo()
    export(ds, out)
    back = read_export(out) if suffix != "zarr" else open_run(out)
    np.testing.assert_array_equal(back["W"].values, ds["W"].values)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("suffix", ["nc", "zarr", "npz"])
def test_a_ctrl_c_python_swallows_still_stops_the_export(tiny_root, tmp_path, suffix):
    """Found by a review: a Ctrl-C that lands in a weakref callback (h5py closing its objects during a netCDF export)
    is printed as "Exception ignored" and swallowed: the export went on to its end and exited 0. The export notes
    every Ctrl-C and, once written, ends interrupted all the same, leaving nothing. Here the Ctrl-C is made to land
    in such a callback at the export's second dask task (or, for .npz, while an array is written)."""
    import signal
    import weakref

    from dask.callbacks import Callback

    ds = open_run("a", tiny_root)
    fired = []

    def ctrl_c_in_a_weakref_callback():
        class Closed:
            pass

        held = Closed()
        ref = weakref.ref(held, lambda _: signal.getsignal(signal.SIGINT)(signal.SIGINT, None))  # noqa: F841
        fired.append(True)
        del held  # (the callback runs now; its KeyboardInterrupt is printed and dropped)

    def at_the_second_task(key, dsk, state):  # noqa: ARG001
        if len(fired) == 0 and len(state["finished"]) >= 1:
            ctrl_c_in_a_weakref_callback()

    out = tmp_path / f"copy.{suffix}"
    original, handler = np.lib.format.write_array, signal.signal(signal.SIGINT, signal.default_int_handler)
    if suffix == "npz":  # (Python's own SIGINT handler: an earlier test of the session may have left another)
        def write_array(member, *args, **kwargs):
            if not fired:
                ctrl_c_in_a_weakref_callback()
            return original(member, *args, **kwargs)
        np.lib.format.write_array = write_array
    try:
        with Callback(pretask=at_the_second_task), pytest.raises(KeyboardInterrupt):
            export(ds, out)
    finally:
        np.lib.format.write_array = original
        restored = signal.signal(signal.SIGINT, handler)
    assert fired and not list(tmp_path.iterdir())  # (swallowed where it landed; nothing left, not even hidden)
    assert restored is signal.default_int_handler  # (the export put the handler back)
    # a process that ignores Ctrl-C with a handler of its own (a sweep's worker, once interrupted): it is not taken for
    # an interrupt
    fired.clear()
    handler = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        if suffix == "npz":
            np.lib.format.write_array = write_array
        with Callback(pretask=at_the_second_task):
            export(ds, out)
    finally:
        np.lib.format.write_array = original
        signal.signal(signal.SIGINT, handler)
    assert fired and out.exists()


def test_an_export_never_writes_through_a_link(tiny_root, tmp_path):
    """Found by a review: a dangling link named as the output was written through, into a run's folder."""
    import os

    target = tiny_root / "a.zarr" / "newfile.nc"
    os.symlink(target, tmp_path / "dangling.nc")
    with pytest.raises(UserError, match="exists"):
        export(open_run("a", tiny_root), tmp_path / "dangling.nc")
    assert not target.exists()


def test_a_zarr_export_is_a_run_true_of_what_it_holds(run_cli, tmp_path, small_config):
    """Found by a review of exports: a Zarr copy kept the whole run's ``time_variables``, ``last_step`` and
    ``final_loss`` (fsck: "time-varying array v is missing" after ``--vars W,loss``; ``ls`` the source's final
    loss), a copy of a killed run stayed ``running`` with its writer's lease and crashed ``resume`` and
    ``fsck --repair`` (its attributes were JSON text), and a name that is no run id was written, then refused."""
    from trajscope.producer import produce
    from trajscope.store import StoreRoot, describe_run
    from trajscope.store.fsck import fsck_run

    root = StoreRoot(tmp_path / "runs")
    produce(small_config(train={"steps": 40}), root=root, name="a")
    # a killed run: still `running`, its lock free (the lease as a dead writer left it)
    attrs = root.read_attrs("a")
    root.write_attrs("a", {**attrs, "status": "running", "writer": {"token": "x", "host": "h", "pid": 1,
                                                                       "heartbeat": 0}})
    out = tmp_path / "out"
    out.mkdir()
    proc = run_cli("export", "a", "--root", str(root.location), "-o", str(out / "part.zarr"), "--step", "0:20:4",
                   "--vars", "W,loss")
    assert proc.returncode == 0, proc.stderr
    copy = StoreRoot(out)
    stored = copy.read_group_metadata("part")["attributes"]
    assert isinstance(stored["time_variables"], list)  # nested, as the store writes a run's
    assert set(stored["time_variables"]) == {"W", "loss", "step", "t"}
    assert set(stored["schema"]["variables"]) <= {"W", "loss", "step", "t"} and "v" not in stored["schema"]["variables"]
    assert stored["status"] == "interrupted" and "writer" not in stored
    ds = open_run("a", root)
    assert stored["last_step"] == 20 and stored["final_loss"] == float(ds["loss"].sel(step=20))
    assert stored["exported_from"]["run_id"] == "a"
    # its own name, uid and chunk length, and no path of the source's (found by a review of the store contract)
    assert stored["run_id"] == "part" and stored["run_uid"] != ds.attrs["run_uid"] and "root" not in stored
    w_meta = json.loads((out / "part.zarr" / "W" / "zarr.json").read_text())
    assert stored["chunk_steps"] == w_meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    report = fsck_run(copy, "part")
    assert report.ok, report.problems
    assert describe_run("part", copy).committed_steps == 6
    resumed = run_cli("resume", "part", "--root", str(out))
    assert resumed.returncode == 2 and "a copy written by `trajscope export` of run 'a'" in resumed.stderr
    assert copy.read_attrs("part")["status"] == "interrupted"  # untouched by the refusal
    for name in ("UP.ZARR", "with space.zarr", "x.zarr.zarr"):
        refused = run_cli("export", "a", "--root", str(root.location), "-o", str(out / name))
        assert refused.returncode == 2 and "a Zarr export is a run, named RUN.zarr" in refused.stderr, name
        assert not (out / name).exists()
    # every chunk stored and so marked: one lost later is a loss, not NaN (found by a review: no marker)
    (out / "part.zarr" / "W" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(CorruptData, match="W/c/0/0/0"):
        open_run("part", copy)["W"].values


def test_an_npz_keeps_variables_named_like_np_savez_arguments(tiny_root, tmp_path):
    """Found by a review: ``np.savez(file, ..., **arrays)`` took a variable named ``file`` for its own argument (a
    TypeError) and one named ``allow_pickle`` likewise (dropped, silently). The archive is written without it."""
    ds = open_run("a", tiny_root).rename({"v": "file", "loss": "allow_pickle"})
    out = export(ds, tmp_path / "odd.npz")
    back = read_export(out)
    np.testing.assert_array_equal(back["file"].values, ds["file"].values)
    np.testing.assert_array_equal(back["allow_pickle"].values, ds["allow_pickle"].values)
    with np.load(out, allow_pickle=False) as plain:  # (plain numpy reads it as it reads np.savez's archives)
        np.testing.assert_array_equal(plain["W"], ds["W"].values)


def test_a_zarr_export_failing_half_way_leaves_nothing_behind(tiny_root, tmp_path, monkeypatch):
    """Found by a review: on a full disk a Zarr export said so, but dask's other write threads went on writing
    beside the removal of the hidden copy, which was then sometimes left behind (with a chunk in it)."""
    import asyncio
    import errno
    import threading
    import time

    import zarr.storage

    original, calls, lock = zarr.storage.LocalStore.set, [], threading.Lock()

    async def full_after_a_few(self, key, value):
        if "/c/" in key:
            with lock:
                calls.append(key)
                n = len(calls)
            if n == 12:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            await asyncio.sleep(0.2)  # (slow writes: another still under way when the first one fails)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_after_a_few)
    ds = open_run("a", tiny_root).chunk({"step": 2})  # (many chunks)
    ds.attrs["chunk_steps"] = 2
    with pytest.raises(UserError, match="No space left on device"):
        export(ds, tmp_path / "copy.zarr")
    time.sleep(0.5)  # (a write thread that went on would have made its files again by now)
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_place_named_relative_is_said_with_the_users_path(run_cli, tiny_root, monkeypatch):
    """Found by a review: a Zarr export to a relative path the file system refuses named the hidden copy."""
    monkeypatch.chdir("/")
    proc = run_cli("export", "a", "--root", str(tiny_root), "--step", "0:3", "-o", "proc/x.zarr")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write proc/x.zarr" in lines[0], proc.stderr
