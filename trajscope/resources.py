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
