"""The attributes of an opened run: plain values only, so any xarray writer takes the dataset as it is.

A run's root attributes (``zarr.json``) hold nested mappings (``config``, ``schema``, ``data_info``,
``versions``, ``writer``), lists (``tags``, ``time_variables``), ``None`` and booleans. netCDF attributes can
hold none of these, so ``ds.to_netcdf()`` of a dataset carrying them raises ``TypeError``.
:func:`trajscope.open_run` therefore hands out the attributes through :func:`encode_attrs`: every value that
is not a number or an ASCII string becomes its JSON text, and the attribute :data:`JSON_ATTRS` names those
attributes (space-separated). ``ds.to_netcdf(f)``, ``ds.to_zarr(f)`` and reading either back give the same
attributes, byte for byte.

Read a value with :func:`run_attr` (``run_attr(ds, "config")`` is the mapping) or all of them with
:func:`decode_attrs` (``ds.traj.attrs`` in the accessor); both also take the raw attributes of a run opened
with plain ``xr.open_zarr``, where the values are still mappings.
"""

from __future__ import annotations

import math
import json
from numbers import Number
from typing import Any, Mapping

import numpy as np

JSON_ATTRS = "trajscope_json_attrs"


def is_plain(value: Any) -> bool:
    """Whether ``value`` is an attribute every netCDF writer keeps as it is: a number or an ASCII string."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, str):
        return value.isascii()
    return isinstance(value, (Number, np.number))


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for numpy scalars and arrays; anything else is refused with ``TypeError``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"attribute value {value!r} cannot be written as JSON")


def _encoded_names(attrs: Mapping[str, Any]) -> set[str]:
    listed = attrs.get(JSON_ATTRS)
    return set(listed.split()) if isinstance(listed, str) else set()


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with every non-plain value as JSON text, named in ``attrs[JSON_ATTRS]``.

    Idempotent: attributes already encoded (listed in :data:`JSON_ATTRS`) stay as they are.
    """
    already = _encoded_names(attrs)
    out: dict[str, Any] = {}
    names = []
    for key, value in attrs.items():
        if key == JSON_ATTRS:
            continue
        if key in already and isinstance(value, str):
            out[key], encoded = value, True
        elif is_plain(value):
            out[key], encoded = value, False
        else:
            out[key], encoded = json.dumps(value, default=json_default, allow_nan=True), True
        if encoded:
            names.append(key)
    if names:
        out[JSON_ATTRS] = " ".join(names)
    return out


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode_attrs` (values that are not JSON text pass through unchanged)."""
    names = _encoded_names(attrs)
    return {key: (_loads(value) if key in names and isinstance(value, str) else value)
            for key, value in attrs.items() if key != JSON_ATTRS}


def _loads(text: str) -> Any:
    """The JSON text's value; the text itself when it is not JSON (a hand-edited copy)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_attr(source: Any, key: str, default: Any = None) -> Any:
    """The decoded attribute ``key`` of a dataset (or of an attribute mapping); ``default`` when absent."""
    attrs: Mapping[str, Any] = getattr(source, "attrs", source)
    if key not in attrs:
        return default
    value = attrs[key]
    if isinstance(value, str) and key in _encoded_names(attrs):
        return json.loads(value)
    return value


#: root attribute naming the run's end values that were not finite, as text (``{"final_loss": "nan"}``): JSON
#: holds them as null, which alone reads as "no loss recorded" (found by a review: a diverged run listed as none)
NOT_FINITE = "not_finite"


def set_finite_or_null(attrs: dict[str, Any], values: dict[str, Any]) -> None:
    """Update ``attrs`` with ``values``, every float that is not finite as ``None`` (JSON has no NaN), and keep
    the :data:`NOT_FINITE` attribute naming such values as text (``{"final_loss": "nan"}``): set for those, cleared
    of the keys ``values`` gives finite (a resumed run's loss finite again), removed when nothing is left."""
    lost = {k: v for k, v in (attrs.get(NOT_FINITE) or {}).items() if k not in values}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            attrs[key], lost[key] = None, str(value)
        else:
            attrs[key] = value
    if lost:
        attrs[NOT_FINITE] = lost
    else:
        attrs.pop(NOT_FINITE, None)


def committed_part(ds: Any) -> Any:
    """``ds`` (an ``xr.Dataset`` of a run) cut to its ``committed_steps`` along ``step`` where it holds more: a
    live or killed run opened with plain ``xr.open_zarr``, whose arrays reach past the committed states into
    uncommitted numbers and fill values (found by a review: ``ds.traj.summary()`` on one answered plausible
    wrong numbers, a last step of 0). Only a ``running`` run's: a finished run's arrays are already cut to its
    count, and a dataset of ``open_run``, a selection of one, or several runs concatenated (the first run's
    attributes) are returned as they are. A selection made from the untrimmed dataset first cannot be told from
    its committed states (its positions are not the run's): the README says to cut first."""
    committed = ds.attrs.get("committed_steps")
    if isinstance(committed, bool) or not isinstance(committed, (int, np.integer)) or "step" not in ds.dims:
        return ds
    if ds.attrs.get("status") != "running":
        return ds
    return ds.isel(step=slice(0, int(committed))) if ds.sizes["step"] > committed >= 0 else ds
