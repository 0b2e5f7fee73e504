"""Run chunk kernels with a single-threaded BLAS.

Dask already runs one kernel per core; a multi-threaded OpenBLAS inside each kernel oversubscribes the
cores, and on small matrices (``eigvalsh`` of ``h × h``) its thread hand-offs make LAPACK many times slower.
:func:`single_threaded` sets the OpenBLAS thread count to 1 while any kernel runs and restores it when
the last one leaves. It does nothing when the BLAS is not an OpenBLAS it can find.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_active = 0
_saved: int | None = None
_api: tuple | None = None
_NAMES = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("openblas_set_num_threads", "openblas_get_num_threads")]


def _find() -> tuple | None:
    global _api
    if _api is not None:
        return _api or None
    _api = ()
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _NAMES:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                _api = (getattr(lib, set_name), getattr(lib, get_name))
                return _api
    return None


@contextmanager
def single_threaded():
    """Context in which OpenBLAS uses one thread (re-entrant across threads)."""
    global _active, _saved
    api = _find()
    if api is None:
        yield
        return
    setter, getter = api
    with _lock:
        if _active == 0:
            _saved = int(getter())
            setter(1)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                setter(_saved)
