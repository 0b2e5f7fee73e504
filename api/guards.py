"""Requests refused before any route sees them, answered as every error is (JSON ``{"detail": ...}``).

- :class:`OneValueEach`: a query parameter given more than once (found by a review: ``?step=0:300&step=0:10``
  and ``/api/runs?status=complete&status=running`` silently took the last value; no route takes a list of
  values by repeating its parameter).
- :class:`LoopbackHostOnly`: on a server bound to a loopback address, a ``Host`` header naming another host (a
  page of another site whose name was rebound to 127.0.0.1, DNS rebinding, could read the runs otherwise).
  Starlette's ``TrustedHostMiddleware`` did this with a plain-text 400 (a review found it unlike every other
  error).
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from trajscope.api.errors import error


class OneValueEach:
    """ASGI middleware: a 400 for a query string that gives a parameter more than once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            seen: set[str] = set()
            for name, _ in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
                if name in seen:
                    shown = name if len(name) <= 40 else f"{name[:40]}..."
                    await error(400, f"query parameter {shown!r} is given more than once: give it once")(
                        scope, receive, send)
                    return
                seen.add(name)
        await self.app(scope, receive, send)


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port (``[::1]:8000`` → ``[::1]``, ``localhost:80`` →
    ``localhost``)."""
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.partition(":")[0]


class LoopbackHostOnly:
    """ASGI middleware: a 400 for a request whose ``Host`` header names none of ``names``."""

    def __init__(self, app: ASGIApp, names: Iterable[str]) -> None:
        self.app = app
        self.names = {name.lower() for name in names}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = host_name(Headers(scope=scope).get("host", "")).lower()
            if host not in self.names:
                shown = f"names the host {host[:80]!r}" if host else "names no host (no Host header)"
                accepted = ", ".join(sorted(n for n in self.names if ":" not in n or n.startswith("[")))
                await error(400, f"the request {shown}: this server listens on a loopback address and answers "
                                 f"requests addressed to {accepted} only")(scope, receive, send)
                return
        await self.app(scope, receive, send)
