"""Row directions of any matrix parameter (the dashboard's neuron view) against direct numpy, and the
registry entries of the dashboard's series (declared where they are defined, with ``pointwise``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trajscope
from trajscope.analysis import QUANTITIES, neurons
from trajscope.store.errors import UserError

from tests.module.models import record_training


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 2)  # (3, 1, 2, 2): rows of 4 entries over three own axes
        self.plane = torch.nn.Linear(2, 5)  # (5, 2): rows in the plane
        self.out = torch.nn.Linear(5, 2)

    def forward(self, x):
        z = torch.relu(self.conv(x)).mean((2, 3))[:, :2]
        return self.out(torch.tanh(self.plane(z)))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    torch.manual_seed(7)
    model, x = Net(), torch.randn(12, 1, 3, 3)
    y = torch.randint(0, 2, (12,))
    record_training(model, x, y, 17, root=root, name="rows", lr=0.3, chunk_mib=0.001)
    return trajscope.open_run(root / "rows.zarr")


def _angles_to_init(P: np.ndarray) -> np.ndarray:
    flat = P.reshape(P.shape[0], P.shape[1], -1).astype(np.float64)
    out = np.empty(flat.shape[:2])
    for k in range(flat.shape[0]):
        for j in range(flat.shape[1]):
            a, b = flat[k, j], flat[0, j]
            c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            out[k, j] = np.degrees(np.arccos(min(1.0, max(-1.0, c))))
    return out


@pytest.mark.parametrize("name", ["conv.weight", "plane.weight", "out.weight"])
def test_angle_to_initial_direction_equals_numpy(ds, name):
    got = neurons.row_angles(ds, parameter=name).compute()
    P = ds[name].values
    np.testing.assert_allclose(got["to_init"].values, _angles_to_init(P), atol=1e-6)
    assert got["to_init"].dims == ("step", f"{name}.dim0")
    sub = neurons.row_angles(ds, slice(5, 9), parameter=name).compute()  # t0 stays the run's first state
    np.testing.assert_allclose(sub["to_init"].values, _angles_to_init(P)[5:10], atol=1e-6)
    assert ("polar" in got) == (name == "plane.weight")


def test_polar_angle_of_rows_in_the_plane(ds):
    got = neurons.row_angles(ds, parameter="plane.weight").compute()
    P = ds["plane.weight"].values.astype(np.float64)
    np.testing.assert_allclose(got["polar"].values, np.degrees(np.arctan2(P[..., 1], P[..., 0])), atol=1e-9)


def test_default_parameter_and_errors(ds):
    first = neurons.row_angles(ds).compute()
    assert first.attrs["parameter"] == "conv.weight"
    with pytest.raises(UserError, match="conv.weight"):
        neurons.row_angles(ds, parameter="conv.bias")


def test_two_layer_W_rows_are_the_neuron_angles(random_run):
    ds = random_run
    got = neurons.row_angles(ds, parameter="W").compute()
    ref = neurons.neuron_angles(ds).compute()
    assert set(got.data_vars) == set(ref.data_vars) >= {"to_target", "to_init"}
    W = ds["W"].values.astype(np.float64)
    np.testing.assert_allclose(got["to_init"].values, _angles_to_init(W), atol=1e-6)
    # to_target: the angle to x_sign(v_j), x± the class sums
    X, y, v = ds["X"].values.astype(np.float64), ds["y"].values, ds["v"].values
    xs = {1: X[y > 0].sum(0), -1: X[y < 0].sum(0)}
    for k in (0, W.shape[0] - 1):
        for j in range(W.shape[1]):
            if v[k, j] == 0:
                continue
            x = xs[1 if v[k, j] > 0 else -1]
            c = W[k, j] @ x / (np.linalg.norm(W[k, j]) * np.linalg.norm(x))
            assert got["to_target"].values[k, j] == pytest.approx(np.degrees(np.arccos(np.clip(c, -1, 1))), abs=1e-6)


def test_dashboard_series_are_registered_where_defined():
    from trajscope.analysis import generic, series
    from trajscope.analysis.registry import is_pointwise

    assert QUANTITIES["step_series"] is series.step_series and QUANTITIES["neuron_angles"] is neurons.neuron_angles
    assert QUANTITIES["row_angles"] is neurons.row_angles
    for name in ("step_series", "neuron_angles", "row_angles", "singular_values", "update_norms", "distance_from_init"):
        assert is_pointwise(QUANTITIES[name], {}), name
    assert not is_pointwise(QUANTITIES["loss_envelope"], {})  # its t2 reads the whole loss
    assert not is_pointwise(series.step_series, {"detail": "last"})  # filled at each dask chunk's last step
    assert is_pointwise(generic.frobenius_norms, {})
