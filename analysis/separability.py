"""When can a neuron be in a cone at all? Linear programs on the data (no trajectory needed).

The empirical ``t1`` asks every neuron to sit in its target cone ``S_{sign v_j}`` or in ``S_dead``. Those
sets depend only on the data:

- ``S+ = {z : <x_i, z> > 0 for i ∈ I+, <x_i, z> ≤ 0 for i ∈ I-}`` is non-empty iff some hyperplane through
  the origin has every positive sample strictly on one side and every negative sample on the other side
  or on it (likewise ``S-``). ``μ > 0`` is *sufficient* (``z = Σ_i y_i x_i/||x_i||`` lies in ``S+``) but
  not necessary: centred data with ``μ < 0`` can still have both cones.
- ``S_dead = {z : <x_i, z> ≤ 0 ∀i}`` always holds the directions orthogonal to every sample; a neuron
  reaches it otherwise only if all samples lie in a closed half-space ``<x_i, z> ≤ 0`` with at least one
  strict. Centred data (``Σ_i x_i = 0``) leave only the orthogonal directions: ``Σ_i <x_i, z> = 0``
  forces every term to 0. Gradient flow never changes a neuron's component orthogonal to the data, so a
  neuron with a non-zero projection on the data's span cannot die on centred data.

:func:`cone_margins` decides each case by a linear program (``scipy.optimize.linprog``, HiGHS) on ``X``
and ``y``. It is eager and costs one LP of ``n`` constraints in ``D + 1`` variables per cone (seconds on
MNIST-sized data); the reproduction report calls it only when ``t1`` is not reached.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from trajscope.analysis._common import labels

MARGIN_TOL = 1e-9
"""A cone counts as non-empty when its LP margin exceeds this (relative to ``max_i ||x_i||``), or the
rounding of the stored data if larger (:func:`margin_tolerance`)."""


def margin_tolerance(dtype: np.dtype, n: int, dim: int) -> float:
    """The smallest ``S_dead`` LP margin told apart from 0: ``max(MARGIN_TOL, √(n·D) · eps(dtype))``, relative to
    ``X_max`` (the ``S±`` margins, a minimum over samples rather than a sum, move by about ``√D · eps``:
    :func:`cone_margins` uses ``n = 1`` for them).

    The stored ``X`` is rounded to its dtype (float32 by default). Centred data lying in a subspace (MNIST's
    always-blank pixels) leave it by about ``eps`` once rounded, and the ``S_dead`` LP (``n`` terms, ``z`` in
    ``[-1, 1]^D``) finds a margin of order ``√n · eps`` to ``√(n·D) · eps`` where the exact data have none
    (found by a review: 1.9e-8 on Fig. 5's centred MNIST, 2e-16 once re-centred in float64; 1.8e-6 for
    n = 2000 points of a 10-D subspace of 30 dims, ``test_centred_data_rounded_to_float32_have_no_dead_margin``),
    which must not read as a direction that is not orthogonal to the data.

    Parameters
    ----------
    dtype
        The stored ``X``'s dtype (a non-float dtype adds no rounding).
    n
        Number of terms the margin sums: ``n`` samples for ``S_dead``, 1 for ``S±``.
    dim
        The data's dimension ``D``.

    Returns
    -------
    float
        The tolerance, relative to ``X_max``.
    """
    eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0
    return max(MARGIN_TOL, math.sqrt(max(n, 1) * max(dim, 1)) * eps)


def _max_margin(A_pos: np.ndarray, A_nonpos: np.ndarray) -> float:
    """``max s`` over ``z ∈ [-1, 1]^D``, ``s ≤ 1`` with ``<a, z> ≥ s`` for rows of ``A_pos`` and ``<a, z> ≤ 0``
    for rows of ``A_nonpos`` (``s = 0`` is always feasible)."""
    from scipy.optimize import linprog

    D = A_pos.shape[1] if A_pos.size else A_nonpos.shape[1]
    # variables (z, s); minimise -s; rows: -<a, z> + s ≤ 0 (a in A_pos), <a, z> ≤ 0 (a in A_nonpos)
    rows = [np.hstack([-A_pos, np.ones((A_pos.shape[0], 1))]), np.hstack([A_nonpos, np.zeros((A_nonpos.shape[0], 1))])]
    A = np.vstack(rows)
    c = np.zeros(D + 1)
    c[-1] = -1.0
    bounds = [(-1.0, 1.0)] * D + [(None, 1.0)]
    res = linprog(c, A_ub=A, b_ub=np.zeros(A.shape[0]), bounds=bounds, method="highs")
    if res.status != 0:  # pragma: no cover - the LP is always feasible (z = 0, s = 0) and bounded
        return float("nan")
    return float(-res.fun)


def _dead_margin(X: np.ndarray) -> float:
    """``max -Σ_i <x_i, z>`` over ``z ∈ [-1, 1]^D`` with ``<x_i, z> ≤ 0 ∀i``: positive iff some direction is
    inactive on every sample and strictly negative on one (not merely orthogonal to all data)."""
    from scipy.optimize import linprog

    res = linprog(X.sum(axis=0), A_ub=X, b_ub=np.zeros(X.shape[0]), bounds=[(-1.0, 1.0)] * X.shape[1],
                  method="highs")
    return float(-res.fun) if res.status == 0 else float("nan")


def cone_margins(ds: xr.Dataset) -> xr.Dataset:
    """LP margins of ``S+``, ``S-`` and ``S_dead`` (0-d, relative to ``X_max``; > 0 means reachable).

    - ``S_pos_margin = max{s : <x_i, z> ≥ s (i ∈ I+), <x_i, z> ≤ 0 (i ∈ I-), ||z||_∞ ≤ 1} / X_max``;
      ``S+ ≠ ∅`` iff it is ``> 0``. ``S_neg_margin`` likewise with the classes swapped.
    - ``dead_margin = max{-Σ_i <x_i, z> : <x_i, z> ≤ 0 ∀i, ||z||_∞ ≤ 1} / X_max``; ``> 0`` iff ``S_dead``
      holds a direction that is not orthogonal to every sample (0 for centred data).

    Attrs ``nonempty_S_pos``, ``nonempty_S_neg``, ``nonempty_dead`` (bools, margin > :func:`margin_tolerance`
    of the stored ``X``) and ``margin_tolerance``. The margins are capped at 1 (the LP's bound on ``s``).

    Parameters
    ----------
    ds
        A run's dataset, as opened by ``trajscope.open_run`` (or ``xr.open_zarr`` of a run); only ``X`` and ``y`` are
        read (loaded).

    Returns
    -------
    xr.Dataset
        0-d float64 variables ``S_pos_margin``, ``S_neg_margin`` and ``dead_margin`` (attrs ``kind``, ``units``,
        ``long_name``); dataset attrs ``nonempty_S_pos``, ``nonempty_S_neg``, ``nonempty_dead``, ``margin_tolerance``
        (``S_dead``'s) and ``margin_tolerance_S`` (``S±``'s).
    """
    stored = ds["X"]
    X = np.asarray(stored.values, dtype=np.float64)
    y = labels(ds)
    scale = float(np.linalg.norm(X, axis=1).max()) or 1.0
    Xs = X / scale
    pos, neg = Xs[y > 0], Xs[y < 0]
    margins = {"S_pos_margin": _max_margin(pos, neg), "S_neg_margin": _max_margin(neg, pos),
               "dead_margin": _dead_margin(Xs)}
    out = xr.Dataset({k: xr.DataArray(v) for k, v in margins.items()})
    n, dim = X.shape
    tols = {"dead_margin": margin_tolerance(stored.dtype, n, dim)}  # a sum over the n samples
    tols["S_pos_margin"] = tols["S_neg_margin"] = margin_tolerance(stored.dtype, 1, dim)  # a minimum over them
    out.attrs["margin_tolerance"] = tols["dead_margin"]
    out.attrs["margin_tolerance_S"] = tols["S_pos_margin"]
    for key, name in (("S_pos_margin", "S_pos"), ("S_neg_margin", "S_neg"), ("dead_margin", "dead")):
        out[key].attrs.update(kind="data", units="1", long_name=f"LP margin of {name} (relative to X_max)")
        out.attrs[f"nonempty_{name}"] = bool(margins[key] > tols[key])
    return out


def cone_condition_text(margins: xr.Dataset) -> str:
    """One sentence: which cones the data allow, from :func:`cone_margins`.

    Parameters
    ----------
    margins
        A :func:`cone_margins` dataset.

    Returns
    -------
    str
        The sentence.
    """
    def yes(name: str) -> str:
        return "non-empty" if margins.attrs[f"nonempty_{name}"] else "empty"

    def margin(key: str) -> str:
        value = float(margins[key])
        return "≥ 1, the LP's bound" if value >= 1.0 else f"{value:.3g}"

    return (f"on these data S+ is {yes('S_pos')} (LP margin {margin('S_pos_margin')}), "
            f"S- is {yes('S_neg')} (margin {margin('S_neg_margin')}), and S_dead holds "
            + ("directions that are not orthogonal to every sample" if margins.attrs["nonempty_dead"]
               else "only directions orthogonal to every sample (e.g. centred data), to the precision of the "
                    "stored data"))


CONE_CONDITION = ("t1 needs every neuron in S_(sign v_j) or S_dead; S+ (S-) is non-empty iff a hyperplane "
                  "through the origin puts the positive (negative) samples strictly on one side and the others "
                  "on the other side or on it (μ > 0 is sufficient, not necessary); S_dead holds a direction "
                  "that is not orthogonal to all samples only if the data lie in a closed half-space, never "
                  "for centred data")
"""The actual condition behind ``t1``, written out for reports."""
