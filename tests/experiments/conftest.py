"""Fixtures of the experiment tests: tiny sweep specs and tiny stand-ins for the paper's runs."""

from __future__ import annotations

import copy

import pytest

TINY_BASE = {
    "data": {"kind": "synthetic", "n": 20, "dim": 5, "mu": 0.3},
    "model": {"width": 6},
    "init": {"kind": "balanced", "scale": 1.0e-3},
    "loss": {"kind": "exp", "reduction": "mean"},
    "train": {"lr": 0.2, "steps": 300},
    "record": {"chunk_mib": 0.002},
}


def tiny_spec(name: str = "tiny", **fields) -> dict:
    """A small sweep spec (dict form) over ``data.mu``; ``fields`` replace top-level entries."""
    spec = {"name": name, "base": copy.deepcopy(TINY_BASE), "grid": {"data.mu": [0.2, 0.4]}, "seeds": [0]}
    spec.update(fields)
    return spec


@pytest.fixture(scope="session")
def spec_factory():
    return tiny_spec


@pytest.fixture(scope="session")
def tiny_base():
    return copy.deepcopy(TINY_BASE)
