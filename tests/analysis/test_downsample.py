"""Min–max downsampling and per-neuron angles against direct (loop / numpy) computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from trajscope.analysis.downsample import bucket_index, columns, minmax_downsample
from trajscope.analysis.neurons import neuron_angles


def direct(x: np.ndarray, y: np.ndarray, points: int, scale: str) -> tuple[list, list]:
    """One bucket at a time, with plain Python: bucket by the formula, then min/max in time order."""
    u = [math.log1p(v - x[0]) if scale == "log" else float(v - x[0]) for v in x]
    buckets: dict[int, list[int]] = {}
    for i, ui in enumerate(u):
        buckets.setdefault(min(points - 1, math.floor(points * ui / u[-1])), []).append(i)
    xs, rows = [], []
    for b in sorted(buckets):
        idx = buckets[b]
        xs.append(x[idx[0]])
        if len(idx) > 1:
            xs.append(x[idx[-1]])
        row_a, row_b = [], []
        for s in range(y.shape[1]):
            col = [(y[i, s], i) for i in idx if not math.isnan(y[i, s])]
            if not col:
                row_a.append(math.nan)
                row_b.append(math.nan)
                continue
            lo = min(col)  # (value, first index) for ties
            hi = max(col, key=lambda p: (p[0], -p[1]))
            first, second = (lo, hi) if lo[1] <= hi[1] else (hi, lo)
            row_a.append(first[0])
            row_b.append(second[0])
        rows.append(row_a)
        if len(idx) > 1:
            rows.append(row_b)
    return xs, rows


@pytest.mark.parametrize("scale", ["linear", "log"])
@pytest.mark.parametrize("n,points", [(1000, 37), (5003, 200), (300, 149)])
def test_minmax_equals_a_direct_loop(scale, n, points):
    rng = np.random.default_rng(n + points)
    x = np.sort(rng.choice(10 * n, size=n, replace=False)).astype(np.int64)
    y = rng.normal(size=(n, 3)).cumsum(axis=0)
    y[rng.integers(0, n, 5), 1] = np.nan
    y[: n // 10, 2] = np.nan  # whole buckets of NaN at the start
    y[rng.integers(0, n, 4), 0] = rng.integers(-1, 2, 4)  # exact ties with neighbours are rare; force some
    out = minmax_downsample(x, y, points, scale)
    xs, rows = direct(x, y, points, scale)
    assert not out.exact
    assert out.x.tolist() == xs
    np.testing.assert_array_equal(out.values, np.array(rows))
    assert len(out.x) <= 2 * points


def test_a_one_step_spike_survives_and_short_series_are_returned_unchanged():
    x = np.arange(100_000)
    y = np.exp(-x / 3e4)
    y[61_234] = 50.0
    out = minmax_downsample(x, y, 100)
    at = int(np.flatnonzero(out.values == 50.0)[0])  # drawn at an edge of the spike's bucket
    assert out.x[at - at % 2] <= 61_234 <= out.x[at - at % 2 + 1]
    assert len(out.x) <= 200 and out.x[0] == 0 and out.x[-1] == 99_999
    same = minmax_downsample(x[:150], y[:150], 100)
    assert same.exact and np.array_equal(same.x, x[:150]) and np.array_equal(same.values, y[:150])


def test_log_buckets_keep_early_steps_apart():
    x = np.arange(10_001)
    lin = np.bincount(bucket_index(x, 50, "linear"))
    log = np.bincount(bucket_index(x, 50, "log"))
    assert lin[0] == 200 and log[0] == 1  # step 0 alone in the first log bucket
    assert (log[:10] <= 1).all() and log[-1] > 100  # early steps one per bucket, late ones pooled
    with pytest.raises(ValueError, match="scale"):
        bucket_index(x, 50, "squared")


def test_columns_flatten_other_dims_and_drop_static_variables():
    da = xr.DataArray(np.arange(12.0).reshape(4, 3), dims=("step", "cone"),
                      coords={"cone": ["S+", "S-", "dead"]}, name="cone_fractions")
    ds = xr.Dataset({"mean": (("label", "step"), np.ones((2, 4))), "n": ((), 3.0)}, coords={"label": [1, -1]})
    assert list(columns(da, "x")) == ["cone_fractions[S+]", "cone_fractions[S-]", "cone_fractions[dead]"]
    np.testing.assert_array_equal(columns(da, "x")["cone_fractions[S-]"], [1, 4, 7, 10])
    assert list(columns(ds, "x")) == ["mean[+1]", "mean[-1]"]


def test_neuron_angles_match_numpy(small_run):
    ds = small_run
    step = slice(100, 900, 7)
    got = neuron_angles(ds.isel(neuron=[0, 3, 7]), step).compute()
    sel = ds.sel(step=slice(100, 900)).isel(step=slice(None, None, 7))
    W = sel["W"].values[:, [0, 3, 7]].astype(np.float64)
    v = sel["v"].values[:, [0, 3, 7]]
    X, y = ds["X"].values.astype(np.float64), ds["y"].values
    target = np.where(v[..., None] > 0, X[y > 0].sum(0), X[y < 0].sum(0))
    cos = (W * target).sum(-1) / np.linalg.norm(W, axis=-1) / np.linalg.norm(target, axis=-1)
    np.testing.assert_allclose(got["to_target"].values, np.degrees(np.arccos(np.clip(cos, -1, 1))), atol=1e-6)
    W0 = ds["W"].values[0, [0, 3, 7]].astype(np.float64)
    cos0 = (W * W0).sum(-1) / np.linalg.norm(W, axis=-1) / np.linalg.norm(W0, axis=-1)
    np.testing.assert_allclose(got["to_init"].values, np.degrees(np.arccos(np.clip(cos0, -1, 1))), atol=1e-6)
    assert "polar" not in got  # D = 5


def test_neuron_angles_in_the_plane():
    W = np.array([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [-1.0, -1.0]]], dtype=np.float32)  # (step, neuron, 2)
    ds = xr.Dataset({"W": (("step", "neuron", "feature"), W), "v": (("step", "neuron"), np.ones((2, 2))),
                     "X": (("sample", "feature"), np.array([[1.0, 0.0], [-1.0, 0.0]])),
                     "y": (("sample",), np.array([1, -1], dtype=np.int8))}, coords={"step": [0, 1]})
    got = neuron_angles(ds).compute()
    np.testing.assert_allclose(got["polar"].values, [[0, 90], [90, -135]])
    np.testing.assert_allclose(got["to_init"].values, [[0, 0], [90, 135]], atol=1e-6)
    np.testing.assert_allclose(got["to_target"].values, [[0, 90], [90, 135]], atol=1e-6)
