"""trajscope: record, analyse and serve full-resolution neural-network training trajectories.

Public face::

    import trajscope
    ds = trajscope.open_run("runs/quickstart.zarr")   # lazy xr.Dataset, trimmed to committed steps
    ds.traj.summary()                                  # the analysis accessor
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("trajscope")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_run", "list_runs", "Recorder", "produce", "load_config"]


def __getattr__(name: str):
    """Import the heavy parts lazily so ``import trajscope.store`` stays cheap and cycle-free."""
    if name in ("open_run", "list_runs"):
        from trajscope import store

        return getattr(store, name)
    if name in ("Recorder", "produce", "load_config"):
        from trajscope import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'trajscope' has no attribute {name!r}")
from trajscope.analysis import accessor as _accessor  # noqa: F401,E402  (registers ds.traj)
