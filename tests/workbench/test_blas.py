"""The analysis kernels' single-threaded BLAS, through threadpoolctl, nested across threads."""

from __future__ import annotations

import threading

from threadpoolctl import threadpool_info, threadpool_limits

from trajscope.analysis._blas import single_threaded


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_one_thread_inside_restored_after_the_last_kernel_leaves():
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        inside, release = threading.Event(), threading.Event()

        def kernel():
            with single_threaded():
                inside.set()
                release.wait(30)

        other = threading.Thread(target=kernel)
        other.start()
        inside.wait(30)
        with single_threaded():
            assert blas_threads() == {1}
        assert blas_threads() == {1}  # the other kernel is still running: no restore yet
        release.set()
        other.join(30)
        assert blas_threads() == {2}
