"""Fixtures of the experiment tests: tiny sweep specs and tiny stand-ins for the paper's runs."""

from __future__ import annotations

import copy
import os

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


def child_processes(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.add(int(entry))
    return found
