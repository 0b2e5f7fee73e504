"""Numpy kernels applied to one time chunk of ``W`` at a time (through ``xr.apply_ufunc``).

Each kernel bounds its temporaries by working on sub-batches of steps, so memory stays a few chunks
whatever the number of samples.
"""

from __future__ import annotations

import functools

import numpy as np

from trajscope.analysis._blas import single_threaded

_TEMP_ELEMENTS = 4_000_000  # size of the largest temporary (elements) a kernel allocates


def _kernel(fn):
    """A kernel runs with one BLAS thread (dask's threads are the parallelism: found by a review, a multi-threaded
    OpenBLAS under them was 10-90x slower) and without numpy's floating-point warnings: a diverged state's inf and
    NaN give NaN results, which the analyses report as such (found by a review: "invalid value encountered in
    matmul" on stderr of the CLI and in the server's log)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded(), np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def _batches(k: int, per_step: int):
    per = max(1, _TEMP_ELEMENTS // max(1, per_step))
    for s in range(0, k, per):
        yield slice(s, min(k, s + per))


@_kernel
def activation_counts_block(W: np.ndarray, X: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """``(k, h, D), (n, D), (n, 2) -> (k, h, 2)``: ``Σ_{i∈I±} 1[<x_i, w_j> > 0]`` per step and neuron."""
    k, h, _ = W.shape
    dtype = np.result_type(W.dtype, X.dtype)
    Xt = np.ascontiguousarray(X.astype(dtype, copy=False).T)
    oh = onehot.astype(np.float32, copy=False)
    out = np.empty((k, h, 2), np.int32)
    for b in _batches(k, h * X.shape[0]):
        P = W[b].astype(dtype, copy=False) @ Xt
        out[b] = np.rint((P > 0).astype(np.float32) @ oh).astype(np.int32)
    return out


@_kernel
def singular_values_block(W: np.ndarray, method: str = "gram") -> np.ndarray:
    """``(k, h, D) -> (k, min(h, D))`` singular values of each ``W(t)``, descending.

    ``method="gram"``: square roots of the eigenvalues of ``W Wᵀ`` (or ``Wᵀ W``), computed in float64
    (fast; absolute accuracy about ``1e-8 σ_1``). ``method="svd"``: batched ``numpy.linalg.svd``.
    """
    W64 = W.astype(np.float64, copy=False)
    k, h, D = W.shape
    finite = np.isfinite(W64).all(axis=(1, 2))
    if not finite.all():  # a diverged state has no spectrum: NaN there, the others as usual
        out = np.full((k, min(h, D)), np.nan)
        if finite.any():
            out[finite] = singular_values_block(W64[finite], method)
        return out
    if method == "svd":
        return np.linalg.svd(W64, compute_uv=False)
    out = np.empty((k, min(h, D)), np.float64)
    for b in _batches(k, h * D):
        Wb = W64[b]
        WbT = Wb.transpose(0, 2, 1)
        G = Wb @ WbT if h <= D else WbT @ Wb
        ev = np.linalg.eigvalsh(G)[..., ::-1]
        out[b] = np.sqrt(np.clip(ev, 0.0, None))
    return out


@_kernel
def direction_field_block(
    W0: np.ndarray, W1: np.ndarray, v0: np.ndarray, dt: np.ndarray, X: np.ndarray, y: np.ndarray,
    coef: float,
) -> np.ndarray:
    """Relative error of the early-phase direction field, per step and neuron: ``(k, h)``.

    measured ``m_j = (u_j(t+dt) - u_j(t)) / dt`` with ``u_j = w_j/||w_j||``; predicted
    ``p_j = coef · (v_j/||w_j||) · P_{w_j} x_a(w_j)``; error ``||m_j - p_j|| / ||p_j||`` (NaN where
    ``p_j = 0`` or ``w_j = 0``).
    """
    k, h, _ = W0.shape
    X64 = X.astype(np.float64, copy=False)
    y64 = y.astype(np.float64, copy=False)
    out = np.empty((k, h), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for b in _batches(k, h * max(X.shape[0], X.shape[1])):
            w0 = W0[b].astype(np.float64, copy=False)
            w1 = W1[b].astype(np.float64, copy=False)
            n0 = np.linalg.norm(w0, axis=-1, keepdims=True)
            n1 = np.linalg.norm(w1, axis=-1, keepdims=True)
            u0, u1 = w0 / n0, w1 / n1
            meas = (u1 - u0) / dt[b, None, None]
            A = ((w0 @ X64.T) > 0).astype(np.float64)  # (b, h, n)
            xa = (A * y64) @ X64  # (b, h, D)
            proj = xa - u0 * np.sum(u0 * xa, axis=-1, keepdims=True)
            pred = coef * (v0[b, :, None] / n0) * proj
            pn = np.linalg.norm(pred, axis=-1)
            err = np.linalg.norm(meas - pred, axis=-1) / pn
            out[b] = np.where((pn > 0) & np.isfinite(err), err, np.nan)
    return out


@_kernel
def neuron_stats_block(W: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``(k, h, D), (2, D) -> (k, h, 3)``: ``[||w_j||², <w_j, x+>, <w_j, x->]`` in float64, one pass."""
    k, h, _ = W.shape
    S64 = np.ascontiguousarray(S.astype(np.float64, copy=False).T)
    out = np.empty((k, h, 3), np.float64)
    for b in _batches(k, 2 * h * W.shape[2]):
        w = W[b].astype(np.float64, copy=False)
        out[b, :, 0] = np.einsum("khd,khd->kh", w, w)
        out[b, :, 1:] = w @ S64
    return out


@_kernel
def class_mean_block(W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(k, h, D), (k, h) -> (k, 2, D)``: mean neurons ``w̄± = mean_{j: ±v_j > 0} w_j`` (NaN if none)."""
    k, h, D = W.shape
    out = np.empty((k, 2, D), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for b in _batches(k, 2 * h * D):
            m = np.stack([v[b] > 0, v[b] < 0], axis=1).astype(np.float64)  # (b, 2, h)
            out[b] = (m @ W[b].astype(np.float64, copy=False)) / m.sum(-1, keepdims=True)
    return out
