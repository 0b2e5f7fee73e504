"""dask's fused task names stay unique (``analysis/_dask_keys.py``): a dask bug gave one variable's result for
another's. Checked on dask's own fusion, then end to end on the run the review found it with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trajscope
import trajscope.analysis  # noqa: F401  (installs the renamer)


def test_dask_fuses_chains_of_long_names_into_tasks_of_whole_unique_names():
    """Two chains whose names share their first 120 characters: dask's renamer cut both to 115 and told them apart
    by 4 hex digits of a hash (1 in 65 536 to collide; a few hundred chains collide about every other time)."""
    import dask
    import dask.array as da
    from dask.array.optimization import optimize

    prefix = "svd-of-" + "layer." * 20  # (the chain's last task names the fused one: a long name, as xarray's)
    arrays = [(da.from_array(np.full(4, float(i)), chunks=2) + 1).map_blocks(lambda b: b * 2, name=f"{prefix}{i}")
              for i in (1, 2)]
    graph = {}
    for array in arrays:
        graph.update(dict(array.__dask_graph__()))
    keys = [k for a in arrays for k in dask.core.flatten(a.__dask_keys__())]
    fused = {k[0] for k in optimize(graph, keys) if isinstance(k, tuple) and k[0].startswith("add-")}  # (the others:
    # aliases keeping the chains' own names)
    assert len(fused) == 2 and all(len(n) > 120 for n in fused), fused  # whole, not cut to 115 and a hash
    assert {n[-1] for n in fused} == {"1", "2"}
    np.testing.assert_array_equal(dask.compute(*arrays)[1], np.full(4, 6.0))


@pytest.mark.parametrize("trial", range(2))
def test_spectral_norms_of_many_parameters_are_each_their_own(tmp_path, trial):
    """The review's case: 300 ``Linear(2, 2)`` layers, 13 states; one or two layers got another's norms in about
    half the runs. Against numpy on the stored arrays, every layer, twice."""
    import zarr

    torch.manual_seed(trial)
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(300)])
    with trajscope.ModuleRecorder(model, root=tmp_path, name="many") as rec:
        rec.record()
        for _ in range(12):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            rec.record()
    ds = trajscope.open_run(tmp_path / "many.zarr")
    norms = ds.traj.spectral_norms().compute()
    group = zarr.open_group(str(tmp_path / "many.zarr"), mode="r")
    for k in range(300):
        name = f"{k}.weight"
        W = np.asarray(group[name][:], dtype=np.float64)
        np.testing.assert_allclose(norms[name].values, np.linalg.norm(W, 2, axis=(1, 2)), rtol=1e-6, err_msg=name)
