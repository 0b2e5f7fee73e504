"""The import layers of DESIGN §1, checked on the source (every import statement, including those inside
functions, relative ones resolved, ``importlib.import_module("…")`` and the ``trajscope.x`` attribute chains of a
bare ``import trajscope``) and at run time (what ``import trajscope.store`` and ``import trajscope`` load).

=====================  =================================================================
folder (package)       may import, of the project
=====================  =================================================================
store/                 trajscope.store only (and no torch, no dask)
producer/              trajscope.producer, trajscope.store
analysis/              trajscope.analysis, trajscope.store (no torch, zarr or fsspec: the store reads the disk)
api/                   trajscope.api, trajscope.store, trajscope.analysis
trajscope/experiments  trajscope.experiments, producer, analysis, store
=====================  =================================================================

``trajscope._format`` (numbers as tables print them; numpy only, imports nothing of ours) is a leaf every
layer but the store may use: the CLI's listings format with it without importing the analysis.
``trajscope._signals`` (which signals interrupt a command; the standard library only) is a leaf the producer and
the CLI share: the CLI sets them from its first line without importing torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("trajscope.store", "trajscope.producer", "trajscope.analysis", "trajscope.api", "trajscope.cli",
        "trajscope.experiments", "trajscope.reproduce", "trajscope.figures", "trajscope.errors", "trajscope._format",
        "trajscope._signals", "trajscope")

RULES = {
    "store": ({"trajscope.store"}, {"torch", "dask", "distributed"}),
    "producer": ({"trajscope.producer", "trajscope.store", "trajscope._signals"}, set()),
    # pure xarray in, xarray out: the store reads the disk (no zarr, no fsspec here)
    "analysis": ({"trajscope.analysis", "trajscope.store", "trajscope._format"}, {"torch", "zarr", "fsspec"}),
    "api": ({"trajscope.api", "trajscope.store", "trajscope.analysis"}, {"torch"}),
    "trajscope/experiments": ({"trajscope.experiments", "trajscope.producer", "trajscope.analysis",
                               "trajscope.store"}, set()),
    # the leaves every layer may use import nothing of ours
    "trajscope/_format.py": (set(), set()),
    "trajscope/_signals.py": (set(), set()),
}

#: the folder of each package (pyproject's package-dir): a file's package, for its relative imports
PACKAGE_DIRS = {"store": "trajscope.store", "producer": "trajscope.producer", "analysis": "trajscope.analysis",
                "api": "trajscope.api", "trajscope": "trajscope"}


def _package(path: Path) -> list[str]:
    """The dotted package a source file belongs to, as parts (``store/writer.py`` → ``trajscope.store``)."""
    parts = list(path.relative_to(REPO).parts)
    return PACKAGE_DIRS[parts[0]].split(".") + parts[1:-1]


def _dotted(node: ast.AST) -> str | None:
    """``trajscope.analysis.spectra`` for that attribute chain; None for anything else."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(names)])
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports: import statements (relative ones resolved, ``from trajscope import x`` as
    ``trajscope.x``), ``importlib.import_module("…")`` with a literal name, and the ``trajscope.x.y`` attribute
    chains a bare ``import trajscope`` reaches."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = {alias.asname or alias.name: alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.split(".")[0] == "trajscope"}  # import trajscope as ts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(path)[: len(_package(path)) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            if module.split(".")[0] == "trajscope":  # from trajscope import analysis; from . import spectra
                out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and _dotted(node.func) in ("importlib.import_module", "import_module")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Attribute):  # (each link of a chain: trajscope.analysis, trajscope.analysis.x)
            dotted = _dotted(node)
            if dotted is not None and dotted.split(".")[0] in aliases:
                dotted = ".".join([aliases[dotted.split(".")[0]], *dotted.split(".")[1:]])
            if dotted is not None and _layer(dotted) not in (None, "trajscope"):  # not trajscope.__version__
                out.append((node.lineno, dotted))
    return out


def _layer(module: str) -> str | None:
    for prefix in OURS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


@pytest.mark.parametrize("folder", sorted(RULES))
def test_no_import_crosses_a_layer(folder):
    allowed, forbidden_third_party = RULES[folder]
    problems = []
    files = [REPO / folder] if folder.endswith(".py") else sorted((REPO / folder).rglob("*.py"))
    assert files, f"no sources under {folder}"
    for path in files:
        for line, module in _imports(path):
            layer = _layer(module)
            if layer is not None and not any(module == a or module.startswith(a + ".") for a in allowed) \
                    and module != "trajscope":
                problems.append(f"{path.relative_to(REPO)}:{line} imports {module}")
            if module.split(".")[0] in forbidden_third_party:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not problems, "layer violations:\n" + "\n".join(problems)


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def test_importing_the_store_loads_no_analysis_dask_or_torch():
    out = _python("import sys, trajscope.store, trajscope; "
                  "print(sorted(m for m in ('dask', 'torch', 'trajscope.analysis', 'trajscope.producer', "
                  "'matplotlib') if m in sys.modules))")
    assert out == "[]"


def test_ls_loads_no_analysis_dask_or_torch(tmp_path):
    """Found by a review: ``trajscope ls`` imported the analysis (xarray's dask graphs and all) to format its
    numbers, about 2 s of a 6 s listing of 974 runs on a loaded machine."""
    out = _python("import sys\nfrom trajscope.cli import main\n"
                  f"try:\n    main(['ls', '--root', {str(tmp_path)!r}])\nexcept SystemExit:\n    pass\n"
                  "print(sorted(m for m in ('dask', 'torch', 'trajscope.analysis', 'trajscope.producer') "
                  "if m in sys.modules))")
    assert out.splitlines()[-1] == "[]", out


def test_ds_traj_works_after_import_trajscope_and_open_run(tmp_path):
    import numpy as np

    from trajscope.producer.two_layer import variables
    from trajscope.store import RunWriter, StoreRoot

    root = StoreRoot(tmp_path)
    writer = RunWriter.create(root, "r", variables=variables(), sizes={"neuron": 3, "feature": 2, "sample": 4},
                              capacity=4, static={"X": np.ones((4, 2)), "y": np.ones(4)}, attrs={})
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 3, 2)).astype(np.float32)
    writer.write_block(0, {"W": W, "v": rng.normal(size=(4, 3)), "loss": np.ones(4),
                           "output": np.ones((4, 4)), "step": np.arange(4), "t": np.arange(4) * 0.1})
    writer.commit(4)
    writer.finish("complete")
    out = _python("import sys, trajscope; ds = trajscope.open_run('r', %r); "
                  "before = 'trajscope.analysis' in sys.modules; "
                  "n = float(ds.traj.frobenius_norms()['W'][-1]); "
                  "print(before, 'trajscope.analysis' in sys.modules, round(n, 6))" % str(tmp_path))
    before, after, norm = out.split()
    assert (before, after) == ("False", "True")
    assert float(norm) == pytest.approx(np.linalg.norm(W[-1].astype(np.float64)), abs=1e-6)


def test_a_reader_without_torch_can_star_import_and_is_told_what_to_install():
    """Found by a review of the wheel: on an install without torch, ``from trajscope import *`` raised a bare
    ``No module named 'torch'`` (``__all__`` named the recorders), as did ``trajscope.ModuleRecorder``."""
    out = _python("import sys\nsys.modules['torch'] = None  # as on a reader's install\n"
                  "from trajscope import *\nprint(sorted(k for k in ('open_run', 'load_config', 'ModuleRecorder') if k in globals()))\n"
                  "import trajscope\ntry:\n    trajscope.ModuleRecorder\nexcept ImportError as err:\n"
                  "    print(err.name, '|', err)")
    names, error = out.splitlines()
    assert names == "['load_config', 'open_run']"  # (reading a config needs no torch: found by a review)
    assert error.startswith("torch | trajscope.ModuleRecorder records with torch") and "trajscope[producer]" in error
