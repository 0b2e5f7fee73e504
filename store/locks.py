"""One writer per run.

* Local roots: an exclusive ``flock`` on ``<root>/.locks/<run_id>.lock``. The kernel releases it when
  the writer process dies (even by SIGKILL), so a crashed run can be resumed at once.
* Remote roots (object stores have no locks): a lease in the root attributes. The writer stamps
  ``writer.heartbeat`` at every commit and at least every :data:`HEARTBEAT_SECONDS`; another writer is
  refused while the run is ``running`` with a heartbeat younger than :data:`LEASE_SECONDS`. Within one
  process a registry refuses a second writer at once. Two writers starting within the same instant on
  an object store can both win — documented, not hidden.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from trajscope.store.errors import RunLocked
from trajscope.store.root import StoreRoot

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0

_HELD: set[tuple[str, str]] = set()
_HELD_GUARD = threading.Lock()


class WriterLock:
    """Exclusive right to write one run; use as a context manager or call :meth:`release`."""

    def __init__(self, root: StoreRoot, run_id: str):
        self.root = root
        self.run_id = run_id
        self.token = uuid.uuid4().hex
        self._fd: int | None = None
        self._key = (root.location, run_id)

    def lease(self) -> dict[str, Any]:
        """The ``writer`` attribute stamped into the run at each commit."""
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def acquire(self) -> "WriterLock":
        """Take the lock or raise :class:`RunLocked` naming the holder."""
        with _HELD_GUARD:
            if self._key in _HELD:
                raise RunLocked(f"run {self.run_id!r} is already being written by this process")
            _HELD.add(self._key)
        try:
            if self.root.is_local:
                self._acquire_flock()
            else:
                self._check_lease()
        except BaseException:
            with _HELD_GUARD:
                _HELD.discard(self._key)
            raise
        return self

    def _acquire_flock(self) -> None:
        import fcntl

        path = self.root.lock_path(self.run_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"run {self.run_id!r} is being written by {holder}; wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd

    def _check_lease(self) -> None:
        if not self.root.exists(self.run_id):
            return
        attrs = self.root.read_attrs(self.run_id)
        writer = attrs.get("writer") or {}
        age = time.time() - float(writer.get("heartbeat", 0))
        if attrs.get("status") == "running" and age < LEASE_SECONDS:
            raise RunLocked(
                f"run {self.run_id!r} is being written by pid {writer.get('pid')} on {writer.get('host')} "
                f"(heartbeat {age:.0f} s ago); retry after {LEASE_SECONDS:.0f} s without a heartbeat"
            )

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with _HELD_GUARD:
            _HELD.discard(self._key)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
