"""What the data were (issue 14): centring that moves μ is warned about at produce time and in ``show``;
MNIST's ``train50k`` split is the first 50 000 training images."""

from __future__ import annotations

import gzip
import struct
import warnings

import numpy as np
import pytest
import xarray as xr
import yaml

from trajscope.analysis.summary import data_warnings
from trajscope.producer.config import load_config
from trajscope.producer.data import DataWarning, build_dataset, separation
from trajscope.producer.mnist import load_mnist_pair, load_mnist_raw
from trajscope.store.errors import UserError
from tests import cli_fork

CENTRED = {"n": 20, "dim": 5, "mu": 0.07, "positive_fraction": 0.6, "center": True}


def test_centring_that_moves_mu_warns_with_both_values():
    with pytest.warns(DataWarning) as caught:
        X, y, info = build_dataset(load_config({"data": CENTRED}))
    achieved = separation(X.astype(np.float32), y)
    assert info["mu"] == achieved < 0 and info["mu_requested"] == 0.07 and info["centred"] is True
    (text,) = info["warnings"]
    assert str(caught[0].message) == text
    assert "μ = 0.07" in text and f"μ = {achieved:.4g}" in text and "data.center: false" in text
    # without centring the generator hits the target: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        _, _, plain = build_dataset(load_config({"data": {**CENTRED, "center": False}}))
    assert plain["warnings"] == [] and abs(plain["mu"] - 0.07) <= 0.01 * 0.07


def test_show_rule_also_covers_runs_recorded_before_the_warning_existed():
    def ds(info, data):
        return xr.Dataset(attrs={"config": {"data": data}, "data_info": info})

    old = ds({"mu": -0.19}, {"kind": "synthetic", "mu": 0.07, "center": True})
    (text,) = data_warnings(old)
    assert "0.07" in text and "-0.19" in text
    assert data_warnings(ds({"mu": 0.0701}, {"kind": "synthetic", "mu": 0.07, "center": True})) == []
    assert data_warnings(ds({"mu": -0.2}, {"kind": "synthetic", "mu": 0.07, "center": False})) == []
    assert data_warnings(ds({"mu": -0.2, "warnings": []}, {"kind": "synthetic", "mu": 0.07, "center": True})) == []


def test_cli_produce_and_show_print_the_warning(tmp_path, python_env):
    config = {"data": {"kind": "synthetic", **CENTRED}, "model": {"width": 4}, "train": {"steps": 20, "lr": 0.1},
              "record": {"chunk_mib": 0.002}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    root = str(tmp_path / "runs")
    proc = cli_fork.run(["produce", str(path), "--root", root, "--name", "centred", "-q"], env=python_env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "data.center changed μ" in line]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "μ = 0.07" in lines[0], proc.stderr
    show = cli_fork.run(["show", "centred", "--root", root], env={**python_env, "COLUMNS": "300"}, timeout=300)
    assert show.returncode == 0, show.stderr
    assert "warning: data.center changed μ" in show.stdout and "μ = 0.07" in show.stdout
    assert "config asked for 0.07" in show.stdout


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_train50k_is_the_first_50000_training_images(tmp_path):
    rng = np.random.default_rng(0)
    n = 60_000
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, :4] = np.arange(n, dtype=np.uint32).view(np.uint8).reshape(n, 4)  # each image names its index
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels))
    full, full_labels, _ = load_mnist_raw("train", path=tmp_path)
    x50, y50, _ = load_mnist_raw("train50k", path=tmp_path)
    assert full.shape == (60_000, 784) and x50.shape == (50_000, 784)
    np.testing.assert_array_equal(x50, full[:50_000])
    np.testing.assert_array_equal(y50, full_labels[:50_000])
    X, y = load_mnist_pair((0, 1), path=str(tmp_path), split="train50k")
    k = np.rint(X[:, :4] * 255).astype(np.uint8)  # pixels are k / 255: the first 4 bytes name the image
    idx = np.ascontiguousarray(k).view(np.uint32).ravel()
    expect = np.concatenate([np.flatnonzero(labels[:50_000] == 0), np.flatnonzero(labels[:50_000] == 1)])
    np.testing.assert_array_equal(idx, expect)
    assert (y[: (labels[:50_000] == 0).sum()] == 1).all() and (y[(labels[:50_000] == 0).sum():] == -1).all()
    assert load_config({"data": {"kind": "mnist", "split": "train50k"}}).data.split == "train50k"
    small = tmp_path / "small"
    small.mkdir()
    (small / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images[:100])))
    (small / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels[:100])))
    with pytest.raises(UserError, match="train50k"):
        load_mnist_raw("train50k", path=small)
    with pytest.raises(UserError, match="'train', 'train50k' or 'test'"):
        load_mnist_raw("valid", path=small)


def test_mnist_default_is_all_60k_training_images_scaled_by_255():
    cfg = load_config({"data": {"kind": "mnist"}}).data
    assert cfg.split == "train" and cfg.per_class is None and cfg.center is True
    from trajscope.producer import mnist

    assert "60 000" in mnist.__doc__ and "k / 255" in mnist.__doc__
