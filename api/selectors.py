"""Parsing of the query selectors: ``step=a:b:s``, ``neuron=3``, ``sample=1,4,9``, ``feature=:10``.

Grammar of one selector (whitespace ignored)::

    selector := ""  |  INT  |  INT("," INT)*  |  [INT] ":" [INT] [":" INT]

The ``step`` selector refers to values of the ``step`` coordinate (optimizer steps), as the analysis
does: ``a:b`` keeps the recorded states with ``a <= step <= b`` (both ends included), ``s`` keeps every
``s``-th of them; a single value or a list must name recorded steps. Every other dimension is
positional (``0 .. size-1``, negative counts from the end), with Python's half-open ``a:b:s``.

Errors are :class:`SelectorError` (HTTP 400) naming the parameter and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from trajscope.store import UserError
from trajscope.store.export import no_state_reason

MAX_LIST = 10_000
_INT = r"\s*-?\d{1,18}\s*"
_SLICE = re.compile(rf"^({_INT})?:({_INT})?(?::({_INT})?)?$", re.ASCII)  # (ASCII: \d and \s would take "１")
_LIST = re.compile(rf"^{_INT}(,{_INT})*$", re.ASCII)


class SelectorError(UserError):
    """A malformed or out-of-range selector."""


@dataclass(frozen=True)
class Selector:
    """A parsed selector: ``kind`` is ``all``, ``slice`` (start, stop, step) or ``list`` (values)."""

    kind: str
    start: int | None = None
    stop: int | None = None
    stride: int | None = None
    values: tuple[int, ...] = ()
    scalar: bool = False

    def as_slice(self) -> slice | None:
        """``slice(start, stop, stride)`` for ``all``/``slice`` selectors (``None`` for ``all``)."""
        if self.kind == "all":
            return None
        if self.kind != "slice":
            raise SelectorError("a range a:b:s is needed here, not a list")
        return slice(self.start, self.stop, self.stride)


def parse(name: str, text: str | None) -> Selector:
    """Parse the selector ``text`` of query parameter ``name``."""
    if text is None or text.strip() in ("", ":", "::"):
        return Selector("all")
    text = text.strip()
    match = _SLICE.match(text)
    if match:
        start, stop, stride = (int(g) if g is not None and g.strip() else None for g in match.groups())
        if stride is not None and stride < 1:
            raise SelectorError(f"{name}={text}: the stride must be a positive integer")
        return Selector("slice", start, stop, stride)
    if _LIST.match(text):
        values = tuple(int(v) for v in text.split(","))
        if len(values) > MAX_LIST:
            raise SelectorError(f"{name}={text[:40]}...: at most {MAX_LIST} values in a list; use a range a:b:s")
        return Selector("list", values=values, scalar=len(values) == 1 and "," not in text)
    shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
    if re.fullmatch(r"[\d\s:,-]+", text, re.ASCII) and re.search(r"\d{19}", text):
        raise SelectorError(f"{name}={shown}: an integer of a selector has at most 18 digits")
    raise SelectorError(
        f"{name}={shown} is not a selector: use an integer (3), a list (1,4,9) or a range a:b:s "
        "(0:100, :50, 10:, ::10)"
    )


def positional(name: str, sel: Selector, size: int) -> slice | np.ndarray | int:
    """Indices along a positional dimension of length ``size`` (range checked)."""
    if sel.kind == "all":
        return slice(None)
    if sel.kind == "slice":
        idx = range(size)[slice(sel.start, sel.stop, sel.stride)]
        if len(idx) == 0:
            raise SelectorError(f"{name}={_show(sel)} selects nothing: {name} runs from 0 to {size - 1}")
        return slice(idx.start, idx.stop if idx.stop >= 0 else None, idx.step)
    values = np.asarray(sel.values, dtype=np.int64)
    bad = values[(values >= size) | (values < -size)]
    if bad.size:
        raise SelectorError(f"{name}={int(bad[0])} is out of range: {name} runs from 0 to {size - 1}")
    values = np.where(values < 0, values + size, values)
    return int(values[0]) if sel.scalar else values


def by_step(sel: Selector, steps: np.ndarray, name: str = "step") -> slice | np.ndarray | int:
    """Positional indices of the recorded states that ``sel`` names by ``step`` value.

    ``steps`` is the (increasing) ``step`` coordinate of the committed states.
    """
    if steps.size == 0:
        if sel.kind == "all":
            return slice(None)
        raise SelectorError(f"{name}={_show(sel)}: the run has no committed states yet")
    first, last = int(steps[0]), int(steps[-1])
    if sel.kind == "all":
        return slice(None)
    if sel.kind == "slice":
        lo = 0 if sel.start is None else int(np.searchsorted(steps, sel.start, side="left"))
        hi = steps.size if sel.stop is None else int(np.searchsorted(steps, sel.stop, side="right"))
        if hi <= lo:  # (said as every reader says it: outside the run, or between two recorded steps)
            raise SelectorError(f"{name}={_show(sel)} selects no recorded state: "
                                + no_state_reason(slice(sel.start, sel.stop), steps))
        return slice(lo, hi, sel.stride)
    values = np.asarray(sel.values, dtype=np.int64)
    pos = np.searchsorted(steps, values)
    pos = np.clip(pos, 0, steps.size - 1)
    missing = values[steps[pos] != values]
    if missing.size:
        value = int(missing[0])
        i = int(np.searchsorted(steps, value))
        near = ("" if i in (0, steps.size) else
                f"; the recorded steps nearest to it are {int(steps[i - 1])} and {int(steps[i])}")
        raise SelectorError(
            f"{name}={value} is not a recorded step: recorded steps run from {first} to {last}" + near
        )
    return int(pos[0]) if sel.scalar else pos


def count(index: slice | np.ndarray | int, size: int) -> int:
    """Number of elements ``index`` selects along a dimension of length ``size``."""
    if isinstance(index, slice):
        return len(range(size)[index])
    if isinstance(index, np.ndarray):
        return int(index.size)
    return 1


def _show(sel: Selector) -> str:
    if sel.kind == "list":
        return ",".join(str(v) for v in sel.values[:5]) + ("..." if len(sel.values) > 5 else "")
    parts = ["" if v is None else str(v) for v in (sel.start, sel.stop)]
    return ":".join(parts) + (f":{sel.stride}" if sel.stride else "")
