"""Generic quantities against independent numpy / torch.linalg computations, on a module run (MLP and a
conv net, recorded with ModuleRecorder) and on a legacy two-layer dataset (no schema); applicability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import trajscope
from trajscope.analysis import applicable, features, generic
from trajscope.store.errors import UserError

from tests.module.models import record_training


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 5, 3)
        self.fc = torch.nn.Linear(5 * 4 * 4, 3)
        self.scale = torch.nn.Parameter(torch.tensor(1.5))  # a 0-d parameter

    def forward(self, x):
        return self.scale * self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("generic")
    torch.manual_seed(5)
    model, x = ConvNet(), torch.randn(16, 2, 6, 6)
    y = torch.randint(0, 3, (16,))
    record_training(model, x, y, 21, root=root, name="conv", lr=0.2, chunk_mib=0.004)
    ds = trajscope.open_run(root / "conv.zarr")
    params = {n: torch.from_numpy(ds[n].values).double() for n, _ in model.named_parameters()}
    return ds, params


def _values(result: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(result[name].compute().values)


def test_norms_against_torch_linalg(run):
    ds, params = run
    fro = generic.frobenius_norms(ds).compute()
    spec = generic.spectral_norms(ds).compute()
    total = np.zeros(ds.sizes["step"])
    for n, p in params.items():
        flat = p.reshape(len(p), -1) if p.ndim > 1 else p.reshape(len(p), -1)
        np.testing.assert_allclose(fro[n].values, torch.linalg.vector_norm(flat, dim=1).numpy(), rtol=1e-12)
        total += (flat ** 2).sum(1).numpy()
        if p.ndim >= 3:
            mat = p.reshape(p.shape[0], p.shape[1], -1)
            np.testing.assert_allclose(spec[n].values, torch.linalg.matrix_norm(mat, ord=2).numpy(), rtol=1e-10)
        else:
            np.testing.assert_allclose(spec[n].values, torch.linalg.vector_norm(flat, dim=1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(fro["(all)"].values, np.sqrt(total), rtol=1e-12)


def test_singular_values_and_stable_rank_of_every_matrix(run):
    ds, params = run
    sv = generic.param_singular_values(ds).compute()
    sr = generic.param_stable_ranks(ds).compute()
    gram = generic.param_singular_values(ds, method="gram").compute()
    assert set(sv.data_vars) == {"conv.weight", "fc.weight"}  # the matrices (conv read as (out, in·kh·kw))
    for n in sv.data_vars:
        mat = params[n].reshape(params[n].shape[0], params[n].shape[1], -1)
        expected = torch.linalg.svdvals(mat).numpy()
        np.testing.assert_allclose(sv[n].values, expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gram[n].values, expected, rtol=1e-6, atol=1e-7 * expected.max())
        np.testing.assert_allclose(sr[n].values, (expected ** 2).sum(1) / expected[:, 0] ** 2, rtol=1e-10)
        assert sv[n].dims == ("step", f"{n}.sv")


def test_updates_distance_and_row_cosines(run):
    ds, params = run
    sel = slice(3, 17, 2)
    upd = generic.update_norms(ds, sel).compute()
    dist = generic.distance_from_init(ds, sel).compute()
    cos = generic.row_cosines_to_init(ds, sel).compute()
    steps = ds["step"].values
    keep = np.flatnonzero((steps >= 3) & (steps <= 17))[::2]
    tot_u, tot_d = 0.0, 0.0
    for n, p in params.items():
        flat = p.reshape(len(p), -1).numpy()
        u = np.linalg.norm(flat[keep[1:]] - flat[keep[:-1]], axis=1)
        d = np.linalg.norm(flat[keep] - flat[0], axis=1)
        np.testing.assert_allclose(upd[n].values, u, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(upd[n]["step"].values, steps[keep[1:]])
        np.testing.assert_allclose(dist[n].values, d, rtol=1e-12, atol=1e-15)
        tot_u, tot_d = tot_u + u ** 2, tot_d + d ** 2
        if p.ndim >= 3:
            rows = p.reshape(p.shape[0], p.shape[1], -1).numpy()
            c = np.einsum("krc,rc->kr", rows[keep], rows[0]) / (
                np.linalg.norm(rows[keep], axis=2) * np.linalg.norm(rows[0], axis=1))
            np.testing.assert_allclose(cos[n].values, c, rtol=1e-12)
            assert cos[n].dims == ("step", f"{n}.dim0")
    np.testing.assert_allclose(upd["(all)"].values, np.sqrt(tot_u), rtol=1e-12)
    np.testing.assert_allclose(dist["(all)"].values, np.sqrt(tot_d), rtol=1e-12)
    assert set(cos.data_vars) == {"conv.weight", "fc.weight"}


def test_parameter_pattern_and_lazy_results(run):
    ds, _ = run
    out = generic.frobenius_norms(ds, parameter="fc.*, scale")
    # the total over what was picked is not θ's (found by a review: it was labelled "(all)")
    assert set(out.data_vars) == {"fc.weight", "fc.bias", "scale", "(selected)"}
    picked = sum(generic.frobenius_norms(ds, parameter=n)[n].values ** 2 for n in ("fc.weight", "fc.bias", "scale"))
    np.testing.assert_allclose(out["(selected)"].values, np.sqrt(picked), rtol=1e-12)
    whole = generic.frobenius_norms(ds, parameter="*")
    assert "(all)" in whole and "(selected)" not in whole
    assert (whole["(all)"].values > out["(selected)"].values).all()
    for kind in ("param_norms", "param_updates"):  # the figures draw the picked total
        fig = ds.traj.plot(kind, parameter="fc.*")
        assert "(selected)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert out["fc.weight"].chunks is not None  # lazy (dask) until computed
    with pytest.raises(UserError, match="matches none"):
        generic.frobenius_norms(ds, parameter="nope*")


def test_applicability_and_the_accessor(run):
    ds, _ = run
    assert features(ds) == {"parameters", "matrices", "loss"}
    names = set(applicable(ds))
    assert "distance_from_init" in names and "stable_rank" not in names and "t1" not in names
    assert ds.traj.distance_from_init()["(all)"].sizes["step"] == ds.sizes["step"]
    with pytest.raises(UserError, match="needs the two-layer network.s W, v, X and y"):
        ds.traj.stable_rank()
    assert "param_norms" in ds.traj.plot_kinds() and "alignment" not in ds.traj.plot_kinds()
    fig = ds.traj.plot("param_updates")
    assert len(fig.axes) == 2


def test_the_loss_figure_of_a_module_run_draws_its_recorded_loss(run):
    """Found by a review: a ``ModuleRecorder`` run that records its loss had no loss figure ("needs a run with
    two_layer"); it now draws the recorded loss alone."""
    ds, _ = run
    assert "loss" in ds.traj.plot_kinds()
    fig = ds.traj.plot("loss")
    (line,) = [l for l in fig.axes[0].get_lines() if l.get_label() == "loss"]
    np.testing.assert_array_equal(line.get_ydata(), ds["loss"].values.astype(float))
    np.testing.assert_array_equal(line.get_xdata(), ds["step"].values.astype(float))
    vector = ds.assign(loss=ds["loss"].expand_dims(part=2, axis=1))
    with pytest.raises(UserError, match="not a number per state"):
        vector.traj.plot("loss")


def test_a_legacy_two_layer_dataset_gets_both_families(small_run):
    ds = small_run
    assert "schema" not in ds.attrs
    have = features(ds)
    assert {"two_layer", "parameters", "matrices"} <= have
    names = set(applicable(ds))
    assert {"stable_rank", "t1", "frobenius_norms", "row_cosines_to_init"} <= names
    W = ds["W"].values.astype(np.float64)
    np.testing.assert_allclose(generic.param_stable_ranks(ds)["W"].values, ds.traj.stable_rank().values, rtol=1e-6)
    cos = generic.row_cosines_to_init(ds)["W"].values
    expected = (W * W[0]).sum(2) / (np.linalg.norm(W, axis=2) * np.linalg.norm(W[0], axis=1))
    np.testing.assert_allclose(cos, expected, rtol=1e-12)
    assert set(generic.row_cosines_to_init(ds).data_vars) == {"W"}  # v is a vector


def test_a_non_finite_state_gets_nan_singular_values_not_an_error():
    rng = np.random.default_rng(3)
    mats = rng.normal(size=(4, 3, 5))
    mats[2, 1, 4] = np.nan  # a diverged state among finite ones
    da = xr.DataArray(mats, dims=("step", "p.dim0", "p.dim1"), name="p").chunk({"step": 2})
    for method in ("svd", "gram"):
        sv = generic.matrix_singular_values(da, method=method).values
        assert np.isnan(sv[2]).all()
        for k in (0, 1, 3):
            np.testing.assert_allclose(sv[k], np.linalg.svd(mats[k], compute_uv=False), rtol=1e-10)


def test_every_quantitys_series_flag_says_whether_its_result_has_a_step_dim(run, tmp_path, small_config):
    """``series=False`` (no step dim: ``mu``, ``t1``…) is what the API's ``/series`` listing leaves out; each
    applicable quantity is computed on a two-layer run and a module run and its result's dims checked."""
    from trajscope.analysis.registry import is_series
    from trajscope.producer import produce

    produce(small_config(), root=tmp_path, name="tiny")
    checked = {}
    for ds in (trajscope.open_run("tiny", root=tmp_path), run[0]):
        for name, fn in applicable(ds).items():
            result = fn(ds)
            has_step = "step" in getattr(result, "dims", ())
            assert has_step == is_series(fn), f"{name}: result dims {tuple(getattr(result, 'dims', ()))}"
            checked[name] = has_step
    assert {"mu", "t1", "summary", "parameter_summary"} <= {n for n, s in checked.items() if not s}
    assert {"step_series", "distance_from_init", "row_angles"} <= {n for n, s in checked.items() if s}
