"""Every registered quantity and figure documents each parameter of its signature, numpy style, ``ds`` and ``step``
included: :mod:`trajscope.analysis.registry` writes the shared entries once and its decorators add them."""

from __future__ import annotations

import inspect
import sys

import pytest

import trajscope.analysis
from trajscope.analysis import registry
from trajscope.analysis.plots import PLOT_KINDS

pytestmark = pytest.mark.skipif(sys.flags.optimize >= 2, reason="python -OO strips the docstrings")

# (importing trajscope.analysis registers the quantities, importing its plots module the figures)
REGISTERED = [("quantity", n, f) for n, f in trajscope.analysis.QUANTITIES.items()] + [
    ("plot", n, f) for n, f in PLOT_KINDS.items()]


def _sections(doc: str) -> dict[str, list[str]]:
    """Title → lines of each numpy section of a cleaned docstring (titles at column 0, underlined)."""
    lines = doc.splitlines()
    heads = [i for i in range(1, len(lines) - 1)
             if lines[i].strip() and not lines[i][0].isspace() and lines[i + 1].strip() == "-" * len(lines[i].strip())]
    return {lines[i]: lines[i + 2:(heads + [len(lines)])[k + 1]] for k, i in enumerate(heads)}


def _names(section: list[str]) -> list[str]:
    """The parameter names a ``Parameters`` section documents (``a, b : type`` documents ``a`` and ``b``)."""
    return [n.strip().lstrip("*") for ln in section if ln.strip() and not ln[0].isspace()
            for n in ln.split(":")[0].split(",")]


@pytest.mark.parametrize("what, name, fn", REGISTERED, ids=[f"{w}-{n}" for w, n, _ in REGISTERED])
def test_every_parameter_is_documented(what, name, fn):
    doc = inspect.getdoc(fn)
    sections = _sections(doc)
    assert "Parameters" in sections, f"{what} {name!r} has no Parameters section:\n{doc}"
    signature = list(inspect.signature(fn).parameters)
    documented = _names(sections["Parameters"])
    assert {"ds", "step"} <= set(signature)
    assert documented == signature, f"{what} {name!r} documents {documented}, its signature is {signature}"
    assert all(lines and lines[0].strip() for lines in sections.values()), f"an empty section:\n{doc}"
    titles = list(sections)
    assert "Returns" in sections, f"{what} {name!r} has no Returns section:\n{doc}"
    assert titles.index("Parameters") < titles.index("Returns")


def test_the_shared_entries_are_written_once():
    doc = inspect.getdoc(registry.QUANTITIES["stable_rank"])
    ds, step = (f"{n}\n    {d[:40]}" for n, d in registry.QUANTITY_PARAMETERS)
    assert ds in doc and step in doc  # (added by the decorator: the function's own docstring has neither)
    assert "Parameters" not in inspect.getsource(registry.QUANTITIES["stable_rank"])
    plot = inspect.getdoc(registry.PLOTS["cones"])
    assert "title\n    The figure's title" in plot and "Returns\n-------\nmatplotlib.figure.Figure" in plot


def test_complete_docstring():
    assert registry.complete_docstring(None) is None  # (python -OO)
    one_line = registry.complete_docstring("A quantity.")
    assert list(_sections(inspect.cleandoc(one_line))) == ["Parameters"]
    assert _names(_sections(inspect.cleandoc(one_line))["Parameters"]) == ["ds", "step"]
    doc = """Summary.

        Parameters
        ----------
        top
            How many.

        Returns
        -------
        int
            A number.
        """
    done = registry.complete_docstring(doc, order=["ds", "step", "top"])
    assert registry.complete_docstring(done, order=["ds", "step", "top"]) == done
    sections = _sections(inspect.cleandoc(done))
    assert list(sections) == ["Parameters", "Returns"]
    assert _names(sections["Parameters"]) == ["ds", "step", "top"]
    assert sections["Returns"] == ["int", "    A number."]
