"""The heavy part of a request (an analysis, a series, a figure, a slice): in a worker thread, a few at a time.

A computation goes to a thread only when its turn comes under the app's work limiter
(:attr:`ApiState.max_computations`, default one per usable core, at least two); it waits for its turn on the
event loop, holding no thread. So a burst of slow requests queues behind that limit instead of taking every
thread of the server, and ``/health``, the run listings and the raw store keep answering (found by a review:
40 slow requests made ``/health`` answer after 32 s, past the image's 5 s health check). A request whose
client has gone by the time its turn comes is not computed at all (the same review: abandoned requests kept
the server busy for half a minute). One whose client goes while it computes is stopped at its next dask task: the
event loop checks the connection every :data:`WATCH_SECONDS`, and a dask callback (:class:`StopWhenAsked`) raises
:class:`ComputationStopped` in the computing thread before it hands out another task. What is already running in
the pool finishes (a thread cannot be stopped), so a computation stops within one task of each of its worker
threads; work done outside dask (a figure's drawing) runs to its end.

The callback is handed to each computation of a request's thread by the dask scheduler the server installs
(:func:`install_scheduler`: dask's threaded scheduler, given the callback explicitly), not registered in dask's
global ``Callback.active``: dask's local schedulers swap that set out for an empty one while they compute and put
back what they took when they end, so a computation that began while another ran had no callback, and one that
ended last could leave the set empty for good (found by a review: the stop then never came).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, Callable, TypeVar

import anyio
import dask
import dask.local
import dask.threaded
from dask.callbacks import Callback, normalize_callback
from fastapi import HTTPException, Request

from trajscope.api.heap import trim_when_idle
from trajscope.api.state import ApiState

T = TypeVar("T")

#: the status of a request whose client closed the connection (nginx's convention); nobody reads it
CLIENT_CLOSED = 499

#: seconds between two checks of a computing request's connection
WATCH_SECONDS = 0.25


class ComputationStopped(BaseException):
    """Raised in a computing thread when its request's client has gone. A ``BaseException``, as
    :class:`asyncio.CancelledError` is: the analyses' and figures' ``except Exception`` (a failure becomes a
    4xx, and a figure's failure is cached) must not take it for a failure of the computation."""


_asked = threading.local()  # .stop: the threading.Event of the request this thread computes for, if any


class StopWhenAsked(Callback):
    """A dask callback: before a task is handed out, it raises :class:`ComputationStopped` once ``stop`` is set
    (dask's local schedulers call it in the thread that runs the computation)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        if self.stop.is_set():
            raise ComputationStopped


def stop_if_asked() -> None:
    """Raise :class:`ComputationStopped` when this thread computes for a request whose client has gone (the
    response cache calls it while a request waits for another's build of the same answer)."""
    stop = getattr(_asked, "stop", None)
    if stop is not None and stop.is_set():
        raise ComputationStopped


def _with_stop(get: Callable[..., Any], dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """``get(dsk, keys, **kwargs)``, handed :class:`StopWhenAsked` when this thread computes for a request
    (:func:`_stoppable`), beside the callbacks the computation would have had (the ones given, else dask's
    registered ones: explicit callbacks make dask leave its global set alone, so they are passed on here)."""
    stop = getattr(_asked, "stop", None)
    if stop is not None:
        given = kwargs.get("callbacks")
        others = Callback.active if given is None else given
        kwargs["callbacks"] = (normalize_callback(StopWhenAsked(stop)), *map(normalize_callback, others))
    return get(dsk, keys, **kwargs)


# (module-level functions, not closures: dask.distributed copies the config, this scheduler with it, into the
# worker processes it starts, by pickling; found by a review: a LocalCluster of processes failed to start)
def threaded_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """dask's threaded scheduler, a request's computation stopped when its client goes."""
    return _with_stop(dask.threaded.get, dsk, keys, **kwargs)


def synchronous_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """dask's synchronous scheduler, a request's computation stopped when its client goes."""
    return _with_stop(dask.local.get_sync, dsk, keys, **kwargs)


def install_scheduler() -> bool:
    """Make :func:`threaded_get` dask's scheduler for this process (the server's), unless one is configured
    already (``dask.config`` ``scheduler``: a user's choice, or a cluster's client); True when it is in place."""
    current = dask.config.get("scheduler", None)
    if current is None:
        dask.config.set(scheduler=threaded_get)
        return True
    return current is threaded_get


def _stoppable(stop: threading.Event, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on this thread with ``stop`` as the thread's stop event (cleared after: pool threads are
    reused)."""
    _asked.stop = stop
    try:
        return fn(*args)
    finally:
        _asked.stop = None


async def _stop_when_gone(request: Request, stop: threading.Event) -> None:
    """Set ``stop`` once the client of ``request`` has closed the connection."""
    while not await request.is_disconnected():
        await asyncio.sleep(WATCH_SECONDS)
    stop.set()


def limiter(state: ApiState, name: str, tokens: int) -> anyio.CapacityLimiter:
    """The app's limiter ``name`` for the running event loop (one loop serves an app; tests run several)."""
    key = (name, id(asyncio.get_running_loop()))
    found = state.limiters.get(key)
    if found is None:
        found = state.limiters[key] = anyio.CapacityLimiter(tokens)
    return found


async def compute(request: Request, state: ApiState, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread once the work limiter lets it start; 499 when the client has gone before
    it started or while it computed (its dask tasks stop being handed out)."""
    tokens = state.computations()
    work = limiter(state, "work", tokens)
    try:
        async with work:
            if await request.is_disconnected():
                raise HTTPException(CLIENT_CLOSED, "the client closed the connection before the computation started")
            # (its own thread limiter, as large as the work limiter: the default pool's threads stay free)
            threads = limiter(state, "work-threads", tokens)
            stop = threading.Event()
            watch = asyncio.ensure_future(_stop_when_gone(request, stop))
            try:
                return await anyio.to_thread.run_sync(functools.partial(_stoppable, stop, fn, *args), limiter=threads)
            except ComputationStopped:
                raise HTTPException(CLIENT_CLOSED, "the client closed the connection: the computation was "
                                                   "stopped") from None
            finally:
                watch.cancel()
    finally:  # the last computation done: the heap its temporaries freed goes back to the system
        trim_when_idle(work.borrowed_tokens, lambda: work.borrowed_tokens == 0)


async def once(request: Request, state: ApiState, key: Any, fn: Callable[..., T], *args: Any) -> tuple[Any, T | None]:
    """``(cached, None)`` when another request was computing the answer ``key`` and it is now in the response
    cache, else ``(None, compute(fn(*args)))``. The wait is on the event loop, holding no work slot and no
    thread (found by a review: two identical requests held both slots, one of them only waiting, and every other
    request queued). Who computes ``key`` is decided on the event loop, so no two requests can both think they
    are first; a waiter whose answer was not kept (too large for the cache, or failed) computes it itself."""
    slot = (id(asyncio.get_running_loop()), key)
    while slot in state.computing:
        await state.computing[slot].wait()
        cached = state.responses.get(key)
        if cached is not None:
            return cached, None
    done = state.computing[slot] = anyio.Event()
    try:
        return None, await compute(request, state, fn, *args)
    finally:
        del state.computing[slot]
        done.set()


async def off_loop(state: ApiState, fn: Callable[..., T], *args: Any, tokens: int = 2) -> T:
    """``fn(*args)`` in a thread of a small pool of its own (``/health``'s check of the root): never waits
    behind the default pool's threads, which slow requests may all hold."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=limiter(state, "health", tokens))
