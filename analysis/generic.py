"""Generic quantities of any recorded model: norms, spectra, update sizes, drift from initialization.

They apply to every run with recorded parameters (role ``parameter`` in the run's schema; a two-layer
run's ``W`` and ``v``). Each returns a lazy ``xr.Dataset`` with one variable per parameter (its recorded
name, dots included), computed chunk by chunk in float64, so memory stays bounded by a few time chunks.
``parameter`` (an ``fnmatch`` pattern, or several separated by commas; default all) restricts the
parameters. :data:`TOTAL` names the whole parameter vector ``θ`` where a quantity has one (:data:`SELECTED` the
parameters ``parameter`` picked, when it leaves some out).

Matrices: a parameter with two or more dims besides ``step`` is read as the matrix ``P`` of shape
``(d0, d1·d2·…)`` — rows are its first axis (the output units of ``nn.Linear``, the output channels of a
convolution). A vector's spectral norm is its Euclidean norm.
"""

from __future__ import annotations

import fnmatch
import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select
from trajscope.analysis._kernels import _kernel
from trajscope.analysis.registry import MATRICES, PARAMETERS, doc_entries, parameter_names, quantity
from trajscope.store.errors import UserError

#: the variable that holds a quantity of the whole parameter vector ``θ = (θ_p)_p``
TOTAL = "(all)"
#: the same over the parameters a ``parameter`` pattern picked, when it leaves some out (not ``θ``)
SELECTED = "(selected)"
STEP = "step"
_PATTERN = ("``fnmatch`` pattern, or several separated by commas, restricting the {} (``\"\"``, the default: all); "
            "one that matches none of them raises :class:`~trajscope.store.errors.UserError`.")
#: the docstring entries of ``parameter``, for the quantities of every parameter and those of the matrix ones
PARAMETER_ENTRY = ("parameter", _PATTERN.format("parameters"))
MATRIX_PARAMETER_ENTRY = ("parameter", _PATTERN.format("matrix parameters"))


def parameters(ds: xr.Dataset, parameter: str = "", *, matrices: bool = False) -> list[str]:
    """Recorded parameters matching ``parameter`` (comma-separated ``fnmatch`` patterns; ``""``: all);
    ``matrices``: those with at least 2 dims besides ``step``, none of them empty (a ``(0, 3)`` parameter has no
    singular value: found by a review, it made the spectra of the whole run raise).

    Parameters
    ----------
    ds
        A run's dataset (its schema and the dims of its parameters are read).
    parameter
        ``fnmatch`` pattern, or several separated by commas (``""``, the default: every parameter).
    matrices
        Keep only the matrix parameters (at least two non-empty dims besides ``step``).

    Returns
    -------
    list of str
        Names of the matching parameters in schema order (empty for a run without parameters when ``parameter`` is
        ``""``).

    Raises
    ------
    UserError
        When ``parameter`` matches none of the run's (matrix) parameters.
    """
    names = parameter_names(ds)
    if matrices:
        names = [n for n in names if ds[n].ndim >= 3 and all(ds.sizes[d] > 0 for d in ds[n].dims[1:])]
    if parameter:
        patterns = [p.strip() for p in parameter.split(",") if p.strip()]
        picked = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not picked:
            kind = "matrix parameters" if matrices else "parameters"
            raise UserError(f"parameter={parameter!r} matches none of the run's {kind}: "
                            f"{', '.join(names) or 'none'}")
        names = picked
    return names


def total_name(ds: xr.Dataset, names: list[str]) -> str:
    """:data:`TOTAL` when ``names`` are all of the run's parameters, else :data:`SELECTED`."""
    return TOTAL if set(names) == set(parameter_names(ds)) else SELECTED


def _own(da: xr.DataArray) -> list[str]:
    return [d for d in da.dims if d != STEP]


def _f64(da: xr.DataArray) -> xr.DataArray:
    return da.astype(np.float64)


def _sum_sq(da: xr.DataArray) -> xr.DataArray:
    """``Σ_own-dims x²`` (dims ``(step,)``); NaN where a state holds a NaN (a diverged state's norm is not 0)."""
    return (_f64(da) ** 2).sum(_own(da), skipna=False)


@quantity(requires=PARAMETERS, pointwise=True)
@doc_entries(PARAMETER_ENTRY)
def frobenius_norms(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Frobenius norm of every parameter, ``||θ_p(k)||_F = sqrt(Σ_i θ_p,i(k)²)``, and of all of them
    (``(all)``: ``||θ(k)|| = sqrt(Σ_p ||θ_p(k)||_F²)``); dims ``(step,)``.

    Returns
    -------
    xr.Dataset
        One float64 variable of dims ``(step,)`` per picked parameter (its recorded name), and one for ``θ`` named
        :data:`TOTAL` (:data:`SELECTED` when ``parameter`` leaves some out); attr ``quantity``.
    """
    sel = select(ds, step)
    names = parameters(ds, parameter)
    sq = {n: _sum_sq(sel[n]) for n in names}
    out = {n: np.sqrt(v) for n, v in sq.items()}
    if out:
        out[total_name(ds, names)] = np.sqrt(sum(sq.values()))
    return xr.Dataset(out, attrs={"quantity": "frobenius_norms"})


@_kernel  # (found by a review: a multi-threaded OpenBLAS under dask's threads made it 10-90x slower)
def _singular_values_block(block: np.ndarray, method: str = "svd") -> np.ndarray:
    """Singular values (descending) of each matrix ``block[..., :, :]`` (trailing axes flattened).

    A matrix with a non-finite entry (a diverged or unwritten state) gets NaN singular values instead
    of a ``LinAlgError`` for the whole block.
    """
    a = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(a).all(axis=(-2, -1))
    if not finite.all():
        a = np.where(finite[..., None, None], a, 0.0)
    sv = np.linalg.svd(a, compute_uv=False) if method == "svd" else _gram_sv(a)
    if not finite.all():
        sv = np.where(finite[..., None], sv, np.nan)
    return sv


def _gram_sv(a: np.ndarray) -> np.ndarray:
    g = a @ np.swapaxes(a, -1, -2) if a.shape[-2] <= a.shape[-1] else np.swapaxes(a, -1, -2) @ a
    lam = np.linalg.eigvalsh(g)[..., ::-1]
    return np.sqrt(np.clip(lam, 0.0, None))


def matrix_singular_values(da: xr.DataArray, method: str = "svd") -> xr.DataArray:
    """Singular values of one parameter read as a matrix ``(d0, d1·d2·…)``; dims ``(step, NAME.sv)``.

    Parameters
    ----------
    da
        One parameter, dims ``(step, d0, d1, …)`` with at least two dims besides ``step``; its name forms the output
        dims.
    method
        ``"svd"`` (default: numpy's LAPACK SVD); any other value uses the Gram matrix (``sqrt(λ(P Pᵀ))``).

    Returns
    -------
    xr.DataArray
        float64, descending along ``NAME.sv``; dims ``(step, NAME.sv)`` with ``NAME.sv`` coordinate ``1 … r``; NaN for a
        state with a non-finite entry.

    Raises
    ------
    UserError
        When ``da`` has fewer than two dims besides ``step``.
    """
    own = _own(da)
    if len(own) < 2:
        raise UserError(f"{da.name} has {len(own)} dims besides step: singular values need a matrix")
    rows = da.sizes[own[0]]
    cols = int(np.prod([da.sizes[d] for d in own[1:]]))
    r = min(rows, cols)
    flat_dim = f"{da.name}.cols"
    if da.chunks is not None:
        da = da.chunk({d: -1 for d in own})
    mat = da.stack({flat_dim: own[1:]}) if len(own) > 2 else da.rename({own[1]: flat_dim})
    if len(own) > 2:
        mat = mat.drop_vars([c for c in (flat_dim, *own[1:]) if c in mat.coords])
    sv_dim = f"{da.name}.sv"
    out = xr.apply_ufunc(
        _singular_values_block, mat, kwargs={"method": method},
        input_core_dims=[[own[0], flat_dim]], output_core_dims=[[sv_dim]],
        dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {sv_dim: r}},
    )
    return out.assign_coords({sv_dim: np.arange(1, r + 1)})


@quantity(requires=MATRICES, pointwise=True)
@doc_entries(MATRIX_PARAMETER_ENTRY)
def param_singular_values(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "",
                          method: str = "svd") -> xr.Dataset:
    """Singular values ``σ_1(k) ≥ … ≥ σ_r(k)`` of every matrix parameter ``P(k)``, ``r = min(d0, d1·…)``;
    dims ``(step, NAME.sv)``. ``method="svd"`` (numpy's LAPACK SVD) or ``"gram"`` (``sqrt(λ(P Pᵀ))``,
    faster, absolute accuracy about ``1e-8 σ_1``).

    Parameters
    ----------
    method
        How to compute them: ``"svd"`` (default) or ``"gram"``.

    Returns
    -------
    xr.Dataset
        One float64 variable per picked matrix parameter, dims ``(step, NAME.sv)`` (see
        :func:`matrix_singular_values`); attr ``quantity``.

    Raises
    ------
    UserError
        When ``method`` is neither ``"svd"`` nor ``"gram"``.
    """
    if method not in ("svd", "gram"):
        raise UserError(f"method={method!r}: use svd or gram")
    sel = select(ds, step)
    names = parameters(ds, parameter, matrices=True)
    return xr.Dataset({n: matrix_singular_values(sel[n], method) for n in names},
                      attrs={"quantity": "param_singular_values"})


@quantity(requires=PARAMETERS, pointwise=True)
@doc_entries(PARAMETER_ENTRY)
def spectral_norms(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Spectral norm ``||P(k)||_2 = σ_1(k)`` of every parameter (a vector's: its Euclidean norm); dims ``(step,)``.

    Returns
    -------
    xr.Dataset
        One float64 variable of dims ``(step,)`` per picked parameter (no total); attr ``quantity``.
    """
    sel = select(ds, step)
    out = {}
    for n in parameters(ds, parameter):
        da = sel[n]
        out[n] = (matrix_singular_values(da).isel({f"{n}.sv": 0}, drop=True)
                  if len(_own(da)) >= 2 and all(da.sizes[d] > 0 for d in _own(da))
                  else np.sqrt(_sum_sq(da)))  # (a vector's, or an empty matrix's: 0)
    return xr.Dataset(out, attrs={"quantity": "spectral_norms"})


@quantity(requires=MATRICES, pointwise=True)
@doc_entries(MATRIX_PARAMETER_ENTRY)
def param_stable_ranks(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Stable rank ``||P(k)||_F² / ||P(k)||_2² = Σ_i σ_i² / σ_1²`` of every matrix parameter; dims ``(step,)``.

    Returns
    -------
    xr.Dataset
        One float64 variable of dims ``(step,)`` per picked matrix parameter (singular values by ``"svd"``); attr
        ``quantity``.
    """
    sv = param_singular_values(ds, step, parameter=parameter)
    out = {n: (sv[n] ** 2).sum(f"{n}.sv", skipna=False) / sv[n].isel({f"{n}.sv": 0}, drop=True) ** 2 for n in sv.data_vars}
    return xr.Dataset(out, attrs={"quantity": "param_stable_ranks"})


@quantity(requires=PARAMETERS, pointwise=True)
@doc_entries(PARAMETER_ENTRY)
def update_norms(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Size of each update, ``||θ_p(k_{i+1}) − θ_p(k_i)||_F`` between consecutive selected states, per
    parameter and for ``θ`` (``(all)``); labelled by the later state's step (dims ``(step,)``, one fewer).

    Returns
    -------
    xr.Dataset
        One float64 variable of dims ``(step,)`` per picked parameter and one for ``θ`` (:data:`TOTAL`, or
        :data:`SELECTED`), one state fewer than selected; attr ``quantity``.
    """
    sel = select(ds, step)
    names = parameters(ds, parameter)
    sq = {n: (_f64(sel[n]).diff(STEP, label="upper") ** 2).sum(_own(sel[n]), skipna=False) for n in names}
    out = {n: np.sqrt(v) for n, v in sq.items()}
    if out:
        out[total_name(ds, names)] = np.sqrt(sum(sq.values()))
    return xr.Dataset(out, attrs={"quantity": "update_norms"})


def _initial(ds: xr.Dataset, name: str) -> xr.DataArray:
    """``θ_p(0)``: the run's first recorded state (whatever the selection), without the step coord."""
    return _f64(ds[name].isel({STEP: 0}, drop=True))


@quantity(requires=PARAMETERS, pointwise=True)
@doc_entries(PARAMETER_ENTRY)
def distance_from_init(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Distance from initialization ``||θ_p(k) − θ_p(0)||_F`` per parameter and for ``θ`` (``(all)``),
    ``θ(0)`` being the run's first recorded state; dims ``(step,)``.

    Returns
    -------
    xr.Dataset
        One float64 variable of dims ``(step,)`` per picked parameter and one for ``θ`` (:data:`TOTAL`, or
        :data:`SELECTED`); attr ``quantity``.
    """
    sel = select(ds, step)
    names = parameters(ds, parameter)
    sq = {n: ((_f64(sel[n]) - _initial(ds, n)) ** 2).sum(_own(sel[n]), skipna=False) for n in names}
    out = {n: np.sqrt(v) for n, v in sq.items()}
    if out:
        out[total_name(ds, names)] = np.sqrt(sum(sq.values()))
    return xr.Dataset(out, attrs={"quantity": "distance_from_init"})


@quantity(requires=MATRICES, pointwise=True)
@doc_entries(MATRIX_PARAMETER_ENTRY)
def row_cosines_to_init(ds: xr.Dataset, step: StepSel = None, *, parameter: str = "") -> xr.Dataset:
    """Cosine of each row (neuron) with its initial direction,
    ``cos(p_j(k), p_j(0)) = <p_j(k), p_j(0)> / (||p_j(k)|| ||p_j(0)||)`` for every matrix parameter
    (row ``j`` along its first axis, the others flattened); NaN where a norm is 0; dims ``(step, NAME.dim0)``.

    Returns
    -------
    xr.Dataset
        One float64 variable per picked matrix parameter, dims ``(step, ROW)`` with ``ROW`` its first dim besides
        ``step``; attr ``quantity``.
    """
    sel = select(ds, step)
    out = {}
    for n in parameters(ds, parameter, matrices=True):
        cur, init = _f64(sel[n]), _initial(ds, n)
        rest = _own(cur)[1:]
        dot = (cur * init).sum(rest, skipna=False)
        norms = np.sqrt((cur ** 2).sum(rest, skipna=False)) * np.sqrt((init ** 2).sum(rest, skipna=False))
        out[n] = dot / norms.where(norms > 0)
    return xr.Dataset(out, attrs={"quantity": "row_cosines_to_init"})


@quantity(requires=PARAMETERS, series=False)
def parameter_summary(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Per parameter at the last selected state: shape size, ``||θ_p||_F``, distance from init, and the
    relative change ``||θ_p − θ_p(0)|| / ||θ_p(0)||``; dims ``(parameter,)``.

    Parameters
    ----------
    step
        Step selection (see :func:`~trajscope.analysis._common.select`); its last state is summarized.

    Returns
    -------
    xr.Dataset
        Dims ``(parameter,)`` with the parameter names as coordinate: ``size`` (int64, entries per state),
        ``frobenius_norm``, ``distance_from_init`` and ``relative_change`` (float64; NaN where ``θ_p(0) = 0``).
    """
    names = parameters(ds)
    last = select(ds, step).isel({STEP: -1})
    size = [int(np.prod([ds.sizes[d] for d in _own(ds[n])])) for n in names]
    fro = [np.sqrt(_sum_sq(last[n])) for n in names]
    dist = [np.sqrt(((_f64(last[n]) - _initial(ds, n)) ** 2).sum(_own(ds[n]), skipna=False)) for n in names]
    init = [np.sqrt((_initial(ds, n) ** 2).sum(skipna=False)) for n in names]
    coords = {"parameter": names}

    def stack(items):
        return xr.concat([xr.DataArray(i).drop_vars(list(xr.DataArray(i).coords)) for i in items], "parameter") \
            .assign_coords(coords) if items else xr.DataArray(np.zeros(0), dims="parameter", coords=coords)

    out = xr.Dataset({"size": ("parameter", np.asarray(size, dtype=np.int64)), "frobenius_norm": stack(fro),
                      "distance_from_init": stack(dist)}, coords=coords)
    out["relative_change"] = out["distance_from_init"] / stack(init).where(stack(init) > 0)
    return out
