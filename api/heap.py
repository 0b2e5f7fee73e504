"""The server's freed memory handed back to the system (glibc's allocator; a no-op on any other C library).

Found by a measurement of a server under load (a helper's soak of ``trajscope serve``, three runs of 0.1–0.5 GB,
three clients): its resident memory rose to about 1.3 GB and stayed there when idle, of which about 175 MB were
the imports, at most 25 MB the response cache, and about 1 GB heap that the requests had freed and glibc kept.
glibc raises its ``mmap`` threshold as large blocks are freed (up to 32 MiB on 64-bit), so the multi-MB numpy
temporaries of an analysis come from the heaps of up to 8 arenas a core, and stay there once freed.

Two remedies, both standard ``mallopt``/``malloc_trim`` calls:

- :func:`bound_freed_heap` fixes the threshold at :data:`MMAP_THRESHOLD_BYTES`: a block that large is mapped for
  itself and unmapped when freed. ``trajscope serve`` calls it at start-up.
- :func:`give_back_freed` (``malloc_trim(0)``) returns the free pages of every arena; the server calls it when its
  last computation ends (:func:`trim_when_idle`), at most every :data:`TRIM_SECONDS`.

A user's own ``MALLOC_MMAP_THRESHOLD_`` (or ``MALLOC_TOP_PAD_``/``MALLOC_TRIM_THRESHOLD_``) is left to glibc:
the threshold is not set then. ``TRAJSCOPE_SERVER_HEAP=glibc`` keeps glibc's own behaviour altogether (no
threshold, no trimming): the baseline of ``bench/server_memory.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import time
from typing import Callable

#: blocks of at least this many bytes are mapped for themselves (glibc starts at 128 KiB and raises it to up to
#: 32 MiB; ``bench/server_memory.py``: 128 KiB, 1 MiB and 4 MiB kept the same memory, 4 MiB at the least cost)
MMAP_THRESHOLD_BYTES = 4 * 2**20
#: ``mallopt`` parameter number of the mmap threshold (glibc's ``M_MMAP_THRESHOLD``)
M_MMAP_THRESHOLD = -3
#: the server trims its heap at most this often
TRIM_SECONDS = 5.0
#: environment variable: ``glibc`` keeps the allocator's own behaviour
HEAP_ENV = "TRAJSCOPE_SERVER_HEAP"
#: glibc's own settings, when a user gives one: theirs stands
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_last_trim = -TRIM_SECONDS
_trim_guard = threading.Lock()
_trim_wanted = threading.Event()
_trimmer: threading.Thread | None = None
_still_idle: Callable[[], bool] = lambda: True


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it (``None`` elsewhere: musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _mode() -> str:
    """``TRAJSCOPE_SERVER_HEAP``: ``glibc`` (nothing done), ``trim`` (trimmed when idle) or ``bound`` (also the
    threshold; the default)."""
    return os.environ.get(HEAP_ENV, "").strip().lower() or "bound"


def _enabled() -> bool:
    return _mode() != "glibc" and _glibc() is not None


def bound_freed_heap() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` (``mallopt(M_MMAP_THRESHOLD, 4 MiB)``), so large
    freed blocks go back to the system at once; True when set (not on another C library, not where the user set
    glibc's own variables, not with ``TRAJSCOPE_SERVER_HEAP`` ``glibc`` or ``trim``)."""
    if not _enabled() or _mode() != "bound" or any(name in os.environ for name in _GLIBC_ENV):
        return False
    return bool(_glibc().mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def give_back_freed() -> None:
    """Return every arena's free pages to the system (``malloc_trim(0)``); nothing where not enabled."""
    if _enabled():
        _glibc().malloc_trim(0)


def trim_when_idle(busy: int, still_idle: Callable[[], bool] = lambda: True) -> None:
    """Called as a computation ends, ``busy`` the computations still running: when none is, the heap is trimmed by
    a thread of its own (the response is not held for it), at most every :data:`TRIM_SECONDS`; a request for a
    trim within that time is carried out when it has passed, so the last computation's memory is always given
    back, unless ``still_idle()`` then says computations have started again (their end asks anew)."""
    global _trimmer, _still_idle
    if busy or not _enabled():
        return
    _still_idle = still_idle
    with _trim_guard:
        if _trimmer is None or not _trimmer.is_alive():
            _trimmer = threading.Thread(target=_trim_on_request, name="trajscope-heap-trim", daemon=True)
            _trimmer.start()
    _trim_wanted.set()


def _trim_on_request() -> None:
    global _last_trim
    while True:
        _trim_wanted.wait()
        wait = _last_trim + TRIM_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        _trim_wanted.clear()
        if _still_idle():  # (a burst begun meanwhile: trimmed when it ends, not during it)
            give_back_freed()
            _last_trim = time.monotonic()
