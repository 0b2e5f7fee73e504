"""Named points of the commit protocol, where a test can stop the writer (fault injection).

The writer calls :func:`checkpoint` at each named step of create, write, commit, finish and resume.
Normally it does nothing. With ``TRAJSCOPE_FAULT=POINT[:ACTION[:N[:PREFIX]]]`` in the environment the
writer stops at the ``N``-th time (default 1) it reaches ``POINT``, and every time after:
``kill`` (default) sends itself SIGKILL, as a crash or power cut would; ``raise`` raises
:class:`InjectedFault`, as an exception inside the writer would; ``sleep`` waits :data:`SLEEP_SECONDS` and goes
on, as a slow storage would. With ``PREFIX`` only visits whose detail
(at ``write.renaming``, the chunk's key) starts with it count: ``write.renaming:raise:1:W/c/3/`` fails the
4th chunk file of ``W`` alone, as a disk that fills up there would. The crash tests visit every point of
:data:`POINTS`; a random-time kill would miss short windows.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "TRAJSCOPE_FAULT"
#: what the ``sleep`` action waits at each visit
SLEEP_SECONDS = 0.5

#: every named point, in protocol order (tests iterate over this tuple)
POINTS: tuple[str, ...] = (
    "create.locked",  # the writer lock is held, nothing written yet
    "create.arrays",  # root document says status creating; the arrays and static data exist
    "create.attrs",  # the root attributes are written (status running, 0 committed)
    "write.renaming",  # a chunk file's bytes are in its temporary file, not yet renamed to its key (local roots)
    "write.chunk",  # one chunk's data is written, not yet committed
    "commit.attrs",  # the root attributes raising committed_steps are written
    "finish.status",  # final status + consolidated metadata (cut to committed) in one write, arrays not shrunk
    "finish.shrunk",  # arrays shrunk to the committed length, lock not yet released
    "resume.reopened",  # status set back to running by resume
    "resume.regrown",  # arrays grown back to capacity by resume
)

_hits: dict[str, int] = {}
_also_kill: list[int] = []


def also_kill(pid: int) -> None:
    """At a ``kill`` fault, SIGKILL ``pid`` first (a writer process takes its trainer with it, as a crash
    of the producer would stop both)."""
    _also_kill.append(int(pid))


class InjectedFault(RuntimeError):
    """Raised at a fault point when ``TRAJSCOPE_FAULT`` asks for ``raise``."""


def checkpoint(name: str, detail: str = "") -> None:
    """Mark that the writer reached the named point (``detail``: what it is at, e.g. a key); stop here if
    ``TRAJSCOPE_FAULT`` says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    action, _, rest = rest.partition(":")
    nth, _, prefix = rest.partition(":")
    if not detail.startswith(prefix):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] < int(nth or 1):
        return
    if action == "sleep":  # a slow storage: each visit waits (a window for signals to land in)
        time.sleep(SLEEP_SECONDS)
        return
    if action in ("", "kill"):
        for pid in _also_kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {name}")
