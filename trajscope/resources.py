"""Files shipped with trajscope: the ready configs (``configs/`` in the repository)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def configs_dir() -> Path:
    """Folder holding ``quickstart.yaml``, ``paper/`` and ``sweeps/``.

    The repository's ``configs/`` is installed as the package ``trajscope.configs`` (package data), so a
    wheel or ``pip install --target`` copy has it too; an editable install made before that package
    existed falls back to the checkout's ``configs/``.
    """
    spec = importlib.util.find_spec("trajscope.configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parents[1] / "configs"


def packaged_config(path: Path, folder: str = "") -> Path:
    """``path`` if it names a file; else, for a relative path, the packaged config it names, if any.

    A clone's commands (``configs/quickstart.yaml``, ``configs/sweeps/epsilon.yaml``) then work from any folder of
    an installed trajscope, and so do bare names (``quickstart``, ``paper/fig5_mnist01``, ``epsilon`` for a sweep:
    ``folder="sweeps"``). Returns ``path`` unchanged when nothing matches (its reader then says it is missing).
    """
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if not parts:
        return path
    names = [Path(*parts)] + ([Path(*parts).with_name(parts[-1] + ".yaml")] if not Path(parts[-1]).suffix else [])
    for name in names:
        for base in (configs_dir(), configs_dir() / folder):
            if (base / name).is_file():
                return base / name
    return path
