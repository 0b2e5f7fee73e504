"""States a crash can leave between protocol steps open, and fsck finishes them (issue 8, items 2 and 4).

These states are built by hand (as an older trajscope, or a kill at an unlucky instant, left them);
the named fault points of the writer are visited in tests/producer/test_fault_points.py.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import xarray as xr

from trajscope.producer.two_layer import variables as two_layer_variables
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.store.fsck import fsck_run
from tests import cli_fork

H, D, N, CAPACITY, CHUNK = 3, 4, 5, 40, 4


def written_run(root: StoreRoot, run_id: str = "r", commit: int = 22) -> tuple[RunWriter, dict]:
    """A run of capacity 40 with ``commit`` states written and committed, its writer still open."""
    rng = np.random.default_rng(1)
    writer = RunWriter.create(
        root, run_id, variables=two_layer_variables(), sizes={"neuron": H, "feature": D, "sample": N},
        capacity=CAPACITY, static={"X": rng.normal(size=(N, D)), "y": np.array([1, -1, 1, -1, 1])},
        attrs={"config": {"train": {"lr": 0.1}}}, chunk_bytes=H * D * 4 * CHUNK)
    values = {"W": rng.normal(size=(commit, H, D)).astype(np.float32), "v": rng.normal(size=(commit, H)).astype(np.float32),
              "loss": rng.random(commit), "output": rng.normal(size=(commit, N)).astype(np.float32),
              "step": np.arange(commit), "t": np.arange(commit) * 0.1}
    for start in range(0, commit, CHUNK):
        writer.write_block(start, {k: v[start:start + CHUNK] for k, v in values.items()})
        writer.commit(min(start + CHUNK, commit))
    return writer, values


def assert_values(ds, values):
    assert ds.sizes["step"] == len(values["step"])
    for name, expected in values.items():
        np.testing.assert_array_equal(ds[name].values, expected, err_msg=name)


def test_killed_after_status_before_consolidation_opens_and_is_repaired(tmp_path):
    """What the old finish left when killed between its status write and the consolidation."""
    root = StoreRoot(tmp_path)
    writer, values = written_run(root)
    for array in writer.arrays.values():
        array.resize((22,) + array.shape[1:])
    attrs = {**writer.attrs, "status": "complete", "finished": "now"}
    attrs.pop("writer")
    root.write_attrs("r", attrs)  # no consolidated metadata
    writer.lock.release()
    assert_values(open_run("r", root).load(), values)
    report = fsck_run(root, "r")
    assert any("no consolidated metadata" in p for p in report.problems)
    repaired = fsck_run(root, "r", repair=True)
    assert repaired.ok and repaired.repaired, repaired.problems
    group = json.loads((tmp_path / "r.zarr" / "zarr.json").read_text())
    assert group["consolidated_metadata"]["metadata"]["W"]["shape"][0] == 22
    assert_values(xr.open_zarr(root.run_url("r"), zarr_format=3).load(), values)


@pytest.mark.parametrize("status", ["running", "interrupted"])
def test_partly_shrunk_arrays_open_and_are_repaired(tmp_path, status):
    """SIGTERM then SIGKILL during the old shrink: W cut to 22 states, the others still at 40."""
    root = StoreRoot(tmp_path)
    writer, values = written_run(root)
    writer.arrays["W"].resize((22, H, D))
    if status != "running":
        attrs = {**writer.attrs, "status": status}
        root.write_attrs("r", attrs)
    writer.lock.release()
    assert_values(open_run("r", root).load(), values)  # no "conflicting sizes for dimension 'step'"
    report = fsck_run(root, "r")
    assert not report.ok
    repaired = fsck_run(root, "r", repair=True)
    assert repaired.ok, repaired.problems
    assert repaired.status == "interrupted"
    assert_values(xr.open_zarr(root.run_url("r"), zarr_format=3).load(), values)
    assert fsck_run(root, "r").ok


def test_finish_writes_the_final_document_before_shrinking(tmp_path, monkeypatch):
    """A finish stopped after shrinking some arrays: readers (even plain xarray) see one length."""
    from trajscope.store import writer as writer_module

    root = StoreRoot(tmp_path)
    writer, values = written_run(root)
    original = writer_module.shrink_arrays

    def stops_half_way(root_, run_id, committed, arrays=None):
        original(root_, run_id, committed, {"W": arrays["W"], "v": arrays["v"]})
        raise KeyboardInterrupt  # the rest never shrinks

    monkeypatch.setattr(writer_module, "shrink_arrays", stops_half_way)
    with pytest.raises(KeyboardInterrupt):
        writer.finish("complete")
    shapes = {n: json.loads((tmp_path / "r.zarr" / n / "zarr.json").read_text())["shape"][0] for n in ("W", "loss")}
    assert shapes == {"W": 22, "loss": 40}
    assert_values(open_run("r", root).load(), values)
    assert_values(xr.open_zarr(root.run_url("r"), zarr_format=3).load(), values)
    monkeypatch.undo()
    assert fsck_run(root, "r", repair=True).ok
    assert json.loads((tmp_path / "r.zarr" / "loss" / "zarr.json").read_text())["shape"][0] == 22


def test_fsck_finds_a_corrupt_and_a_missing_chunk(tmp_path, python_env):
    root = StoreRoot(tmp_path)
    writer, values = written_run(root)
    writer.finish("complete")
    assert cli_fork.run(["fsck", "r", "--root", str(tmp_path)], env=python_env).returncode == 0
    chunk = tmp_path / "r.zarr" / "W" / "c" / "2" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    loss_chunk = json.loads((tmp_path / "r.zarr" / "loss" / "zarr.json").read_text())["chunk_grid"]["configuration"]
    loss_key = f"loss/c/{8 // loss_chunk['chunk_shape'][0]}"  # small variables have longer chunks than W
    (tmp_path / "r.zarr" / loss_key).unlink()
    proc = cli_fork.run(["fsck", "r", "--root", str(tmp_path), "--repair"], env=python_env)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("run 'r': 2 problems")
    # named as every other command names it (it printed zarr's "checksum do not match" and raw bytes)
    assert "  problem: chunk W/c/2/0/0 (states 8–11) of W fails its crc32c checksum" in proc.stdout, proc.stdout
    assert "Stored and computed" not in proc.stdout and "restore the run from a copy" in proc.stdout
    assert any(f"chunk(s) of loss are missing, e.g. {loss_key}" in line for line in lines[1:])


def test_fsck_reports_temporary_files_a_killed_writer_left_and_repair_removes_them(tmp_path, python_env):
    """A writer killed between writing a chunk's temporary file and renaming it leaves that file (the named
    fault point ``write.renaming`` does it for real in tests/producer/test_fault_points.py); here the run was
    never resumed, so ``fsck --repair`` removes it, and the data are untouched."""
    root = StoreRoot(tmp_path)
    writer, values = written_run(root)
    writer.finish("interrupted")
    left = tmp_path / "r.zarr" / "W" / "c" / "5" / "0" / ".tmp-4242-1-0"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"half a chunk")
    zarrs = tmp_path / "r.zarr" / "W" / f"zarr.{'ab12' * 8}.partial"  # zarr's own, of the array's metadata
    zarrs.write_bytes(b"{")
    report = fsck_run(root, "r")
    assert [p for p in report.problems if "2 temporary file(s)" in p and "W/c/5/0/.tmp-4242-1-0" in p]
    proc = cli_fork.run(["fsck", "r", "--root", str(tmp_path), "--repair"], env=python_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not left.exists() and not zarrs.exists() and fsck_run(root, "r").ok
    assert_values(open_run("r", root).load(), values)


def test_repair_of_a_killed_run_stores_its_last_step_and_final_loss(tmp_path):
    """A run whose writer died, marked ``interrupted`` by ``fsck --repair``, showed no final loss in ``ls``
    (found by a review): the repair stores the last committed state's step and loss, as a finish does."""
    root = StoreRoot(tmp_path)
    writer, values = written_run(root)
    writer.lock.release()  # (as a killed writer's lock is: free, the run still `running`)
    assert root.read_attrs("r")["status"] == "running" and "final_loss" not in root.read_attrs("r")
    last_commit = root.read_attrs("r")["updated"]
    time.sleep(1.1)  # (the times have whole seconds)
    (tmp_path / "r.zarr" / ".all_chunks_stored").write_text("")  # the store's own marker (a finished run has it)
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # zarr's listing warned of that marker on stderr
        warnings.simplefilter("always")
        report = fsck_run(root, "r", repair=True)
    assert [str(w.message) for w in caught if "zarr" in type(w.message).__name__.lower()] == []
    attrs = root.read_attrs("r")
    assert report.ok and attrs["status"] == "interrupted", report.problems
    assert attrs["last_step"] == int(values["step"][-1]) and attrs["final_loss"] == float(values["loss"][-1])
    assert attrs["finished"] == last_commit != attrs["updated"]  # it ended at its last commit, not at the repair
    assert_values(open_run("r", root).load(), values)


def test_a_run_an_older_trajscope_left_half_created_is_told_as_such(tmp_path, python_env):
    """Found by a review of runs recorded before the ``creating`` status: one killed inside ``create`` is a group
    with no attributes and arrays already made. `show` told to resume it, `resume` said it lacked attributes, and
    `fsck --repair` shrank every array as if its finish had stopped. It reads as never fully created now: readers
    refuse it (RunNotReady), resume says what replaces it, fsck says so and --repair removes it."""
    from trajscope.store.errors import RunNotReady, UserError

    from tests.store.test_symlinks import write_run

    root = StoreRoot(tmp_path)
    write_run(root, "halfmade", live=True)
    path = tmp_path / "halfmade.zarr" / "zarr.json"
    path.write_text(json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}))  # as f2cbd3d left it
    with pytest.raises(RunNotReady):
        open_run("halfmade", root)
    with pytest.raises(UserError, match="never fully created .*trajscope produce CONFIG --name halfmade"):
        RunWriter.reopen(root, "halfmade")
    shown = cli_fork.run(["show", "halfmade", "--root", str(tmp_path)], env=python_env, timeout=120)
    assert shown.returncode == 2 and "resume" not in shown.stderr and "--name halfmade" in shown.stderr, shown.stderr
    report = fsck_run(root, "halfmade")
    assert report.problems == ["the run was never fully created (its producer died while creating it): --repair "
                               "removes it, or `trajscope produce CONFIG --name` replaces it"]
    assert fsck_run(root, "halfmade", repair=True).status == "removed" and not root.exists("halfmade")
