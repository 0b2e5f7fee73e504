"""The analysis registries as the API sees them, read at request time.

``trajscope.analysis`` exposes ``QUANTITIES`` and ``PLOT_KINDS`` (name -> function taking the dataset
and an optional ``step=slice(...)``). They are imported lazily, so the API keeps working (listing
nothing) while the analysis is absent. Extra keyword parameters of a function whose default is a
plain ``bool``/``int``/``float``/``str`` become query parameters of its endpoint.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any, Callable, Mapping

from trajscope.store import UserError

log = logging.getLogger("trajscope.api")

SIMPLE = (bool, int, float, str)
RESERVED = {"step", "format", "v"}  # v: a cache-busting tag the dashboard adds


def _registry(name: str) -> dict[str, Callable]:
    try:
        from trajscope import analysis
    except Exception:  # noqa: BLE001 - an analysis that fails to import lists nothing, the API stays up
        log.exception("trajscope.analysis failed to import")
        return {}
    return dict(getattr(analysis, name, None) or {})


def _applicable(items: dict[str, Callable], ds: Any, what: str) -> dict[str, Callable]:
    """The entries that apply to the run ``ds`` (each declares its requirements in the analysis registry)."""
    if ds is None or not items:
        return items
    from trajscope.analysis.registry import applies, features

    have = features(ds)
    return {name: fn for name, fn in items.items() if applies(what, name, ds, have)}


def quantities(ds: Any = None) -> dict[str, Callable]:
    """Analysis quantities by name, only those that apply to the run ``ds`` when given (``{}`` when the
    analysis is not installed)."""
    return _applicable(_registry("QUANTITIES"), ds, "quantity")


def plot_kinds(ds: Any = None) -> dict[str, Callable]:
    """Figure kinds by name, only those that apply to the run ``ds`` when given."""
    return _applicable(_registry("PLOT_KINDS"), ds, "plot")


def lookup(registry: Mapping[str, Callable], name: str, what: str, run_id: str) -> Callable:
    """The function named ``name``, or :class:`LookupError` (a 404) listing what exists."""
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none (the analysis package provides none)"
        raise LookupError(f"{what} {name!r} is unknown or does not apply to run {run_id!r}: available are {known}")
    return registry[name]


def options(fn: Callable) -> dict[str, Any]:
    """Extra simple keyword parameters of ``fn`` and their defaults."""
    try:
        return dict(_options(fn))
    except TypeError:  # an unhashable callable
        return _options.__wrapped__(fn)


@functools.lru_cache(maxsize=512)
def _options(fn: Callable) -> dict[str, Any]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    out = {}
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if i == 0 or pname in RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not inspect.Parameter.empty and isinstance(p.default, SIMPLE):
            out[pname] = p.default
    return out


def accepts_step(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "step" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def bind(fn: Callable, query: Mapping[str, str], what: str) -> dict[str, Any]:
    """Convert the extra query parameters for ``fn``; :class:`UserError` names any that is wrong."""
    allowed = options(fn)
    kwargs: dict[str, Any] = {}
    for key, text in query.items():
        if key in RESERVED:
            continue
        if key not in allowed:
            names = ", ".join(["step", *sorted(allowed)])
            raise UserError(f"unknown parameter {key!r} for {what}: it accepts {names}")
        default = allowed[key]
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                kwargs[key] = text.lower() in ("true", "1")
            elif isinstance(default, (int, float)):  # ASCII digits only (int("１") is 1), and finite
                value = type(default)(text) if text.isascii() else None
                if value is None or (isinstance(value, float) and not math.isfinite(value)):
                    raise ValueError(text)
                kwargs[key] = value
            else:
                kwargs[key] = type(default)(text)
        except ValueError:
            raise UserError(f"{key}={text!r} is not a valid {type(default).__name__} (default {default!r})") from None
    return kwargs
