"""The registry of analysis quantities and figures: each declares what a run must have for it to apply.

Quantities and figures register where they are defined::

    @quantity(requires=TWO_LAYER)                 # the paper's quantities: two-layer runs only
    def target_alignment(ds, step=None): ...

    @quantity(requires=PARAMETERS)               # generic: every run with recorded parameters
    def distance_from_init(ds, step=None): ...

    @plot_kind("loss", requires=TWO_LAYER)
    def plot_loss(ds, step=None, *, title=None): ...

A requirement is a feature of the run (:func:`features`): ``two_layer`` (its schema's model kind, with
``W``, ``v``, ``X``, ``y``), ``parameters`` (at least one variable with role ``parameter``),
``matrices`` (a parameter with two or more dims besides ``step``), ``loss`` (a ``loss`` scalar).
The API, the CLI and the dashboard list :func:`applicable` entries only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import xarray as xr

from trajscope.store.errors import UserError
from trajscope.store.schema import TWO_LAYER as _KIND_TWO_LAYER
from trajscope.store.schema import names_with_role, read_schema

F = TypeVar("F", bound=Callable[..., Any])

#: requirement sets (use these in decorators)
TWO_LAYER = ("two_layer",)
PARAMETERS = ("parameters",)
MATRICES = ("matrices",)
LOSS = ("loss",)

#: quantity name → ``fn(ds, step=None, **options) -> xr.DataArray | xr.Dataset``
QUANTITIES: dict[str, Callable[..., Any]] = {}
#: figure kind → ``fn(ds, step=None, *, title=None, **options) -> matplotlib Figure``
PLOTS: dict[str, Callable[..., Any]] = {}
#: name → requirements, for both registries (keyed by ``("quantity"|"plot", name)``)
REQUIRES: dict[tuple[str, str], tuple[str, ...]] = {}


def _register(table: dict[str, Callable], what: str, name: str | None, requires: tuple[str, ...]):
    def decorate(fn: F) -> F:
        key = name or fn.__name__
        if key in table and table[key] is not fn:
            raise ValueError(f"{what} {key!r} is registered twice ({table[key].__module__} and {fn.__module__})")
        table[key] = fn
        REQUIRES[(what, key)] = tuple(requires)
        fn.requires = tuple(requires)  # type: ignore[attr-defined]
        return fn

    return decorate


def is_pointwise(fn: Callable, kwargs: dict[str, Any]) -> bool:
    """Whether ``fn(ds, step=slice(a, b), **kwargs)`` reads only the selected states (see :func:`quantity`)."""
    flag = getattr(fn, "pointwise", False)
    return bool(flag(kwargs) if callable(flag) else flag)


def is_series(fn: Callable) -> bool:
    """Whether ``fn``'s result has a ``step`` dim, one value per selected state (see :func:`quantity`)."""
    return bool(getattr(fn, "series", True))


def quantity(name: str | None = None, *, requires: tuple[str, ...] = TWO_LAYER,
             pointwise: bool | Callable[[dict[str, Any]], bool] = False, series: bool = True) -> Callable[[F], F]:
    """Register an analysis quantity (default name: the function's) that applies to runs with ``requires``.

    ``pointwise=True`` declares that ``fn(ds, step=slice(a, b))`` reads only the selected states, the
    run's first state and the static variables: it equals ``fn(sub, step=slice(a, b))`` for ``sub`` holding
    just those states, so a caller may compute it on ``sub`` loaded in memory (the dashboard's live
    tails). A predicate on the call's keyword arguments says it for some calls only (e.g. a ``detail``
    option whose result depends on the dask chunking). It is kept as ``fn.pointwise``; read it with
    :func:`is_pointwise`.

    ``series=False`` declares that the result has no ``step`` dim (a property of the data or of the whole
    run: ``mu``, ``t1``, ``summary``…), so it is no per-step series (``/series`` does not offer it; read it
    with :func:`is_series`). A test computes every registered quantity and checks the flag.
    """
    register = _register(QUANTITIES, "quantity", name, requires)

    def decorate(fn: F) -> F:
        fn = register(fn)
        fn.pointwise = pointwise  # type: ignore[attr-defined]
        fn.series = series  # type: ignore[attr-defined]
        return fn

    return decorate


def plot_kind(name: str, *, requires: tuple[str, ...] = TWO_LAYER, over_time: bool = True) -> Callable[[F], F]:
    """Register a figure kind that applies to runs with ``requires``. ``over_time``: it draws every selected
    state (a time series, thinned when no stride is given); ``False``: a state or two of the selection (the
    data, the last state), kept as ``fn.over_time``."""
    register = _register(PLOTS, "plot", name, requires)

    def decorate(fn: F) -> F:
        fn.over_time = over_time  # type: ignore[attr-defined]
        return register(fn)

    return decorate


def run_schema(ds: xr.Dataset) -> dict[str, Any]:
    """The run's schema (legacy runs without one are read as two-layer runs)."""
    return read_schema(ds.attrs, {str(n): tuple(map(str, v.dims)) for n, v in ds.variables.items()})


def parameter_names(ds: xr.Dataset) -> list[str]:
    """Variables of ``ds`` with role ``parameter``, in schema order."""
    return [n for n in names_with_role(run_schema(ds), "parameter") if n in ds.data_vars]


def features(ds: xr.Dataset) -> set[str]:
    """What the run offers, as requirement tokens (see the module docstring)."""
    schema = run_schema(ds)
    out: set[str] = set()
    if schema.get("kind") == _KIND_TWO_LAYER and all(n in ds.variables for n in ("W", "v", "X", "y")):
        out.add("two_layer")
    params = parameter_names(ds)
    if params:
        out.add("parameters")
    if any(ds[n].ndim >= 3 and all(ds.sizes[d] > 0 for d in ds[n].dims[1:]) for n in params):  # step + at
        out.add("matrices")  # least two own dims, none empty (as generic.parameters(matrices=True))
    if "loss" in ds.data_vars:
        out.add("loss")
    return out


def applies(what: str, name: str, ds: xr.Dataset, have: set[str] | None = None) -> bool:
    """True when ``what`` (``quantity``/``plot``) ``name`` applies to the run ``ds``."""
    have = features(ds) if have is None else have
    return set(REQUIRES.get((what, name), ())) <= have


def applicable(ds: xr.Dataset, what: str = "quantity") -> dict[str, Callable[..., Any]]:
    """The registered quantities (or figures, ``what="plot"``) that apply to ``ds``, by name."""
    table = QUANTITIES if what == "quantity" else PLOTS
    have = features(ds)
    return {name: fn for name, fn in table.items() if applies(what, name, ds, have)}


def _lacking(token: str, ds: xr.Dataset) -> str:
    """What a dataset without the requirement ``token`` lacks, in words."""
    if token == "two_layer":
        missing = [n for n in ("W", "v", "X", "y") if n not in ds.variables]
        if run_schema(ds).get("kind") == _KIND_TWO_LAYER and missing:  # (a subset of a two-layer run: found by a
            return f"the two-layer network's W, v, X and y (this dataset lacks {', '.join(missing)})"  # review)
        return "the two-layer network's W, v, X and y (a run of the paper's network)"
    return {"parameters": "recorded parameters", "loss": "a recorded loss",
            "matrices": "a recorded parameter with two or more dims besides step"}.get(token, token)


def check_applies(what: str, name: str, ds: xr.Dataset) -> None:
    """:class:`UserError` naming what ``name`` needs that ``ds`` lacks and what applies instead, when it does not
    apply (found by a review: "needs a run with two_layer; this run (two_layer) offers ..." for a subset of a
    two-layer run, naming nothing missing)."""
    if applies(what, name, ds):
        return
    have = features(ds)
    needs = "; ".join(_lacking(t, ds) for t in REQUIRES.get((what, name), ()) if t not in have)
    others = ", ".join(sorted(applicable(ds, what))) or "none"
    raise UserError(f"{what} {name!r} needs {needs}; this dataset offers: {others}")


def requirements(what: str = "quantity") -> Mapping[str, tuple[str, ...]]:
    """Name → requirements of every registered quantity (or figure)."""
    return {name: req for (kind, name), req in REQUIRES.items() if kind == what}
