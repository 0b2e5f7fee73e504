"""Shaping values for responses: numpy/xarray to JSON (NaN -> null) and to ``.npy`` bytes. No math."""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
from typing import Any

import numpy as np
import xarray as xr

from trajscope.store.dataset_attrs import decode_attrs

#: rough bytes per value in a JSON body, used to apply the size cap before loading anything
JSON_BYTES_PER_VALUE = 20


def array_values(values: np.ndarray) -> Any:
    """Nested lists of ``values``; non-finite floats become ``None``."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        out = values.astype(object)
        out[~np.isfinite(values)] = None
        return out.tolist()
    if values.dtype.kind in "mM":
        return values.astype(str).tolist()
    return values.tolist()


def jsonable(value: Any) -> Any:
    """Any attribute-like value (numpy scalars, arrays, dicts, tuples...) as plain JSON data."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return array_values(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, xr.DataArray):
        return dataarray_body(value)
    if isinstance(value, xr.Dataset):
        return dataset_body(value)
    return str(value)


def dataarray_body(da: xr.DataArray) -> dict[str, Any]:
    """A computed DataArray: name, dims, shape, 1-D coordinates, attrs and values."""
    coords = {name: array_values(c.values) for name, c in da.coords.items() if c.ndim <= 1}
    return {
        "name": None if da.name is None else str(da.name),
        "dims": [str(d) for d in da.dims],
        "shape": list(da.shape),
        "coords": coords,
        "attrs": jsonable(dict(da.attrs)),
        "values": array_values(da.values),
    }


def dataset_body(ds: xr.Dataset) -> dict[str, Any]:
    """A computed Dataset: its data variables as DataArray bodies, and its attrs."""
    return {"variables": {str(k): dataarray_body(v) for k, v in ds.data_vars.items()}, "attrs": jsonable(decode_attrs(ds.attrs))}


def dumps(body: Any) -> bytes:
    """Compact JSON bytes (``allow_nan=False``: callers have turned NaN into null)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def npy_bytes(values: np.ndarray) -> bytes:
    """``values`` in NumPy's ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(values), allow_pickle=False)
    return buffer.getvalue()


def nbytes_of(obj: Any) -> int:
    """Bytes a computed xarray/numpy result holds (for the size cap of analysis results)."""
    if isinstance(obj, (xr.DataArray, np.ndarray)):
        return int(obj.size) * JSON_BYTES_PER_VALUE
    if isinstance(obj, xr.Dataset):
        return sum(int(v.size) for v in obj.variables.values()) * JSON_BYTES_PER_VALUE
    if isinstance(obj, dict):
        return sum(nbytes_of(v) for v in obj.values())
    return 0
