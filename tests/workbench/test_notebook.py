"""examples/quickstart.ipynb runs top to bottom on a tiny run (nbclient, a real kernel), so it cannot rot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tiny_root, monkeypatch, tmp_path):
    monkeypatch.setenv("TRAJSCOPE_NOTEBOOK_RUN", str(tiny_root / "a.zarr"))
    monkeypatch.setenv("TRAJSCOPE_NOTEBOOK_LAST_STEP", "30")
    # the kernel is "python" on PATH: make it this interpreter (the one with this checkout installed)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.outputs)
               for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "complete 41 recorded states" in text
    assert "states over HTTP; last W equal to the local one: True" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
