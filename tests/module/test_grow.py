"""RunWriter.grow: capacity for runs of unknown length; every intermediate state opens."""

from __future__ import annotations

import numpy as np
import pytest

from trajscope.producer.two_layer import schema, variables
from trajscope.store import RunWriter, StoreRoot, open_run
from trajscope.store.layout import chunk_shape_for


def _writer(root, name="g"):
    return RunWriter.create(root, name, variables=variables(), sizes={"neuron": 3, "feature": 2, "sample": 4},
                            capacity=4, static={"X": np.ones((4, 2)), "y": np.ones(4)}, attrs={"schema": schema()},
                            chunk_bytes=48)


def _block(k, n):
    return {"W": np.full((n, 3, 2), k, np.float32), "v": np.zeros((n, 3), np.float32), "loss": np.ones(n),
            "output": np.zeros((n, 4), np.float32), "step": np.arange(k, k + n), "t": np.zeros(n)}


def test_grow_makes_room_and_readers_still_trim(tmp_path):
    root = StoreRoot(tmp_path)
    w = _writer(root)
    assert w.chunk_steps == 2 and w.capacity == 4
    w.write_block(0, _block(0, 2))
    w.commit(2)
    with pytest.raises(ValueError, match="capacity"):
        w.write_block(4, _block(4, 2))
    w.grow(10)
    w.grow(6)  # never shrinks
    assert w.capacity == 10 and root.read_attrs("g")["capacity"] == 10
    assert open_run("g", root).sizes["step"] == 2  # trimmed to committed, not to capacity
    for k in (2, 4, 6, 8):
        w.write_block(k, _block(k, 2))
    w.commit(10)
    w.finish("complete")
    ds = open_run("g", root)
    np.testing.assert_array_equal(ds["step"].values, np.arange(10))
    assert ds["W"].shape == (10, 3, 2)


def test_a_crash_between_resize_and_attrs_opens_and_resumes(tmp_path):
    root = StoreRoot(tmp_path)
    w = _writer(root)
    w.write_block(0, _block(0, 2))
    w.commit(2)
    for array in w.arrays.values():  # grow's first half only: arrays resized, attributes not yet
        array.resize((12,) + array.shape[1:])
    w.lock.release()
    assert open_run("g", root).sizes["step"] == 2
    again = RunWriter.reopen(root, "g")
    assert again.capacity == 4 and all(a.shape[0] == 4 for a in again.arrays.values())
    again.finish("interrupted")


def test_chunk_shape_splits_only_states_larger_than_the_target():
    assert chunk_shape_for((16, 8), 4, 32, target_bytes=1 << 20) == (32, 16, 8)
    assert chunk_shape_for((64, 32), 4, 1, target_bytes=2048) == (1, 16, 32)  # 16 rows of 128 B
    assert chunk_shape_for((4, 1024), 4, 1, target_bytes=2048) == (1, 1, 512)  # one row too big: split it
    assert chunk_shape_for((), 8, 5) == (5,)


@pytest.mark.parametrize("expected_steps", [None, 30])
def test_a_run_of_unknown_length_has_no_progress_while_it_records(tmp_path, expected_steps, capsys):
    """Found by a review: a ModuleRecorder run without ``expected_steps`` listed ``committed / capacity`` as its
    progress, and the capacity doubles as the run grows (0.91, 0.67, 0.95, 0.58 while one run recorded)."""
    import json
    import time

    import torch

    import trajscope
    from trajscope.api.routes_runs import summary
    from trajscope.cli import main
    from trajscope.store import describe_run

    model = torch.nn.Linear(3, 2)
    rec = trajscope.ModuleRecorder(model, root=tmp_path, name="grow", expected_steps=expected_steps, chunk_mib=0.0001)
    for _ in range(12):
        rec.record()
    deadline = time.monotonic() + 60
    while (info := describe_run("grow", tmp_path)).committed_steps < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # (the chunks are written in the background)
    assert info.status == "running" and info.committed_steps >= 4
    assert info.planned_states == (None if expected_steps is None else info.capacity) and info.capacity >= 31
    row = summary(info, size=False)
    assert row["progress"] == (None if expected_steps is None else info.committed_steps / info.capacity)
    main(["ls", "--root", str(tmp_path), "--json"])
    assert json.loads(capsys.readouterr().out)[0]["planned_states"] == info.planned_states
    rec.close()
    done = describe_run("grow", tmp_path)
    assert done.planned_states == 12 and summary(done, size=False)["progress"] == 1.0  # its length, once ended


def test_a_run_of_unknown_length_that_was_killed_and_repaired_has_no_plan():
    """Found by a review: ``fsck --repair`` marks a killed run ``interrupted`` without shrinking its capacity,
    which then read as its plan (``0/8192``)."""
    from trajscope.store.reader import planned_states

    unknown = {"length_known": False, "capacity": 8192, "committed_steps": 40}
    assert planned_states({**unknown, "status": "running"}) is None
    assert planned_states({**unknown, "status": "interrupted"}) is None
    assert planned_states({**unknown, "status": "complete", "capacity": 40}) == 40
    assert planned_states({"capacity": 100, "committed_steps": 40, "status": "interrupted"}) == 100
