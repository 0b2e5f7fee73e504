"""The heavy part of a request (an analysis, a series, a figure, a slice): in a worker thread, a few at a time.

A computation goes to a thread only when its turn comes under the app's work limiter
(:attr:`ApiState.max_computations`, default one per usable core, at least two); it waits for its turn on the
event loop, holding no thread. So a burst of slow requests queues behind that limit instead of taking every
thread of the server, and ``/health``, the run listings and the raw store keep answering (found by a review:
40 slow requests made ``/health`` answer after 32 s, past the image's 5 s health check). A request whose
client has gone by the time its turn comes is not computed at all (the same review: abandoned requests kept
the server busy for half a minute); one already computing runs to its end, as a thread cannot be stopped.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, TypeVar

import anyio
from fastapi import HTTPException, Request

from trajscope.api.heap import trim_when_idle
from trajscope.api.state import ApiState

T = TypeVar("T")

#: the status of a request whose client closed the connection before its turn came (nginx's convention)
CLIENT_CLOSED = 499


def limiter(state: ApiState, name: str, tokens: int) -> anyio.CapacityLimiter:
    """The app's limiter ``name`` for the running event loop (one loop serves an app; tests run several)."""
    key = (name, id(asyncio.get_running_loop()))
    found = state.limiters.get(key)
    if found is None:
        found = state.limiters[key] = anyio.CapacityLimiter(tokens)
    return found


async def compute(request: Request, state: ApiState, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread once the work limiter lets it start; 499 when the client has gone."""
    tokens = state.computations()
    work = limiter(state, "work", tokens)
    try:
        async with work:
            if await request.is_disconnected():
                raise HTTPException(CLIENT_CLOSED, "the client closed the connection before the computation started")
            # (its own thread limiter, as large as the work limiter: the default pool's threads stay free)
            threads = limiter(state, "work-threads", tokens)
            return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=threads)
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
