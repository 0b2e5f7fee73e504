"""Shared helpers of the analysis: step selection, config look-ups, chunk hygiene.

Nothing here does I/O; everything keeps dask arrays lazy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from trajscope.store.dataset_attrs import run_attr
from trajscope.store.errors import UserError
from trajscope.store.export import check_step_slice, no_state_message

StepSel = slice | int | None


def need_two_states(what: str, ds: xr.Dataset, sel: xr.Dataset) -> None:
    """A :class:`UserError` when the selection ``sel`` of ``ds`` holds fewer than two states (``what``
    compares consecutive ones), saying whether to record more or to widen the step range."""
    if sel.sizes["step"] < 2:
        raise UserError(f"{what} and needs two; "
                        + (f"this run has {ds.sizes['step']}: record more steps" if ds.sizes["step"] < 2
                           else f"the step range holds {sel.sizes['step']}: widen the step range"))


def select(ds: xr.Dataset, step: StepSel = None) -> xr.Dataset:
    """Restrict ``ds`` to recorded states ``step=slice(a, b, s)``.

    ``a`` and ``b`` are values of the ``step`` coordinate (optimizer steps, both ends included, as in
    ``ds.sel(step=slice(a, b))``; they need not be recorded steps); ``s`` is a stride over the
    *recorded* states that remain (positional: every ``s``-th recorded state, starting at the first).
    An int ``k`` is the one step ``k`` (``slice(k, k)``). ``None`` keeps everything. A range that holds no
    recorded state (outside them, or between two of a sparse
    or log schedule) is a :class:`UserError` saying which.
    """
    if step is None:
        return ds
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):  # one step, as the CLI's --step k and
        step = slice(int(step), int(step))  # the API's step=k take it (found by a review)
    check_step_slice(step)
    out = ds
    if step.start is not None or step.stop is not None:
        out = out.sel(step=slice(step.start, step.stop))
        steps = ds["step"].values
        if out.sizes.get("step", 0) == 0 and steps.size:  # (what a quantity would fail on, or answer empty)
            raise UserError(no_state_message(step, steps))
    if step.step is not None:
        out = out.isel(step=slice(None, None, int(step.step)))
    return out


def fraction(name: str, value: float) -> float:
    """``value`` when it is a fraction strictly between 0 and 1 (a parameter such as ``drop``);
    :class:`~trajscope.store.errors.UserError` naming ``name`` otherwise (NaN included)."""
    if not 0.0 < value < 1.0:
        raise UserError(f"{name}={value!r}: a fraction strictly between 0 and 1")
    return value


def positive_count(name: str, value: int) -> int:
    """``value`` when it is a whole number >= 1 (a parameter such as ``top``); :class:`UserError` otherwise."""
    if value < 1:
        raise UserError(f"{name}={value!r}: a whole number of at least 1")
    return value


def cfg(ds: xr.Dataset, *path: str, default: Any = None) -> Any:
    """``config[path...]`` of the run (its decoded ``config`` attribute) or ``default`` when any level is missing."""
    node: Any = run_attr(ds, "config")
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def lr(ds: xr.Dataset) -> float | None:
    """Learning rate ``η`` from the config, else inferred from the ``t`` and ``step`` coordinates."""
    value = cfg(ds, "train", "lr")
    if value is not None:
        return float(value)
    if "t" in ds.coords and ds.sizes.get("step", 0) >= 2:
        s = np.asarray(ds["step"].values[:2], dtype=float)
        t = np.asarray(ds["t"].values[:2], dtype=float)
        if s[1] != s[0]:
            return float((t[1] - t[0]) / (s[1] - s[0]))
    return None


def loss_reduction(ds: xr.Dataset) -> str | None:
    """``"sum"`` or ``"mean"`` (the run's loss convention), ``None`` when unknown."""
    value = cfg(ds, "loss", "reduction")
    return str(value) if value in ("sum", "mean") else None


def loss_kind(ds: xr.Dataset) -> str | None:
    """``"exp"`` or ``"logistic"``, ``None`` when unknown."""
    value = cfg(ds, "loss", "kind")
    return str(value) if value in ("exp", "logistic") else None


def run_name(ds: xr.Dataset) -> str:
    """A name for titles: the run id, else ``"run"``."""
    return str(ds.attrs.get("run_id") or ds.attrs.get("name") or "run")


def weights(ds: xr.Dataset) -> xr.DataArray:
    """``W`` with ``neuron`` and ``feature`` in one chunk each (chunking along ``step`` only)."""
    W = ds["W"]
    if W.chunks is not None:
        W = W.chunk({"neuron": -1, "feature": -1})
    return W


def inputs(ds: xr.Dataset) -> xr.DataArray:
    """``X`` as one chunk (it is small next to ``W``: one state's worth of data)."""
    X = ds["X"]
    if X.chunks is not None:
        X = X.chunk({"sample": -1, "feature": -1})
    return X


def labels(ds: xr.Dataset) -> np.ndarray:
    """Labels ``y`` as a numpy int8 array of ±1 (small; loaded)."""
    y = np.asarray(ds["y"].values)
    return np.where(y > 0, 1, -1).astype(np.int8)


def time_coord(ds: xr.Dataset) -> xr.DataArray:
    """Gradient-flow time of each recorded state: the ``t`` coordinate, else ``step · η``, else step."""
    if "t" in ds.coords:
        return ds["t"]
    eta = lr(ds)
    if eta is not None:
        return ds["step"] * eta
    return ds["step"].astype(float)


def scalar(value: Any, **attrs: Any) -> xr.DataArray:
    """A 0-d DataArray carrying ``attrs`` (used for headline numbers)."""
    da = value if isinstance(value, xr.DataArray) else xr.DataArray(value)
    da = da.drop_vars(list(da.coords)) if da.coords else da
    da.attrs.update(attrs)
    return da
