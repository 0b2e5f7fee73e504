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
