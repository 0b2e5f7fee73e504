"""Training data: ``synthetic`` (target separation μ), ``toy2d``, ``npz`` (user arrays), ``mnist`` and
``two_point`` (the paper's two-point separability study).

Every builder returns ``X`` (n, D) float64 and ``y`` (n,) int8 in {+1, -1}; :func:`build_dataset`
applies the optional centring ``x_i <- x_i - mean_i x_i`` and reports the data's geometry.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from trajscope.producer.config import MnistData, NpzData, RunConfig, SyntheticData, Toy2DData, TwoPointData
from trajscope.store.errors import UserError


def separation(X: np.ndarray, y: np.ndarray) -> float:
    """``μ = min_{i,j} <y_i x_i, y_j x_j> / (||x_i|| ||x_j||)`` (Assumption 1 holds iff μ > 0)."""
    z = (y[:, None] * X).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return float((z @ z.T).min())


def _norms(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    return rng.uniform(1.0 - spread / 2.0, 1.0 + spread / 2.0, size=n)


def _labels(n: int, positive_fraction: float) -> np.ndarray:
    n_pos = int(round(n * positive_fraction))
    n_pos = min(max(n_pos, 1), n - 1)
    return np.concatenate([np.ones(n_pos), -np.ones(n - n_pos)]).astype(np.int8)


def synthetic(cfg: SyntheticData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated data with ``min_{i,j} cos(y_i x_i, y_j x_j) = μ``.

    ``z_i = a e + sqrt(1 - a²) u_i`` with ``u_i ⟂ e`` random unit vectors: ``cos(z_i, z_j) = a² +
    (1 - a²) <u_i, u_j>``, so with ``m = min_{i≠j} <u_i, u_j>`` the choice ``a² = (μ - m) / (1 - m)``
    makes the minimum exactly μ. Needs ``m < μ`` (true unless ``n`` is tiny and ``D`` huge).
    """
    rng = np.random.default_rng(seed)
    n, dim = cfg.n, cfg.dim
    y = _labels(n, cfg.positive_fraction)
    e = np.zeros(dim)
    e[0] = 1.0
    u = rng.standard_normal((n, dim))
    u[:, 0] = 0.0
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    gram = u @ u.T
    np.fill_diagonal(gram, np.inf)
    m = gram.min()
    if m >= cfg.mu:
        raise UserError(
            f"synthetic data: cannot reach mu={cfg.mu} with n={n}, dim={dim} (random directions are "
            f"already {m:.3f} apart); raise data.mu above {m:.3f}, raise data.n or lower data.dim"
        )
    a = np.sqrt((cfg.mu - m) / (1.0 - m))
    z = a * e + np.sqrt(1.0 - a**2) * u
    X = y[:, None] * z * _norms(rng, n, cfg.norm_spread)[:, None]
    return X, y


def toy2d(cfg: Toy2DData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points in the plane at random angles inside the two configured arcs (degrees)."""
    rng = np.random.default_rng(seed)
    y = _labels(cfg.n, 0.5)
    lo = np.where(y > 0, cfg.positive_degrees[0], cfg.negative_degrees[0])
    hi = np.where(y > 0, cfg.positive_degrees[1], cfg.negative_degrees[1])
    theta = np.deg2rad(rng.uniform(lo, hi))
    X = np.stack([np.cos(theta), np.sin(theta)], axis=1) * _norms(rng, cfg.n, cfg.norm_spread)[:, None]
    return X, y


def npz(cfg: NpzData) -> tuple[np.ndarray, np.ndarray]:
    """User arrays ``X`` (n, D) and ``y`` (n,) with labels ±1, validated."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise UserError(f"npz data file {path} not found: set data.path to an .npz holding X (n, D) and y (n,)")
    if not zipfile.is_zipfile(path):  # (np.load took a text file for a pickle and talked of allow_pickle)
        raise UserError(f"npz data file {path} is not an .npz archive: save X and y with numpy.savez(path, X=X, y=y)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"X", "y"} - set(archive.files)
            if missing:
                raise UserError(f"npz data file {path} lacks {', '.join(sorted(missing))}: it must hold arrays X and y")
            X, y = archive["X"], archive["y"]
        if not (isinstance(X, np.ndarray) and isinstance(y, np.ndarray)):  # (a member that is no .npy: its bytes)
            raise ValueError("X and y are not both arrays")
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as exc:  # (a .npy file: np.load gives an array)
        raise UserError(f"npz data file {path} cannot be read ({exc}); save it with numpy.savez(path, X=X, y=y)") from None
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise UserError(f"npz data {path}: X must be (n, D) and y (n,) with n >= 2; got X {X.shape}, y {y.shape}")
    for name, array in (("X", X), ("y", y)):  # (complex numbers would lose their imaginary part)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise UserError(f"npz data {path}: {name} must hold real numbers (integers or floats), not {array.dtype}")
    if not np.isfinite(X).all():
        raise UserError(f"npz data {path}: X must be finite numbers (found NaN or inf)")
    labels = set(np.unique(y).tolist())
    if not labels <= {1, -1}:
        raise UserError(f"npz data {path}: labels must be +1 or -1, found {sorted(labels)[:5]}")
    if len(labels) < 2:
        raise UserError(f"npz data {path}: both classes +1 and -1 are needed")
    return X.astype(np.float64), y.astype(np.int8)


def mnist(cfg: MnistData, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two MNIST digits (see :mod:`trajscope.producer.mnist`)."""
    from trajscope.producer.mnist import load_mnist_pair

    X, y = load_mnist_pair(tuple(cfg.digits), path=cfg.path, per_class=cfg.per_class, seed=seed, split=cfg.split)
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int8)


def two_point(cfg: TwoPointData) -> tuple[np.ndarray, np.ndarray]:
    """``x1 = r1 e1`` (y = +1) and ``x2 = -r2 (sin(angle) e1 + cos(angle) e2)`` (y = -1), so that
    ``cos(y1 x1, y2 x2) = sin(angle) = μ``."""
    X = np.zeros((2, cfg.dim))
    X[0, 0] = cfg.norms[0]
    X[1, 0] = -cfg.norms[1] * np.sin(cfg.angle)
    X[1, 1] = -cfg.norms[1] * np.cos(cfg.angle)
    return X, np.array([1, -1], dtype=np.int8)


class DataWarning(UserWarning):
    """Something about the training data that the user should know before trusting the run's numbers."""


MU_TOLERANCE = 0.01
"""Relative gap between requested and achieved ``μ`` above which a run warns (the generator's promise)."""


def requested_mu(cfg: Any) -> float | None:
    """The separation the config asks for: ``data.mu`` (synthetic), ``sin(angle)`` (two-point), else None."""
    if isinstance(cfg, SyntheticData):
        return float(cfg.mu)
    if isinstance(cfg, TwoPointData):
        return math.sin(cfg.angle)
    return None


def mu_warning(requested: float | None, achieved: float, centred: bool) -> str | None:
    """One line when centring moved ``μ`` more than :data:`MU_TOLERANCE` (relative) from the requested value."""
    if not centred or requested is None or abs(achieved - requested) <= MU_TOLERANCE * abs(requested):
        return None
    return (f"data.center changed μ: the config asks for μ = {requested:.4g}, the run trains on μ = {achieved:.4g} "
            "(centring moves every sample); set data.center: false to keep the requested μ")


def build_dataset(config: RunConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Build ``X``, ``y`` for a run and describe them (n, D, n±, achieved μ, norms).

    ``info`` also records ``mu_requested`` (the config's target, or None), ``centred`` and ``warnings``
    (one-line texts, also raised as :class:`DataWarning`): today, centring that moved ``μ`` away from the
    requested value — centring changes every sample, so a synthetic config asking for ``μ = 0.07`` with
    ``center: true`` can train on ``μ < 0``.
    """
    cfg = config.data
    seed = cfg.seed if getattr(cfg, "seed", None) is not None else config.seed
    if isinstance(cfg, SyntheticData):
        X, y = synthetic(cfg, seed)
    elif isinstance(cfg, Toy2DData):
        X, y = toy2d(cfg, seed)
    elif isinstance(cfg, NpzData):
        X, y = npz(cfg)
    elif isinstance(cfg, TwoPointData):
        X, y = two_point(cfg)
    else:
        X, y = mnist(cfg, seed)
    if cfg.center:
        X = X - X.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(X, axis=1)
    if (norms == 0).any():
        raise UserError("the data hold a zero vector (after centring?); remove it or disable data.center")
    info = {
        "n": int(X.shape[0]),
        "dim": int(X.shape[1]),
        "n_pos": int((y > 0).sum()),
        "n_neg": int((y < 0).sum()),
        "mu": separation(X.astype(np.float32), y),
        "x_min": float(norms.min()),
        "x_max": float(norms.max()),
        "mu_requested": requested_mu(cfg),
        "centred": bool(cfg.center),
    }
    warning = mu_warning(info["mu_requested"], info["mu"], info["centred"])
    info["warnings"] = [warning] if warning else []
    for text in info["warnings"]:
        warnings.warn(text, DataWarning, stacklevel=2)
    return X, y, info
