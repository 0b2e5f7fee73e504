"""What ``ds.traj`` does with datasets it may be handed in a notebook (found by a review of the Python API): a live
or killed run opened with plain ``xr.open_zarr``, a dataset with no state, a subset of a run's variables; and the
SVD kernels' BLAS threads, and the blocks of ``direction_field_error``."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import trajscope  # noqa: F401  (registers ds.traj)
from trajscope.store import RunWriter, StoreRoot, UserError, open_run
from trajscope.producer.two_layer import variables as two_layer_variables


def _killed_run(root: StoreRoot, steps: int = 12, capacity: int = 40) -> None:
    """A run whose writer died after committing ``steps`` of ``capacity`` states (its arrays reach past them)."""
    rng = np.random.default_rng(0)
    h, dim, n = 4, 3, 6
    X = rng.normal(size=(n, dim))
    y = np.array([1, -1] * (n // 2))
    writer = RunWriter.create(root, "killed", variables=two_layer_variables(), sizes={"neuron": h, "feature": dim,
                              "sample": n}, capacity=capacity, static={"X": X, "y": y},
                              attrs={"config": {"train": {"lr": 0.1}, "loss": {"kind": "exp", "reduction": "sum"}}},
                              chunk_bytes=h * dim * 4 * 4)
    W = rng.normal(size=(steps, h, dim))
    block = {"W": W, "v": rng.normal(size=(steps, h)), "loss": rng.random(steps), "output": rng.normal(size=(steps, n)),
             "step": np.arange(steps), "t": np.arange(steps) * 0.1}
    for start in range(0, steps, 4):
        writer.write_block(start, {k: v[start:start + 4] for k, v in block.items()})
    writer.commit(steps)
    writer.lock.release()  # (killed: still `running`, its arrays as long as its capacity)


def test_the_accessor_of_a_plain_open_zarr_of_a_killed_run_reads_only_its_committed_states(tmp_path):
    root = StoreRoot(tmp_path)
    _killed_run(root)
    with pytest.warns(Warning):  # (no consolidated metadata: xarray says so)
        plain = xr.open_zarr(tmp_path / "killed.zarr")
    assert plain.sizes["step"] == 40  # the untrimmed arrays, fill values past the committed 12
    ours = open_run("killed", root)
    got, expected = plain.traj.frobenius_norms().compute(), ours.traj.frobenius_norms().compute()
    assert got.sizes["step"] == 12 and np.array_equal(got["step"], np.arange(12))
    xr.testing.assert_allclose(got.drop_attrs(), expected.drop_attrs())
    assert float(plain.traj.stable_rank().isel(step=-1)) == pytest.approx(float(ours.traj.stable_rank().isel(step=-1)))
    # a finished run's arrays are already cut: a dataset with more states (runs concatenated) is left whole
    both = xr.concat([ours, ours.assign_coords(step=ours["step"] + 12)], "step").assign_attrs(status="complete")
    assert both.traj.frobenius_norms().sizes["step"] == 24


def test_a_quantity_of_a_dataset_with_no_state_is_one_line(tmp_path):
    root = StoreRoot(tmp_path)
    _killed_run(root)
    empty = open_run("killed", root).isel(step=slice(0, 0))
    for name in ("summary", "distance_from_init", "t1", "stable_rank", "row_angles"):
        with pytest.raises(UserError, match=f"quantity '{name}' needs at least one recorded state; this dataset "
                                            "has none yet"):
            getattr(empty.traj, name)()


def test_a_subset_of_a_two_layer_run_names_what_it_lacks(tmp_path):
    root = StoreRoot(tmp_path)
    _killed_run(root)
    ds = open_run("killed", root)
    with pytest.raises(UserError, match=r"needs the two-layer network's W, v, X and y \(this dataset lacks v\); "
                                        r"this dataset offers: .*frobenius_norms"):
        ds.drop_vars("v").traj.stable_rank()
    with pytest.raises(UserError, match="needs a recorded parameter with two or more dims"):
        xr.Dataset({"loss": ("step", np.ones(3))}, coords={"step": np.arange(3)}).traj.param_singular_values()


def test_the_svd_kernels_run_with_one_blas_thread(monkeypatch):
    """Found by a review: the generic spectra ran their batched SVD with every OpenBLAS thread inside dask's own
    threads, 10-90x slower than with one (the two-layer kernels already used one)."""
    from trajscope.analysis import _blas
    from trajscope.analysis.generic import _singular_values_block

    getters = [get for _, get in _blas._find()]
    if not getters:
        pytest.skip("no OpenBLAS found")
    seen = []
    svd = np.linalg.svd

    def counting(*args, **kwargs):
        seen.append([int(get()) for get in getters])
        return svd(*args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", counting)
    with _blas.single_threaded():  # (what the count is outside: at least what it is here, restored after)
        pass
    _singular_values_block(np.random.default_rng(0).normal(size=(3, 20, 30)))
    assert seen and all(count == 1 for counts in seen for count in counts), seen


def test_direction_field_error_keeps_the_runs_blocks(tmp_path):
    """Found by a review: the states and the states after them, one apart, were unified into twice as many
    blocks, half of them one state long (and memory grew with the run)."""
    root = StoreRoot(tmp_path)
    _killed_run(root, steps=40, capacity=40)
    ds = open_run("killed", root)
    chunks = ds["W"].chunks[0]
    assert len(chunks) > 2  # (several blocks)
    err = ds.traj.direction_field_error()["error"]
    assert err.chunks[0][:-1] == chunks[:-1] and sum(err.chunks[0]) == 39, (err.chunks[0], chunks)


def test_open_run_of_a_path_or_url_that_is_no_run_says_what_to_give(tmp_path):
    """Found by a review: the server's own URL, and a folder that is not a run, were an "invalid run id"; and a
    bare ``RUN.zarr`` ignored the root given with it."""
    _killed_run(StoreRoot(tmp_path / "runs"))
    assert open_run("killed.zarr", tmp_path / "runs").sizes["step"] == 12
    with pytest.raises(UserError, match=r"is a run served by `trajscope serve`: open it with xr.open_zarr\("):
        open_run("http://127.0.0.1:8000/zarr/quickstart")
    with pytest.raises(UserError, match="is not a run: give a run id, or the path or URL of a run's folder"):
        open_run(str(tmp_path))


def test_one_step_as_an_int_as_the_cli_and_the_api_take_it(tmp_path):
    root = StoreRoot(tmp_path)
    _killed_run(root)
    ds = open_run("killed", root)
    one = ds.traj.frobenius_norms(step=5).compute()
    assert one.sizes["step"] == 1 and int(one["step"][0]) == 5
    assert float(one["W"][0]) == pytest.approx(float(np.sqrt((ds["W"].sel(step=5).values.astype(float) ** 2).sum())))


def test_a_dataset_without_the_step_dim_is_one_line(tmp_path):
    root = StoreRoot(tmp_path)
    _killed_run(root)
    one = open_run("killed", root).isel(step=5)
    with pytest.raises(UserError, match=r"reads states along the dim 'step'.*isel\(step=\[k\]\)"):
        one.traj.stable_rank()
