"""Run chunk kernels with a single-threaded BLAS.

Dask already runs one kernel per core; a multi-threaded OpenBLAS inside each kernel oversubscribes the
cores, and on small matrices (``eigvalsh`` of ``h × h``) its thread hand-offs make LAPACK many times slower.
:func:`single_threaded` sets every loaded OpenBLAS (numpy's and scipy's are separate libraries) to one
thread while any kernel runs and restores the previous counts when the last one leaves.

``threadpoolctl`` finds the libraries. Its own ``limit()`` is not used to set them: for a pthreads
OpenBLAS it obeys only the first Python thread that set a limit while that thread lives (its
"controlling thread", threadpoolctl >= 3.6), so a limit entered in one dask worker thread and left
in another would be silently ignored — kernels would oversubscribe, or BLAS would stay at one thread
after the analysis (``tests/workbench/test_blas.py`` checks this from worker threads). The counts are
therefore set through each library's own ``openblas_set_num_threads`` (process-wide).
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_active = 0
_saved: list[int] = []
_apis: list[tuple] | None = None
_SUFFIXES = ("64_", "")


def _find() -> list[tuple]:
    """``(set, get)`` ctypes functions of every OpenBLAS threadpoolctl sees (found once, then cached)."""
    global _apis
    if _apis is not None:
        return _apis
    from threadpoolctl import ThreadpoolController

    apis = []
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if getattr(lib, "threading_layer", "pthreads") == "openmp":
            continue  # an OpenMP build limits per thread already
        try:
            handle = ctypes.CDLL(lib.filepath)  # already loaded: this only takes another reference
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            names = [(f"{prefix}_set_num_threads{s}", f"{prefix}_get_num_threads{s}") for s in _SUFFIXES]
            found = [(getattr(handle, a), getattr(handle, b)) for a, b in names if hasattr(handle, a) and hasattr(handle, b)]
            if found:
                apis.append(found[0])
                break
    _apis = apis
    return apis


@contextmanager
def single_threaded() -> Iterator[None]:
    """Context in which every OpenBLAS uses one thread (re-entrant across threads)."""
    global _active, _saved
    apis = _find()
    if not apis:
        yield
        return
    with _lock:
        if _active == 0:
            _saved = [int(get()) for _, get in apis]
            for setter, _ in apis:
                setter(1)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for (setter, _), count in zip(apis, _saved):
                    setter(count)
