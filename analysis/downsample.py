"""Min–max downsampling of per-step series for charts: a spike survives any zoom level.

:func:`minmax_downsample` splits the step axis into ``points`` buckets of equal width (on a linear or
a logarithmic step axis, matching the chart's pixels) and keeps, per bucket and per series, the
smallest and the largest value in the order they occur. :func:`columns` flattens an analysis result
into named ``(step,)`` columns, the shape a chart draws. Pure numpy/xarray: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

SCALES = ("linear", "log")


@dataclass(frozen=True)
class Downsampled:
    """A downsampled table: ``x`` ``(m,)`` and ``values`` ``(m, k)``, ``m <= 2 * points``.

    ``exact`` is true when nothing was dropped (``values`` are the input rows, unchanged).
    """

    x: np.ndarray
    values: np.ndarray
    exact: bool


def bucket_index(x: np.ndarray, points: int, scale: str = "linear") -> np.ndarray:
    """Bucket of each ``x`` (sorted, non-decreasing) among ``points`` equal-width buckets.

    With ``u(x) = x`` (``scale="linear"``) or ``u(x) = log(1 + x - x_0)`` (``"log"``), bucket
    ``b_i = min(points - 1, floor(points · (u(x_i) - u(x_0)) / (u(x_{n-1}) - u(x_0))))``.

    Parameters
    ----------
    x
        Sorted step values ``(n,)``.
    points
        Number of buckets (``>= 1``).
    scale
        ``"linear"`` (default) or ``"log"``.

    Returns
    -------
    np.ndarray
        int64 ``(n,)``, buckets in ``[0, points - 1]`` (all 0 when ``x`` spans nothing).

    Raises
    ------
    ValueError
        When ``scale`` is not one of :data:`SCALES`.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    u = np.log1p(x - x[0]) if scale == "log" else x - x[0]
    span = u[-1]
    if not span > 0:
        return np.zeros(x.size, dtype=np.int64)
    return np.minimum(points - 1, np.floor(points * u / span)).astype(np.int64)


def minmax_downsample(x: np.ndarray, values: np.ndarray, points: int, scale: str = "linear",
                      buckets: np.ndarray | None = None) -> Downsampled:
    """At most two rows per bucket: per series the bucket's minimum and maximum, in time order.

    Parameters
    ----------
    x
        Sorted step values ``(n,)``.
    values
        ``(n,)`` or ``(n, k)``: ``k`` series sampled at ``x`` (NaN = missing).
    points
        Number of buckets (the chart's width in pixels); ``n <= 2 * points`` returns the input.
    scale
        ``"linear"`` or ``"log"`` spacing of the buckets along ``x`` (see :func:`bucket_index`).
    buckets
        The bucket of each row, given: ``x`` is then one piece of a longer series whose buckets
        :func:`bucket_index` computed over the whole (no bucket straddling two pieces, see :func:`pieces`), and
        the rows are reduced whatever their number, so the pieces' results put end to end are the whole's.

    Returns
    -------
    Downsampled
        Per non-empty bucket ``B`` two rows at ``x = first(B)`` and ``x = last(B)`` (one row when
        the bucket holds one state). For series ``s`` the first row holds whichever of
        ``min_{i∈B} y_{is}`` and ``max_{i∈B} y_{is}`` occurs first in ``B`` (ties: the earliest
        index), the second row the other; a bucket with only NaN gives NaN. So the drawn line passes
        through every bucket's extremes: a one-step spike is kept at every zoom level.
    """
    if points < 1:
        raise ValueError("points must be at least 1")
    x = np.asarray(x)
    vals = np.asarray(values, dtype=np.float64)
    flat = vals.ndim == 1
    if flat:
        vals = vals[:, None]
    n = x.shape[0]
    if vals.shape[0] != n:
        raise ValueError(f"values have {vals.shape[0]} rows for {n} steps")
    if buckets is None and n <= 2 * points:
        return Downsampled(x.copy(), vals[:, 0].copy() if flat else vals.copy(), True)
    if n == 0:
        return Downsampled(x.copy(), vals[:, 0].copy() if flat else vals.copy(), False)
    b = bucket_index(x, points, scale) if buckets is None else np.asarray(buckets)
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])  # first index of each non-empty bucket
    ends = np.r_[starts[1:], n] - 1  # last index
    lo = np.fmin.reduceat(vals, starts, axis=0)  # NaN-ignoring min/max per bucket
    hi = np.fmax.reduceat(vals, starts, axis=0)
    owner = np.repeat(np.arange(starts.size), ends - starts + 1)
    idx = np.arange(n)[:, None]
    never = np.int64(n)
    first_lo = np.minimum.reduceat(np.where(vals == lo[owner], idx, never), starts, axis=0)
    first_hi = np.minimum.reduceat(np.where(vals == hi[owner], idx, never), starts, axis=0)
    lo_first = first_lo <= first_hi
    row_a = np.where(lo_first, lo, hi)
    row_b = np.where(lo_first, hi, lo)
    single = starts == ends
    m = 2 * starts.size - int(single.sum())
    out_x = np.empty(m, dtype=x.dtype)
    out_v = np.empty((m, vals.shape[1]))
    pos_a = np.arange(starts.size) * 2 - np.r_[0, np.cumsum(single)[:-1]]
    out_x[pos_a] = x[starts]
    out_v[pos_a] = row_a
    two = ~single
    out_x[pos_a[two] + 1] = x[ends[two]]
    out_v[pos_a[two] + 1] = row_b[two]
    return Downsampled(out_x, out_v[:, 0] if flat else out_v, False)


def pieces(buckets: np.ndarray, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), …]`` covering ``range(len(buckets))`` in pieces of about ``size`` rows, each cut at a
    bucket's first row (a bucket longer than ``size`` is one piece): what :func:`minmax_downsample` reduces
    piece by piece, with ``buckets`` given, to the whole's result while holding one piece in memory.

    Parameters
    ----------
    buckets
        The bucket of each row, non-decreasing (:func:`bucket_index`).
    size
        Target rows per piece (values below 1 read as 1).

    Returns
    -------
    list of tuple of int
        Half-open row ranges ``(start, stop)`` in order, covering every row (empty for no rows).
    """
    n = len(buckets)
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]]) if n else np.zeros(0, dtype=np.int64)
    out, begin = [], 0
    while begin < n:
        cut = int(np.searchsorted(starts, begin + max(size, 1)))
        end = int(starts[cut]) if cut < starts.size else n
        out.append((begin, end))
        begin = end
    return out


def concat(parts: list[Downsampled]) -> Downsampled:
    """Downsampled pieces put end to end (see :func:`pieces`).

    Parameters
    ----------
    parts
        The pieces' :func:`minmax_downsample` results, in order.

    Returns
    -------
    Downsampled
        Their ``x`` and ``values`` concatenated; ``exact`` when every part is.
    """
    return Downsampled(np.concatenate([p.x for p in parts]), np.concatenate([p.values for p in parts]),
                       all(p.exact for p in parts))


def _label(value: object, dim: str) -> str:
    if dim == "label" and isinstance(value, (np.integer, int)) and int(value) in (1, -1):
        return f"{int(value):+d}"  # class labels read +1 / -1
    return str(value.item() if isinstance(value, np.generic) else value)


#: an analysis result as :func:`columns` takes it: a DataArray, a Dataset, or (what :func:`first_columns`
#: makes of a Dataset) its variables by name
Result = xr.DataArray | xr.Dataset | dict[str, xr.DataArray]


def _items(result: Result, name: str) -> list[tuple[str, xr.DataArray]]:
    if isinstance(result, xr.DataArray):
        return [(str(result.name or name), result)]
    variables = result.data_vars if isinstance(result, xr.Dataset) else result
    return [(str(k), v) for k, v in variables.items()]


def _width(da: xr.DataArray) -> int:
    """Columns of one variable: the product of its sizes but ``step``'s (0 without a ``step`` dim)."""
    if "step" not in da.dims:
        return 0
    return int(np.prod([da.sizes[d] for d in da.dims if d != "step"], dtype=np.int64))


def column_count(result: Result) -> int:
    """How many columns :func:`columns` makes of ``result``, from its sizes alone (nothing is computed).

    Parameters
    ----------
    result
        A DataArray, a Dataset, or a dict of its variables.

    Returns
    -------
    int
        The number of columns (0 for a result without a ``step`` dim).
    """
    return sum(_width(da) for _, da in _items(result, ""))


def first_columns(result: Result, first: int) -> xr.DataArray | dict[str, xr.DataArray]:
    """``result`` cut, lazily, to what its first ``first`` columns (in :func:`columns`' order) need: the
    variables before them, and of the variable they end in the first ``ceil(rest / w)`` entries along its
    first non-step dim (``w``: the columns one entry holds). :func:`columns` of the cut result begins with
    the same columns as of the whole. A Dataset's come back as a dict of its variables: one cut along a dim
    another shares no longer fits in one Dataset.

    Parameters
    ----------
    result
        A DataArray, a Dataset, or a dict of its variables.
    first
        How many leading columns the cut must keep.

    Returns
    -------
    xr.DataArray or dict of str to xr.DataArray
        A DataArray for a DataArray, else the kept variables by name.
    """
    if isinstance(result, xr.DataArray):
        return _cut(result, first)
    keep, left = {}, first
    for name, da in _items(result, ""):
        if left <= 0:
            break
        width = _width(da)
        if width:
            keep[name] = _cut(da, left)
            left -= width
    return keep


def _cut(da: xr.DataArray, count: int) -> xr.DataArray:
    other = [d for d in da.transpose("step", ...).dims if d != "step"] if "step" in da.dims else []
    if not other or _width(da) <= count:
        return da
    per_entry = int(np.prod([da.sizes[d] for d in other[1:]], dtype=np.int64))
    return da.isel({other[0]: slice(0, -(-count // per_entry))})


def columns(result: Result, name: str) -> dict[str, np.ndarray]:
    """The ``(step,)`` columns of an analysis result, each named after its variable and its other
    coordinates: ``loss``; ``cone_fractions[S+]``; ``mean[+1]`` for a Dataset variable ``mean`` with a
    ``label`` dim. Variables without a ``step`` dim are left out.

    Parameters
    ----------
    result
        A DataArray, a Dataset, or a dict of its variables.
    name
        The column name of an unnamed DataArray.

    Returns
    -------
    dict of str to np.ndarray
        float64 arrays of shape ``(step,)`` by column name, in the variables' order.
    """
    out: dict[str, np.ndarray] = {}
    for vname, da in _items(result, name):
        if "step" not in da.dims:
            continue
        da = da.transpose("step", ...)
        other = [d for d in da.dims if d != "step"]
        if not other:
            out[vname] = np.asarray(da.values, dtype=np.float64)
            continue
        stacked = da.stack(_col=other) if len(other) > 1 else da.rename({other[0]: "_col"})
        labels = stacked["_col"].values if "_col" in stacked.coords else np.arange(stacked.sizes["_col"])
        values = np.asarray(stacked.values, dtype=np.float64)
        for j, lab in enumerate(labels):
            text = (",".join(_label(v, d) for v, d in zip(lab, other)) if isinstance(lab, tuple)
                    else _label(lab, other[0]))
            out[f"{vname}[{text}]"] = values[:, j]
    return out
