"""What the app holds between requests: the store root, the limits, and three bounded caches.

Every cache key starts with the run's *version* — ``(run_id, status, committed_steps, updated)`` from
the run's root attributes — so a live run that commits more steps gets fresh results, while a finished
run's datasets, slices, analyses and plots are computed once.

The root attributes themselves are cached per run for at most :data:`DEFAULT_ATTRS_TTL` seconds
(:meth:`ApiState.cached_attrs`). On a local root every request also ``stat``-checks the run's ``zarr.json``
(a few microseconds) and re-reads it as soon as the writer has replaced it, so a commit is seen at
once; the TTL bounds the staleness everywhere else (object stores, or a replacement the ``stat`` cannot
tell apart). Either way a response never shows more than ``committed_steps`` as read, and never a
snapshot older than the TTL.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import xarray as xr

from trajscope.store import StoreRoot, open_run

DEFAULT_MAX_RESPONSE_BYTES = 32 * 2**20
DEFAULT_CACHE_BYTES = 256 * 2**20
#: seconds the root attributes of a run are reused before they are read again (see the module doc)
DEFAULT_ATTRS_TTL = 0.25


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
    attrs_ttl: float = DEFAULT_ATTRS_TTL
    _attrs: OrderedDict = field(default_factory=OrderedDict)
    max_attrs: int = 1024

    def _stamp(self, run_id: str) -> tuple | None:
        """Identity of a local run's ``zarr.json`` (inode, mtime, size); ``None`` for remote roots.

        :class:`FileNotFoundError` when it is gone."""
        if not self.root.is_local:
            return None
        st = os.stat(os.path.join(self.root.run_url(run_id), "zarr.json"))
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def cached_attrs(self, run_id: str) -> dict[str, Any] | None:
        """The run's root attributes if read less than :attr:`attrs_ttl` seconds ago and (local roots)
        its ``zarr.json`` is unchanged since; ``None`` means: read them with :meth:`read_attrs`.

        Never does remote I/O, so it is safe on the event loop. ``run_id`` must be validated."""
        entry = self._attrs.get(run_id)
        if entry is None:
            return None
        attrs, read_at, stamp = entry
        if time.monotonic() - read_at >= self.attrs_ttl:
            return None
        if stamp is not None:
            try:
                if self._stamp(run_id) != stamp:
                    return None
            except OSError:
                self._attrs.pop(run_id, None)
                return None
        return attrs

    def read_attrs(self, run_id: str) -> dict[str, Any]:
        """Read the run's root attributes now (and remember them for :meth:`cached_attrs`).

        :class:`RunNotFound` when there is no such run. The caller has checked that ``run_id`` is
        valid and inside the root (:func:`trajscope.api.deps.load_run`)."""
        read_at = time.monotonic()  # before the read: the entry can only look older than it is
        try:
            stamp = self._stamp(run_id)  # before the read: a replacement after it changes the stamp
        except OSError:
            stamp = None
        attrs = self.root.read_attrs(run_id)
        if stamp is not None or not self.root.is_local:
            with self._lock:
                self._attrs[run_id] = (attrs, read_at, stamp)
                self._attrs.move_to_end(run_id)
                while len(self._attrs) > self.max_attrs:
                    self._attrs.popitem(last=False)
        return attrs

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
        """Drop the cached attributes and datasets of a run (after it is deleted)."""
        with self._lock:
            self._attrs.pop(run_id, None)
            for key in [k for k in self._datasets if k[0] == run_id]:
                del self._datasets[key]
