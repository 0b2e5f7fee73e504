"""The server hands freed memory back (``api/heap.py``; found by a soak: 1.3 GB kept by glibc when idle).

Each case runs in a process of its own (the allocator's settings are process-wide): 20 blocks of 6 MiB are made
between small objects that stay, then freed. glibc's default keeps them (its mmap threshold rose past them when
an 8 MiB block was freed first); with the threshold bound, or after a trim, the memory goes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from trajscope.api import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's allocator only")

SCRIPT = """
import json, sys, numpy as np
from trajscope.api import heap
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024
bound = heap.bound_freed_heap() if "bound" in sys.argv else None
block = np.ones(2**20); del block
base = rss()
big, small = [], []
for _ in range(20):
    big.append(np.ones(6 * 2**17)); small.append(bytearray(65536))  # (from the heap's top: it pins the block)
held = rss()
del big
freed = rss()
if "trim" in sys.argv:
    heap.give_back_freed()
print(json.dumps({"bound": bound, "base": base, "held": held, "freed": freed, "end": rss()}))
"""


def _run(*args: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_freed_blocks_go_back_with_the_threshold_bound_or_a_trim():
    kept = _run()
    assert kept["held"] - kept["base"] >= 100  # (the 128 MiB are really made)
    bound = _run("bound")
    assert bound["bound"] is True and bound["freed"] - bound["base"] < 16, bound
    trimmed = _run("trim")
    assert trimmed["end"] - trimmed["base"] < 16, trimmed


@pytest.mark.parametrize("env", [{"TRAJSCOPE_SERVER_HEAP": "glibc"}, {"MALLOC_MMAP_THRESHOLD_": "33554432"}])
def test_the_users_own_allocator_settings_stand(env):
    result = _run("bound", "trim", **env)
    assert result["bound"] is False
    if "TRAJSCOPE_SERVER_HEAP" in env:  # glibc's behaviour altogether: nothing trimmed either
        assert result["end"] - result["base"] >= 100, result


@pytest.fixture
def no_trim_pending():
    """Wait out a trim an earlier test's server asked for (its thread would call the patched ``give_back_freed``
    when it comes due, up to :data:`heap.TRIM_SECONDS` later)."""
    import time

    deadline = time.monotonic() + heap.TRIM_SECONDS + 1
    while heap._trim_wanted.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # (a trim just cleared its request and is carrying it out)


def test_a_trim_runs_when_the_last_computation_ends_at_most_every_few_seconds(monkeypatch, no_trim_pending):
    """The last computation's memory is always given back: a trim asked for within TRIM_SECONDS of the last one is
    carried out when that time has passed (not dropped)."""
    import time

    trims = []
    monkeypatch.setattr(heap, "give_back_freed", lambda: trims.append(time.monotonic()))
    monkeypatch.setattr(heap, "TRIM_SECONDS", 0.5)
    monkeypatch.delenv(heap.HEAP_ENV, raising=False)
    heap.trim_when_idle(busy=1)  # others still computing: not yet
    time.sleep(0.3)
    assert trims == []
    heap.trim_when_idle(busy=0)
    deadline = time.monotonic() + 5
    while not trims and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(trims) == 1
    asked = time.monotonic()
    heap.trim_when_idle(busy=0)  # within TRIM_SECONDS of the last: later, not dropped
    heap.trim_when_idle(busy=0)  # (and asked twice meanwhile: once)
    time.sleep(1.5)
    assert len(trims) == 2 and trims[1] - trims[0] >= 0.5 - 0.01 and trims[1] >= asked


def test_a_deferred_trim_waits_for_a_burst_begun_meanwhile(monkeypatch, no_trim_pending):
    """Found by a review: a deferred trim ran during a new burst of computations; it now waits for their end."""
    import time

    trims, busy = [], [False]
    monkeypatch.setattr(heap, "give_back_freed", lambda: trims.append(time.monotonic()))
    monkeypatch.setattr(heap, "TRIM_SECONDS", 0.3)
    monkeypatch.delenv(heap.HEAP_ENV, raising=False)
    monkeypatch.setattr(heap, "_last_trim", time.monotonic())  # (just trimmed: the next one is deferred)
    heap.trim_when_idle(busy=0, still_idle=lambda: not busy[0])
    busy[0] = True  # a burst begins before the deferred trim is due
    time.sleep(0.8)
    assert trims == []
    busy[0] = False
    heap.trim_when_idle(busy=0, still_idle=lambda: not busy[0])  # its end asks again
    deadline = time.monotonic() + 5
    while not trims and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(trims) == 1
