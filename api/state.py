"""What the app holds between requests: the store root, the limits, and bounded caches (``cachetools``).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import xarray as xr
from cachetools import LRUCache, TLRUCache

from trajscope.store import StoreRoot, open_run
from trajscope.store.errors import object_store_error

DEFAULT_MAX_RESPONSE_BYTES = 32 * 2**20
DEFAULT_CACHE_BYTES = 256 * 2**20
#: seconds the root attributes of a run are reused before they are read again (see the module doc)
DEFAULT_ATTRS_TTL = 0.25


#: seconds between two calls of a :class:`ByteLRU`'s ``interrupt`` while a request waits for another's build
GATE_POLL_SECONDS = 0.25

#: what one cached entry costs besides its value (its key, the LRU's bookkeeping), as counted by ByteLRU
ENTRY_BYTES = 1024


class ByteLRU:
    """A thread-safe LRU of ``bytes``-like values bounded by their total size (``cachetools.LRUCache``
    with ``getsizeof``), and a single-flight :meth:`get_or_build`. Values over a quarter of the bound
    are not kept (one huge answer must not flush the cache).

    Parameters
    ----------
    max_bytes
        The bound on the values' total size (each entry counted :data:`ENTRY_BYTES` more).
    interrupt
        Called every :data:`GATE_POLL_SECONDS` while a thread waits for another's build of the same key; what
        it raises ends the wait (the server's: :func:`trajscope.api.work.stop_if_asked`, so a request whose
        client has gone stops waiting and frees its work slot).
    """

    def __init__(self, max_bytes: int, interrupt: Callable[[], None] | None = None):
        self.max_bytes = max_bytes
        self.interrupt = interrupt
        self._items: LRUCache = LRUCache(maxsize=max(int(max_bytes), 1), getsizeof=lambda item: item[1])
        # each entry also costs its key and the cache's own bookkeeping, which a body of a few bytes does not
        # show (found by a review: 20,000 one-value answers took ~1.2 KB each): counted as ENTRY_BYTES more
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
        return None if item is None else item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes // 4:
            return
        with self._lock:
            self._items[key] = (value, max(int(size), 0) + ENTRY_BYTES)

    def get_or_build(self, key: Hashable, build: Callable[[], Any], size: Callable[[Any], int]) -> tuple[Any, bool]:
        """The cached value, or ``build()`` once even when many requests ask at the same time.

        Returns ``(value, hit)``.
        """
        value = self.get(key)
        if value is not None:
            return value, True
        with self._lock:
            gate = self._building.setdefault(key, threading.Lock())
        while not gate.acquire(timeout=GATE_POLL_SECONDS):
            if self.interrupt is not None:
                self.interrupt()
        try:
            value = self.get(key)
            if value is not None:
                return value, True
            try:
                value = build()
                self.put(key, value, size(value))  # (before the gate goes: a request in between finds the value)
            finally:
                with self._lock:  # (this gate only: a waiter that built after a failed build must not take away
                    if self._building.get(key) is gate:  # the gate of a newer builder; found by a review)
                        del self._building[key]
            return value, False
        finally:
            gate.release()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class _Attrs:
    attrs: dict[str, Any]
    read_at: float  # time.monotonic() taken *before* the read
    stamp: tuple | None


#: how long a check of the served root stands (``/health``)
ROOT_CHECK_SECONDS = 5.0


def public_root(root: StoreRoot) -> str:
    """What responses may say about the served root: its last path component (``runs``), and the
    scheme for a remote one (``s3://…/prefix``) — never the absolute path on the server."""
    if root.is_local:
        return os.path.basename(root.location.rstrip(os.sep)) or "/"
    scheme, _, path = root.location.partition("://")
    return f"{scheme}://…/{path.rstrip('/').rsplit('/', 1)[-1]}"


@dataclass
class ApiState:
    """Configuration and caches of one app."""

    root: StoreRoot
    token: str | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    responses: ByteLRU = field(default_factory=lambda: ByteLRU(DEFAULT_CACHE_BYTES))
    max_datasets: int = 32
    attrs_ttl: float = DEFAULT_ATTRS_TTL
    max_attrs: int = 1024
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _datasets: LRUCache = field(init=False)
    _attrs: TLRUCache = field(init=False)
    #: run listings' attributes by run: ``(stamp, attrs)``, parsed again only when the stamp changed (local roots)
    _listed: LRUCache = field(init=False)
    #: (when, problem) of the last check of the root (:meth:`root_problem`)
    _root_checked: tuple[float, str | None] | None = field(default=None, init=False)
    #: kinds of figure a run (``(run_id, created)``) cannot show, with the reason, as learnt by drawing
    figure_failures: LRUCache = field(init=False)
    #: heavy computations (analyses, series, figures, slices) running at once; 0: one per usable core, at
    #: least 2 (:mod:`trajscope.api.work`)
    max_computations: int = 0
    #: the ``anyio`` limiters of :mod:`trajscope.api.work`, by name and event loop
    limiters: dict = field(default_factory=dict, init=False)
    #: answers being computed (:func:`trajscope.api.work.once`): ``(event loop, cache key) -> anyio.Event``
    computing: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._datasets = LRUCache(maxsize=self.max_datasets)
        # an entry expires ``attrs_ttl`` after the moment *before* its read (not its insertion)
        self._attrs = TLRUCache(maxsize=self.max_attrs, ttu=lambda _k, v, _now: v.read_at + self.attrs_ttl,
                                timer=time.monotonic)
        self.figure_failures = LRUCache(maxsize=256)
        self._listed = LRUCache(maxsize=16_384)

    def computations(self) -> int:
        """How many heavy computations may run at once (:attr:`max_computations`, or one per usable core)."""
        if self.max_computations > 0:
            return self.max_computations
        from trajscope.store.hotpath import usable_cores

        return max(2, usable_cores())

    def checked_root_problem(self) -> tuple[bool, str | None]:
        """``(True, problem)`` while the last check of the root stands (:meth:`root_problem` without I/O), else
        ``(False, None)``."""
        checked = self._root_checked
        if checked is not None and time.monotonic() - checked[0] < ROOT_CHECK_SECONDS:
            return True, checked[1]
        return False, None

    def root_problem(self) -> str | None:
        """Why the served root cannot be read (no bucket, no credentials, no permission), or ``None``: its listing
        is tried at most every :data:`ROOT_CHECK_SECONDS` (``/health``, which a container's health check polls).
        Never names the root's absolute path or bucket (see :func:`public_root`)."""
        fresh, problem = self.checked_root_problem()
        if fresh:
            return problem
        now = time.monotonic()
        try:
            if self.root.is_local and not os.path.isdir(self.root.location):
                problem = ("the served root is a file, not a folder" if os.path.exists(self.root.location)
                           else "the served root does not exist (moved or deleted)")
            # a listing that worked says enough; an empty one may be a missing bucket (asked only then: a
            # bucket-level call a prefix-scoped policy refuses reads as "missing"; found by a review)
            elif not self.root.run_ids() and self.root.missing_bucket() is not None:
                problem = "the served root's bucket does not exist: check its name, or AWS_ENDPOINT_URL"
        except Exception as err:  # noqa: BLE001 - any failure to list the root is what the check reports
            problem = object_store_error(err) or f"the served root cannot be listed: {type(err).__name__}" + (
                f" ({err.strerror})" if isinstance(err, OSError) and err.strerror else "")
        self._root_checked = (now, problem)
        return problem

    def _stamp(self, run_id: str) -> tuple | None:
        """Identity of a local run's ``zarr.json`` (inode, mtime, size); ``None`` for remote roots.

        :class:`FileNotFoundError` when it is gone."""
        return self.root.document_stamp(run_id)

    def cached_attrs(self, run_id: str) -> dict[str, Any] | None:
        """The run's root attributes if read less than :attr:`attrs_ttl` seconds ago and (local roots)
        its ``zarr.json`` is unchanged since; ``None`` means: read them with :meth:`read_attrs`.

        Never does remote I/O, so it is safe on the event loop. ``run_id`` must be validated."""
        with self._lock:
            entry = self._attrs.get(run_id)
        if entry is None:
            return None
        if entry.stamp is not None:
            try:
                if self._stamp(run_id) != entry.stamp:
                    return None
            except OSError:
                with self._lock:
                    self._attrs.pop(run_id, None)
                return None
        return entry.attrs

    def listed_attrs(self, run_id: str) -> dict[str, Any]:
        """The run's root attributes for a listing: on a local root parsed again only when its ``zarr.json`` changed
        (its inode, mtime and size: every trajscope write of it is a new file renamed over the old, a new inode).

        Found by a review: the dashboard polls ``/api/runs?status=running`` every second, and each poll parsed every
        run's whole document (consolidated metadata included: 1.13 MB for a model of 1000 tensors), about 1 s a
        poll on a root of 974 runs; a stat per run is what an unchanged run costs now."""
        if not self.root.is_local:
            return self.root.read_attrs(run_id)
        try:
            stamp = self._stamp(run_id)  # before the read: a replacement after it changes the stamp
        except OSError:
            stamp = None
        if stamp is not None:
            with self._lock:
                hit = self._listed.get(run_id)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        attrs = self.root.read_attrs(run_id)
        if stamp is not None:
            with self._lock:
                self._listed[run_id] = (stamp, attrs)
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
                self._attrs[run_id] = _Attrs(attrs, read_at, stamp)
        return attrs

    def dataset(self, run_id: str, version: tuple) -> xr.Dataset:
        """The lazy dataset of a run at ``version`` (opened once per version)."""
        key = (run_id, version)
        with self._lock:
            ds = self._datasets.get(key)
        if ds is not None:
            return ds
        ds = open_run(run_id, self.root)
        committed = int(version[1])
        if ds.sizes.get("step", 0) > committed:  # the run moved on since ``version`` was read
            ds = ds.isel(step=slice(0, committed))
            ds.attrs["committed_steps"] = committed
        with self._lock:
            for old in [k for k in self._datasets if k[0] == run_id and k != key]:
                del self._datasets[old]
            self._datasets[key] = ds
        return ds

    def forget(self, run_id: str) -> None:
        """Drop the cached attributes and datasets of a run (after it is deleted)."""
        with self._lock:
            self._attrs.pop(run_id, None)
            for key in [k for k in self._datasets if k[0] == run_id]:
                del self._datasets[key]
            for key in [k for k in self.figure_failures if k[0] == run_id]:
                del self.figure_failures[key]
