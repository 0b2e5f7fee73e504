"""trajscope: record, analyse and serve full-resolution neural-network training trajectories.

Public face::

    import trajscope
    with trajscope.ModuleRecorder(model, root="runs", name="mlp") as rec:   # any torch.nn.Module
        ...
    ds = trajscope.open_run("runs/mlp.zarr")   # lazy xr.Dataset, trimmed to committed steps
    ds.traj.frobenius_norms()                  # the analysis accessor

Importing ``trajscope`` (or ``trajscope.store``) loads neither the analysis nor dask nor torch: the
``ds.traj`` accessor is registered here as a thin factory that imports the analysis on first use.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from importlib.util import find_spec as _find_spec

try:
    __version__ = _metadata.version("trajscope")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

_READING = {"open_run": "trajscope.store", "list_runs": "trajscope.store",
            "load_config": "trajscope.producer.config"}  # (a config is read without torch: found by a review)
_RECORDING = ("ModuleRecorder", "Recorder", "produce")  # need torch (the `producer` extra)
# (a reader's install has no torch: `from trajscope import *` takes what works there; found by a review)
__all__ = ["__version__", *_READING, *(_RECORDING if _find_spec("torch") is not None else ())]


def __getattr__(name: str):
    """Import the heavy parts lazily so ``import trajscope.store`` stays cheap and cycle-free."""
    if name in _READING:
        from importlib import import_module

        return getattr(import_module(_READING[name]), name)
    if name in _RECORDING:
        try:
            from trajscope import producer

            return getattr(producer, name)
        except ImportError as err:
            if err.name != "torch":
                raise
            raise ImportError(f"trajscope.{name} records with torch, which is not installed: "
                              "pip install 'trajscope[producer]' (reading, analysis and serving do not need it)",
                              name="torch") from None
    raise AttributeError(f"module 'trajscope' has no attribute {name!r}")


from trajscope import _traj as _traj  # noqa: E402,F401  (registers ds.traj lazily)
