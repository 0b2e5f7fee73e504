"""What the app holds between requests: the store root, the limits, and two bounded caches.

Every cache key starts with the run's *version* — ``(run_id, status, committed_steps, updated)`` read
fresh from the root attributes on each request — so a live run that commits more steps gets fresh
results, while a finished run's datasets, slices, analyses and plots are computed once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import xarray as xr

from trajscope.store import StoreRoot, open_run

DEFAULT_MAX_RESPONSE_BYTES = 32 * 2**20
DEFAULT_CACHE_BYTES = 256 * 2**20


class ByteLRU:
    """A thread-safe LRU of ``bytes``-like values bounded by their total size."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes // 4:
            return
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old

    def get_or_build(self, key: Hashable, build: Callable[[], Any], size: Callable[[Any], int]) -> tuple[Any, bool]:
        """The cached value, or ``build()`` once even when many requests ask at the same time.

        Returns ``(value, hit)``.
        """
        value = self.get(key)
        if value is not None:
            return value, True
        with self._lock:
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            value = self.get(key)
            if value is not None:
                return value, True
            try:
                value = build()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            self.put(key, value, size(value))
            return value, False

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class ApiState:
    """Configuration and caches of one app."""

    root: StoreRoot
    token: str | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    responses: ByteLRU = field(default_factory=lambda: ByteLRU(DEFAULT_CACHE_BYTES))
    _datasets: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    max_datasets: int = 32

    def dataset(self, run_id: str, version: tuple) -> xr.Dataset:
        """The lazy dataset of a run at ``version`` (opened once per version)."""
        key = (run_id, version)
        with self._lock:
            ds = self._datasets.get(key)
            if ds is not None:
                self._datasets.move_to_end(key)
                return ds
        ds = open_run(run_id, self.root)
        committed = int(version[1])
        if ds.sizes.get("step", 0) > committed:  # the run moved on since ``version`` was read
            ds = ds.isel(step=slice(0, committed))
            ds.attrs["committed_steps"] = committed
        with self._lock:
            self._datasets[key] = ds
            for old in [k for k in self._datasets if k[0] == run_id and k != key]:
                del self._datasets[old]
            while len(self._datasets) > self.max_datasets:
                self._datasets.popitem(last=False)
        return ds

    def forget(self, run_id: str) -> None:
        """Drop the cached datasets of a run (after it is deleted)."""
        with self._lock:
            for key in [k for k in self._datasets if k[0] == run_id]:
                del self._datasets[key]
