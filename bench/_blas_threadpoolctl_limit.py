"""The rejected variant: threadpoolctl's own limit() (see analysis/_blas.py for why), for bench/blas_threads.py."""
import threading
from contextlib import contextmanager
from threadpoolctl import ThreadpoolController
_lock = threading.Lock(); _active = 0; _limiter = None; _c = None
@contextmanager
def single_threaded():
    global _active, _limiter, _c
    with _lock:
        if _c is None: _c = ThreadpoolController().select(user_api="blas")
        if _active == 0: _limiter = _c.limit(limits=1)
        _active += 1
    try: yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0: _limiter.restore_original_limits()
