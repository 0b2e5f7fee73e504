"""What a training script can do wrong with ``ModuleRecorder``, found by a review of its Python API: each is refused
in one clear error, and nothing recorded is lost or silently changed."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

import trajscope
from trajscope.store import UserError


def test_record_from_two_threads_at_once_is_refused_and_the_states_stay_whole(tmp_path):
    """Two threads' calls interleaved their states: some rows were never written (4.9e-324 losses), steps repeated."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads switch often: the calls overlap)
    try:
        rec = trajscope.ModuleRecorder(torch.nn.Linear(3, 2), root=tmp_path, name="th")
        refused: list[str] = []

        def loop(value: float) -> None:
            try:
                for _ in range(3000):
                    rec.record(loss=value)
            except UserError as err:
                refused.append(str(err))

        threads = [threading.Thread(target=loop, args=(v,)) for v in (1.0, 2.0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rec.close()
    finally:
        sys.setswitchinterval(interval)
    ds = trajscope.open_run(tmp_path / "th.zarr")
    steps = ds["step"].values
    assert np.array_equal(steps, np.arange(steps.size)) and set(np.unique(ds["loss"].values)) <= {1.0, 2.0}
    assert all("called from two threads at once" in r for r in refused)


def test_a_refused_resume_leaves_the_run_as_it_ended(tmp_path):
    """A resume refused for another model had already marked the run ``running`` and erased its end."""
    try:
        with trajscope.ModuleRecorder(torch.nn.Linear(3, 2), root=tmp_path, name="f") as rec:
            for k in range(5):
                rec.record(loss=float(k))
            raise ValueError("out of memory")
    except ValueError:
        pass
    before = trajscope.open_run(tmp_path / "f.zarr").attrs
    for model, kwargs in ((torch.nn.Linear(4, 2), {}), (torch.nn.Linear(3, 2), {"every": 2})):
        with pytest.raises(UserError):
            trajscope.ModuleRecorder(model, root=tmp_path, name="f", resume=True, **kwargs)
        after = trajscope.open_run(tmp_path / "f.zarr").attrs
        assert (after["status"], after["error"], after["final_loss"]) == ("failed", before["error"], 4.0)


@pytest.mark.parametrize("first, then, words", [
    ([1.0, 2.0], 5.0, "a value of shape (); the run stores c as shape (2,)"),  # (was stored as [5, 5])
    (0, np.array(2**60 + 1), "beyond 2**53"),  # (an integer array into a float64 scalar: rounded)
    (0, torch.tensor([2**60 + 1]), "beyond 2**53"),
    (torch.tensor([1, 2]), torch.tensor([1.5, 2.5]), "a torch.float32 value; the run stores int64"),
    (np.array([1], dtype=np.uint64), np.array([1], dtype=np.uint64), "a torch.uint64 value, which a run cannot"),
])
def test_a_value_refused_in_the_first_two_calls_creates_no_run(tmp_path, first, then, words):
    """Refused after the run was made, it left a ``failed`` run the corrected script could not take."""
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        with trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, name="r") as rec:
            rec.record(c=first)
            rec.record(c=then)
    assert not (tmp_path / "r.zarr").exists()
    with trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, name="r") as rec:  # the name is free
        rec.record(c=0.5)
        rec.record(c=0.5)


def test_an_integer_array_extra_keeps_its_integers_exactly(tmp_path):
    with trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, name="n") as rec:
        rec.record(c=np.array([0]))
        rec.record(c=np.array([2**60 + 1]))
    assert trajscope.open_run(tmp_path / "n.zarr")["c"].values[-1, 0] == 2**60 + 1


def test_a_parameter_given_another_shape_through_data_is_a_user_error(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match=r"'weight' is now torch.float32 of shape \(3, 2\); the run records"):
        with trajscope.ModuleRecorder(model, root=tmp_path, name="m") as rec:
            rec.record()
            rec.record()
            model.weight.data = torch.zeros(3, 2)
            rec.record()


def test_chunk_buffers_beyond_the_memory_are_refused_before_the_run_exists(tmp_path):
    """numpy's MemoryError came after the run was created, which was left ``running`` with no state."""
    with pytest.raises(UserError, match="chunk buffers need about .* of host memory, .* is available"):
        with trajscope.ModuleRecorder(torch.nn.Linear(1000, 1000), root=tmp_path, name="big",
                                      queue_chunks=10**6) as rec:
            for _ in range(3):
                rec.record()
    assert not (tmp_path / "big.zarr").exists()


def test_an_error_before_any_record_leaves_no_run_and_sys_exit_0_ends_it_complete(tmp_path):
    """Found by a review: an exception before the first ``record()`` left an empty ``failed`` run that refused the
    script's name afterwards; ``sys.exit(0)`` in the block ended the run ``failed`` ("SystemExit: 0")."""
    with pytest.raises(ValueError):
        with trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, name="early"):
            raise ValueError("data not found")
    assert not (tmp_path / "early.zarr").exists()
    with pytest.raises(SystemExit):
        with trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, name="done") as rec:
            for _ in range(3):
                rec.record()
            sys.exit(0)
    assert trajscope.open_run(tmp_path / "done.zarr").attrs["status"] == "complete"


@pytest.mark.parametrize("kwargs, words", [({"name": ""}, "name='': give the run a name"),
                                           ({"name": "a", "attrs": {"x": object()}}, "attrs: "),
                                           ({"name": "a", "attrs": {"x": float("nan")}}, "attrs: ")])
def test_a_bad_name_or_attrs_is_refused_when_the_recorder_is_made(tmp_path, kwargs, words):
    with pytest.raises(UserError, match=words):
        trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, **kwargs)
    assert not any(p.name.endswith(".zarr") for p in tmp_path.iterdir())


def test_a_complete_run_of_no_state_is_not_told_to_resume(tmp_path, capsys, monkeypatch):
    """Found by a review: `show` of a run whose script never called record() said to resume it, which is refused
    for a complete run."""
    from trajscope.cli import main

    with trajscope.ModuleRecorder(torch.nn.Linear(2, 2), root=tmp_path, name="none"):
        pass
    monkeypatch.setattr(sys, "argv", ["trajscope", "show", "none", "--root", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is complete with no recorded state" in err and "resume" not in err, err
