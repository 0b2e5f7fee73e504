"""Datasets, configs and their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from trajscope.producer.config import RunConfig, load_config
from trajscope.producer.data import build_dataset, separation
from trajscope.store.errors import UserError
from tests import cli_fork


def brute_force_mu(X, y):
    best = np.inf
    for i in range(len(y)):
        for j in range(len(y)):
            a, b = y[i] * X[i], y[j] * X[j]
            best = min(best, a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return best


@pytest.mark.parametrize("mu", [0.02, 0.1, 0.5])
@pytest.mark.parametrize("n,dim", [(40, 10), (200, 50)])
def test_synthetic_hits_target_mu_within_one_percent(mu, n, dim):
    cfg = load_config({"data": {"n": n, "dim": dim, "mu": mu, "positive_fraction": 0.3, "norm_spread": 0.8}})
    X, y, info = build_dataset(cfg)
    achieved = brute_force_mu(X.astype(np.float64), y)
    assert abs(achieved - mu) <= 0.01 * mu
    assert abs(info["mu"] - achieved) < 1e-5
    assert info["n_pos"] == round(0.3 * n) and info["n_neg"] == n - round(0.3 * n)
    norms = np.linalg.norm(X, axis=1)
    assert norms.min() >= 0.6 - 1e-9 and norms.max() <= 1.4 + 1e-9 and norms.max() - norms.min() > 0.3


def test_synthetic_reports_unreachable_mu():
    with pytest.raises(UserError, match="cannot reach mu"):
        build_dataset(load_config({"data": {"n": 3, "dim": 500, "mu": -0.5}}))


def test_toy2d_is_in_the_plane_and_separable():
    X, y, info = build_dataset(load_config({"data": {"kind": "toy2d", "n": 30}}))
    assert X.shape == (30, 2) and info["mu"] > 0
    angles = np.degrees(np.arctan2(X[:, 1], X[:, 0])) % 360
    assert ((angles[y > 0] >= 30) & (angles[y > 0] <= 90)).all()
    assert ((angles[y < 0] >= 200) & (angles[y < 0] <= 250)).all()


def test_centring_subtracts_the_sample_mean():
    X, _, _ = build_dataset(load_config({"data": {"n": 50, "dim": 5, "mu": 0.1, "center": True}}))
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-12)


def test_npz_data_roundtrip_and_validation(tmp_path):
    path = tmp_path / "d.npz"
    X = np.random.default_rng(0).normal(size=(10, 3))
    y = np.array([1, -1] * 5)
    np.savez(path, X=X, y=y)
    X2, y2, info = build_dataset(load_config({"data": {"kind": "npz", "path": str(path)}}))
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert abs(info["mu"] - separation(X.astype(np.float32), y)) < 1e-12

    cases = {
        "labels": (dict(X=X, y=np.arange(10)), "labels must be \\+1 or -1"),
        "nan": (dict(X=np.where(X > 1, np.nan, X), y=y), "finite"),
        "shape": (dict(X=X, y=y[:7]), "X must be \\(n, D\\)"),
        "missing": (dict(X=X), "lacks y"),
        "oneclass": (dict(X=X, y=np.ones(10)), "both classes"),
        "complex": (dict(X=X + 1j * X, y=y), "X must hold real numbers \\(integers or floats\\), not complex128"),
        "complex labels": (dict(X=X, y=y + 0j), "y must hold real numbers"),
        "text": (dict(X=X.astype(str), y=y), "X must hold real numbers"),
        "booleans": (dict(X=X > 0, y=y), "X must hold real numbers"),
    }
    for name, (arrays, message) in cases.items():
        bad = tmp_path / f"{name}.npz"
        np.savez(bad, **arrays)
        with pytest.raises(UserError, match=message):
            build_dataset(load_config({"data": {"kind": "npz", "path": str(bad)}}))
    with pytest.raises(UserError, match="not found"):
        build_dataset(load_config({"data": {"kind": "npz", "path": str(tmp_path / "nope.npz")}}))
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(UserError, match="is not an .npz archive"):
        build_dataset(load_config({"data": {"kind": "npz", "path": str(tmp_path / "junk.npz")}}))
    import zipfile

    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as archive:  # a zip, but not of arrays numpy can read
        archive.writestr("X.npy", b"not an array")
        archive.writestr("y.npy", b"nor this")
    with pytest.raises(UserError, match="cannot be read"):
        build_dataset(load_config({"data": {"kind": "npz", "path": str(tmp_path / "odd.npz")}}))


def test_every_field_has_a_default_and_overrides_apply(tmp_path):
    assert RunConfig().model.width > 0
    cfg = load_config(None, ["train.lr=0.5", "data.kind=toy2d", "record.every=3", "name=abc"])
    assert cfg.train.lr == 0.5 and cfg.data.kind == "toy2d" and cfg.record.every == 3 and cfg.name == "abc"


@pytest.mark.parametrize(
    "raw,overrides,message",
    [
        ({"train": {"lrr": 1}}, None, "train.lrr: unknown field"),
        ({"train": {"lr": -1}}, None, "train.lr: Input should be greater than 0"),
        ({"data": {"kind": "cifar"}}, None, "data"),
        ({"loss": {"kind": "hinge"}}, None, "loss.kind"),
        ({}, ["train.lr"], "use --set section.field=value"),
        ({"model": {"width": 5}}, ["model.width.x=1"], "'width' is not a section"),
        ({"data": {"n": 10}, "train": {"batch_size": 20}}, None, "batch_size 20 exceeds data.n 10"),
    ],
)
def test_bad_configs_give_one_line_errors(raw, overrides, message):
    with pytest.raises(UserError) as info:
        load_config(raw, overrides)
    text = str(info.value)
    assert "\n" not in text
    assert message in text


def test_cli_prints_one_line_errors(tmp_path, python_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 10, lr: [1, 2]}\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {steps: 10\n")
    for args, message in [
        ([str(bad)], "train.lr"),
        ([str(broken)], "not valid YAML"),
        ([str(tmp_path / "missing.yaml")], "not found"),
        ([str(bad), "--set", "train.lr=0.1", "--name", "../x"], "invalid run id"),
    ]:
        proc = cli_fork.run(["produce", *args, "--root", str(tmp_path / "r")], env=python_env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("trajscope: error:") and message in lines[0], proc.stderr
