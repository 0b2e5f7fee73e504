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

import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
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


# The docstring entries (numpy style: name, description) of the parameters that every quantity, or every figure,
# shares: written here once, :func:`quantity` and :func:`plot_kind` add them to the registered function's docstring
# (where the function documents one of these parameters itself, its own entry stands instead).
_STEP_RANGE = ("``slice(a, b, s)`` of step labels (both ends included; ``s`` strides over recorded states). A "
               "malformed step, or one that selects no recorded state, raises "
               ":class:`~trajscope.store.errors.UserError`.")
DS_ENTRY = ("ds", "A run's dataset, as opened by ``trajscope.open_run`` (or ``xr.open_zarr`` of a run).")
STEP_ENTRY = ("step", "Step selection (:func:`~trajscope.analysis._common.select`): ``None`` for all recorded states, "
                      "an int ``k`` for step ``k``, or " + _STEP_RANGE)
PLOT_STEP_ENTRY = ("step", "``None`` (every recorded state), an int ``k`` (step ``k`` alone) or " + _STEP_RANGE +
                           " Without a stride the states drawn "
                           "are thinned to at most :data:`~trajscope.analysis.figure_parts.MAX_POINTS` "
                           "(:func:`~trajscope.analysis.figure_parts.thinned`).")
STEP_IGNORED_ENTRY = ("step", "Ignored: the result does not depend on the step range (the parameter keeps the "
                              "quantities' common signature).")
TITLE_ENTRY = ("title", "The figure's title; default ``\"<run id>: <what it shows>\"``.")
FIGURE_RETURNS = ("matplotlib.figure.Figure", "The figure (no pyplot).")
#: the ``Parameters`` entries :func:`quantity` adds to a quantity's docstring
QUANTITY_PARAMETERS = (DS_ENTRY, STEP_ENTRY)
#: the ``Parameters`` entries :func:`plot_kind` adds to a figure's docstring (with ``step`` as a quantity's for a
#: figure of a state or two, ``over_time=False``), and :data:`FIGURE_RETURNS` as its ``Returns``
PLOT_PARAMETERS = (DS_ENTRY, PLOT_STEP_ENTRY, TITLE_ENTRY)

_SECTIONS = ("Parameters", "Returns", "Yields", "Receives", "Other Parameters", "Raises", "Warns", "Warnings",
             "See Also", "Notes", "References", "Examples")


def _headers(lines: list[str]) -> dict[str, int]:
    """Section title → index of its line, for the numpy sections of a docstring's ``lines``."""
    return {ln.strip(): i for i, ln in enumerate(lines[:-1])
            if i and ln.strip() in _SECTIONS and set(lines[i + 1].strip()) == {"-"}}


def _insert_section(lines: list[str], title: str, indent: str) -> int:
    """Add an empty section ``title`` where numpy puts it (before the first section that follows it); the index
    of the line after its underline."""
    later = [i for t, i in _headers(lines).items() if _SECTIONS.index(t) > _SECTIONS.index(title)]
    if later:
        at = min(later)  # (a blank line stands before it, and will after the new section)
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines.append("")
        at = len(lines)
    lines[at:at] = [indent + title, indent + "-" * len(title), ""]
    return at + 2


def _entry_lines(entry: tuple[str, str], indent: str) -> list[str]:
    """The lines of a numpy-style entry ``(name, description)`` at ``indent``, wrapped at 120 columns."""
    return [indent + entry[0], *textwrap.wrap(entry[1], 120, initial_indent=indent + " " * 4,
                                               subsequent_indent=indent + " " * 4, break_long_words=False,
                                               break_on_hyphens=False)]


def complete_docstring(doc: str | None, parameters: tuple[tuple[str, str], ...] = QUANTITY_PARAMETERS,
                       returns: tuple[str, str] | None = None, order: Sequence[str] = ()) -> str | None:
    """``doc`` with the shared ``parameters`` entries in its ``Parameters`` section (created, before ``Returns``,
    where ``doc`` has none), in the order of the signature, and, where it has no ``Returns`` section, ``returns`` as
    one; entries for parameters that ``doc`` documents itself are left out. ``None`` (docstrings stripped,
    ``python -OO``) stays.

    Parameters
    ----------
    doc
        A function's ``__doc__``, indented as in its source.
    parameters
        Entries ``(name, description)``, as :data:`QUANTITY_PARAMETERS`.
    returns
        An entry ``(type, description)`` for the ``Returns`` section (``None``: none is added).
    order
        The function's parameter names, in signature order (empty: the shared entries go first, in their order).

    Returns
    -------
    str or None
        The completed docstring, indented as ``doc``'s body (four spaces for a one-line docstring).
    """
    if doc is None:
        return None
    lines = doc.expandtabs().split("\n")
    body = [ln for ln in lines[1:] if ln.strip()]
    indent = min((ln[:len(ln) - len(ln.lstrip())] for ln in body), key=len) if body else " " * 4
    closing = lines[-1] if len(lines) > 1 and not lines[-1].strip() else indent
    if returns is not None and "Returns" not in _headers(lines):
        at = _insert_section(lines, "Returns", indent)
        lines[at:at] = _entry_lines(returns, indent)
    heads = _headers(lines)
    if "Parameters" in heads:
        at = heads["Parameters"] + 2
    elif parameters:
        at = _insert_section(lines, "Parameters", indent)
    else:
        at = len(lines)
    end = at
    while end < len(lines) and lines[end].strip():
        end += 1
    entries: list[tuple[set[str], list[str]]] = []  # the section's own entries: the names, the lines
    for ln in lines[at:end]:
        if len(ln) - len(ln.lstrip()) == len(indent) or not entries:
            entries.append(({n.strip().lstrip("*") for n in ln.split(":")[0].split(",")}, [ln]))
        else:
            entries[-1][1].append(ln)
    rank = {n: i for i, n in enumerate(order)}
    pos = 0  # (without ``order``: each shared entry goes after the one before it, documented there or added)
    for name, description in parameters:
        own = [i for i, (names, _) in enumerate(entries) if name in names]
        if own:
            pos = max(pos, own[0] + 1)
            continue
        if name in rank:  # before the first entry of a later parameter of the signature
            pos = next((i for i, (names, _) in enumerate(entries)
                        if min(rank.get(n, len(rank)) for n in names) > rank[name]), len(entries))
        entries.insert(pos, ({name}, _entry_lines((name, description), indent)))
        pos += 1
    lines[at:end] = [ln for _, block in entries for ln in block]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" + closing


def _order(fn: Callable) -> list[str]:
    """``fn``'s parameter names, in signature order."""
    return list(inspect.signature(fn).parameters)


def doc_entries(*parameters: tuple[str, str], returns: tuple[str, str] | None = None) -> Callable[[F], F]:
    """A decorator that completes ``fn``'s docstring with shared entries (:func:`complete_docstring`), as
    :func:`quantity` and :func:`plot_kind` do with theirs, and returns ``fn`` itself: for a helper that takes ``ds``
    and ``step`` as a quantity does (``@doc_entries(*QUANTITY_PARAMETERS)``), or entries that some functions share.

    Parameters
    ----------
    parameters
        Entries ``(name, description)``, as :data:`DS_ENTRY`; the ones ``fn`` documents itself are left out.
    returns
        An entry ``(type, description)`` for the ``Returns`` section, where ``fn`` has none.

    Returns
    -------
    Callable
        The decorator.
    """
    def decorate(fn: F) -> F:
        fn.__doc__ = complete_docstring(fn.__doc__, parameters, returns, _order(fn))
        return fn

    return decorate


#: :func:`doc_entries` for a function that ignores ``step`` (its result depends on the data, or on the whole run)
ignores_step = doc_entries(DS_ENTRY, STEP_IGNORED_ENTRY)


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
    """Whether ``fn(ds, step=slice(a, b), **kwargs)`` reads only the selected states (see :func:`quantity`).

    Parameters
    ----------
    fn
        A registered quantity.
    kwargs
        The keyword arguments (options) of the call, passed to ``fn.pointwise`` when it is a predicate.

    Returns
    -------
    bool
        The flag (``False`` for a function without one).
    """
    flag = getattr(fn, "pointwise", False)
    return bool(flag(kwargs) if callable(flag) else flag)


def is_series(fn: Callable) -> bool:
    """Whether ``fn``'s result has a ``step`` dim, one value per selected state (see :func:`quantity`).

    Parameters
    ----------
    fn
        A registered quantity.

    Returns
    -------
    bool
        ``fn.series`` (``True`` for a function without the flag).
    """
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

    Parameters
    ----------
    name
        The registered name (``None``, the default: the function's name).
    requires
        Requirement tokens (:data:`TWO_LAYER`, the default; :data:`PARAMETERS`, :data:`MATRICES`, :data:`LOSS`).
    pointwise
        ``bool``, or a predicate on the call's keyword arguments (default ``False``).
    series
        Whether the result has a ``step`` dim (default ``True``).

    Returns
    -------
    Callable
        A decorator that registers ``fn`` in :data:`QUANTITIES` and :data:`REQUIRES`, sets ``fn.requires``,
        ``fn.pointwise`` and ``fn.series``, adds :data:`QUANTITY_PARAMETERS` to its docstring
        (:func:`complete_docstring`), and returns ``fn`` itself.

    Raises
    ------
    ValueError
        (When decorating) another function is already registered under the name.
    """
    register = _register(QUANTITIES, "quantity", name, requires)

    def decorate(fn: F) -> F:
        fn = register(fn)
        fn.__doc__ = complete_docstring(fn.__doc__, QUANTITY_PARAMETERS, order=_order(fn))
        fn.pointwise = pointwise  # type: ignore[attr-defined]
        fn.series = series  # type: ignore[attr-defined]
        return fn

    return decorate


def plot_kind(name: str, *, requires: tuple[str, ...] = TWO_LAYER, over_time: bool = True) -> Callable[[F], F]:
    """Register a figure kind that applies to runs with ``requires``. ``over_time``: it draws every selected
    state (a time series, thinned when no stride is given); ``False``: a state or two of the selection (the
    data, the last state), kept as ``fn.over_time``.

    Parameters
    ----------
    name
        The figure kind's registered name.
    requires
        Requirement tokens (:data:`TWO_LAYER`, the default; :data:`PARAMETERS`, :data:`MATRICES`, :data:`LOSS`).
    over_time
        Whether the figure draws every selected state (default ``True``).

    Returns
    -------
    Callable
        A decorator that registers ``fn`` in :data:`PLOTS` and :data:`REQUIRES`, sets ``fn.requires`` and
        ``fn.over_time``, adds :data:`PLOT_PARAMETERS` (``step`` as a quantity's where ``over_time`` is ``False``) and
        :data:`FIGURE_RETURNS` to its docstring (:func:`complete_docstring`), and returns ``fn`` itself.

    Raises
    ------
    ValueError
        (When decorating) another function is already registered under the name.
    """
    register = _register(PLOTS, "plot", name, requires)

    def decorate(fn: F) -> F:
        fn.over_time = over_time  # type: ignore[attr-defined]
        fn = register(fn)
        shared = PLOT_PARAMETERS if over_time else (DS_ENTRY, STEP_ENTRY, TITLE_ENTRY)
        fn.__doc__ = complete_docstring(fn.__doc__, shared, FIGURE_RETURNS, _order(fn))
        return fn

    return decorate


def run_schema(ds: xr.Dataset) -> dict[str, Any]:
    """The run's schema (legacy runs without one are read as two-layer runs).

    Parameters
    ----------
    ds
        A run's dataset (its attributes and the dims of its variables are read).

    Returns
    -------
    dict
        The decoded schema, as :func:`trajscope.store.schema.read_schema` returns it.
    """
    return read_schema(ds.attrs, {str(n): tuple(map(str, v.dims)) for n, v in ds.variables.items()})


def parameter_names(ds: xr.Dataset) -> list[str]:
    """Variables of ``ds`` with role ``parameter``, in schema order.

    Parameters
    ----------
    ds
        A run's dataset (its schema and data variables are read).

    Returns
    -------
    list of str
        The names (empty when the run records no parameter).
    """
    return [n for n in names_with_role(run_schema(ds), "parameter") if n in ds.data_vars]


def features(ds: xr.Dataset) -> set[str]:
    """What the run offers, as requirement tokens (see the module docstring).

    Parameters
    ----------
    ds
        A run's dataset (its schema, variables and sizes are read).

    Returns
    -------
    set of str
        A subset of ``{"two_layer", "parameters", "matrices", "loss"}``.
    """
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
    """True when ``what`` (``quantity``/``plot``) ``name`` applies to the run ``ds``.

    Parameters
    ----------
    what
        ``"quantity"`` or ``"plot"``.
    name
        The registered name.
    ds
        A run's dataset (its :func:`features` are read, unless ``have`` gives them).
    have
        ``features(ds)`` when already known (``None``, the default: computed here).

    Returns
    -------
    bool
        Whether ``ds`` offers every requirement (``True`` for an unregistered name, which has none).
    """
    have = features(ds) if have is None else have
    return set(REQUIRES.get((what, name), ())) <= have


def applicable(ds: xr.Dataset, what: str = "quantity") -> dict[str, Callable[..., Any]]:
    """The registered quantities (or figures, ``what="plot"``) that apply to ``ds``, by name.

    Parameters
    ----------
    ds
        A run's dataset (its :func:`features` are read).
    what
        ``"quantity"`` (default) or ``"plot"`` (any other value reads the figures).

    Returns
    -------
    dict
        Name → registered function, in registration order.
    """
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
    two-layer run, naming nothing missing).

    Parameters
    ----------
    what, name, ds
        As for :func:`applies`.

    Raises
    ------
    UserError
        When ``name`` does not apply to ``ds``.
    """
    if applies(what, name, ds):
        return
    have = features(ds)
    needs = "; ".join(_lacking(t, ds) for t in REQUIRES.get((what, name), ()) if t not in have)
    others = ", ".join(sorted(applicable(ds, what))) or "none"
    raise UserError(f"{what} {name!r} needs {needs}; this dataset offers: {others}")


def requirements(what: str = "quantity") -> Mapping[str, tuple[str, ...]]:
    """Name → requirements of every registered quantity (or figure).

    Parameters
    ----------
    what
        ``"quantity"`` (default) or ``"plot"``.

    Returns
    -------
    Mapping
        Name → tuple of requirement tokens.
    """
    return {name: req for (kind, name), req in REQUIRES.items() if kind == what}
