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

try:
    __version__ = _metadata.version("trajscope")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_run", "list_runs", "ModuleRecorder", "Recorder", "produce", "load_config"]


def __getattr__(name: str):
    """Import the heavy parts lazily so ``import trajscope.store`` stays cheap and cycle-free."""
    if name in ("open_run", "list_runs"):
        from trajscope import store

        return getattr(store, name)
    if name in ("ModuleRecorder", "Recorder", "produce", "load_config"):
        from trajscope import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'trajscope' has no attribute {name!r}")


from trajscope import _traj as _traj  # noqa: E402,F401  (registers ds.traj lazily)
