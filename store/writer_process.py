"""A long-lived writer process: the store's chunk writing off the training process's GIL.

The training loop and the store's writing share two things when they live in one process: the cores
and the GIL (on a GPU, a launch-bound loop takes the GIL back after every kernel launch). Encoding,
crc32c and file writes release the GIL, but the Python around them (the write pool, the commits) does
not, and it interrupts the training thread. This module moves all of that to a second process:

- **Shared chunk buffers.** :class:`SharedChunks` lays ``slots`` chunk buffers (one array of
  ``chunk_steps`` states per time-varying variable) in one anonymous shared memory file
  (``memfd_create``). The trainer fills a slot (on the CPU one memcpy per variable per state; on a GPU
  one copy per variable per chunk, from the pinned buffer the device copied it to) and hands it off with
  one small message ``(slot, start, count)``; the writer process reads the same pages.
- **Messages** go over a Unix socket pair (:class:`multiprocessing.connection.Connection` framing);
  the shared memory and the run's lock file descriptor are passed with ``SCM_RIGHTS``.
- **The writer process** (:func:`child_main`) opens the run with its own :class:`RunWriter` (same
  attributes, the trainer's lock) and runs what the recorder's writer thread runs: ``write_block`` per
  handed-off slot on the store's write pool, ``commit_if_due`` (so a written chunk is committed within
  ``record.commit_seconds``), the lease heartbeat, and at close everything handed off, committed. It tells
  the trainer when a slot is free again (its chunk files are written), each new ``committed_steps``,
  and any error (one line).

Who holds the lock: the trainer takes the run's lock (``flock``) as before and its pid is the one the
lock file and the ``writer`` attribute name; the writer process holds a duplicate of the same open lock
file (the same ``flock``), so the lock is free only once *both* are gone. A killed trainer's writer
process sees end-of-file on its socket and exits at once (``os._exit``, nothing more written or
committed), so the run is resumable right after; :class:`~trajscope.store.locks.WriterLock` waits a
short grace period when the lock's named holder is dead but its writer process is still exiting. The
writer process only ever commits blocks whose message arrived, i.e. slots the trainer had filled
completely. A writer process that dies makes the trainer raise at its next :meth:`record` call.

Start-up (a Python interpreter importing zarr, fsspec and the store, ~0.3-1 s) is overlapped with the
producer's dataset build: :meth:`WriterProcess.start` returns at once, :meth:`WriterProcess.open` is
called when the run exists. The child imports only the store's writing modules: it registers bare
``trajscope`` and ``trajscope.store`` packages before importing them, so neither package's
``__init__`` (which loads the readers: xarray, pandas) runs there.

Signals: the writer process ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group); the
trainer turns them into an interrupt, hands off its partial chunk and closes the writer process, which
commits everything handed off, as the writer thread would.

Local roots only (object stores keep the writer thread: their leases are refreshed by the holder).
"""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Mapping

import numpy as np

from trajscope.store.chunkio import DIRECT_ALIGNMENT

#: alignment of every variable's buffer inside the shared memory
_ALIGN = DIRECT_ALIGNMENT  # each variable's buffer starts on a page: a direct write takes it as it is

#: the child's boot code: bare packages (no ``__init__`` runs), then the writer loop
_BOOT = """
import signal, sys, types
for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # Ctrl-C (a hangup) reaches the whole process group: the trainer
    if hasattr(signal, name):  # decides (found by a review: a SIGHUP killed this process, the run ended failed)
        signal.signal(getattr(signal, name), signal.SIG_IGN)
for name, path in (("trajscope", sys.argv[1]), ("trajscope.store", sys.argv[2])):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from trajscope.store.writer_process import child_main
child_main(int(sys.argv[3]))
"""


class WriterProcessError(RuntimeError):
    """The writer process failed (its error, in one line) or exited unexpectedly."""


def available() -> bool:
    """True where a writer process can be used (Linux: ``memfd_create`` and fd passing)."""
    return hasattr(os, "memfd_create") and hasattr(socket, "send_fds") and sys.platform.startswith("linux")


@dataclass(frozen=True)
class _Field:
    name: str
    shape: tuple[int, ...]  # (chunk_steps, *per-state shape)
    dtype: str
    offset: int  # of slot 0
    nbytes: int


class SharedChunks:
    """``slots`` chunk buffers of every variable in one shared memory file.

    Slot ``s`` of variable ``v`` is the C-contiguous array of shape ``(chunk_steps, *shape_v)`` at byte
    ``s · slot_bytes + offset_v`` (offsets aligned to :data:`~trajscope.store.chunkio.DIRECT_ALIGNMENT`).

    Parameters
    ----------
    shapes, dtypes
        Per-state shape and numpy dtype (string) of every variable.
    chunk_steps, slots
        States per buffer and number of buffers.
    fd
        An existing shared memory file to map (the writer process's side); ``None`` creates one.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], chunk_steps: int,
                 slots: int, fd: int | None = None) -> None:
        self.chunk_steps, self.slots = int(chunk_steps), int(slots)
        self.spec = {"shapes": {n: tuple(int(d) for d in s) for n, s in shapes.items()},
                     "dtypes": {n: str(np.dtype(dtypes[n])) for n in shapes},
                     "chunk_steps": self.chunk_steps, "slots": self.slots}
        fields, offset = [], 0
        for name, shape in self.spec["shapes"].items():
            full = (self.chunk_steps, *shape)
            nbytes = int(np.prod(full, dtype=np.int64)) * np.dtype(self.spec["dtypes"][name]).itemsize
            fields.append(_Field(name, full, self.spec["dtypes"][name], offset, nbytes))
            offset += -(-max(nbytes, 1) // _ALIGN) * _ALIGN
        self.fields = fields
        self.slot_bytes = max(offset, _ALIGN)
        size = self.slot_bytes * self.slots
        if fd is None:
            fd = os.memfd_create("trajscope-chunks", getattr(os, "MFD_CLOEXEC", 0))
            os.ftruncate(fd, size)
        self.fd = fd
        self._map = mmap.mmap(fd, size)
        self._views = [{f.name: np.ndarray(f.shape, dtype=f.dtype, buffer=self._map,
                                           offset=s * self.slot_bytes + f.offset) for f in self.fields}
                       for s in range(self.slots)]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], fd: int) -> "SharedChunks":
        """Map the buffers described by another process's :attr:`spec` from ``fd``."""
        return cls(spec["shapes"], spec["dtypes"], spec["chunk_steps"], spec["slots"], fd=fd)

    def release_fd(self) -> None:
        """Close the file descriptor (the mapping stays; the memory is freed once every view is gone)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Release the descriptor and the mapping (its own duplicate descriptor too) once nothing else uses
        them: the views are dropped here; a mapping still exported elsewhere is freed when that goes."""
        self.release_fd()
        self._views = []
        try:
            self._map.close()
        except BufferError:  # a view still alive elsewhere (a slot's tensor): freed with it
            pass

    def views(self, slot: int) -> dict[str, np.ndarray]:
        """The arrays of one slot, by variable (writable views of the shared memory)."""
        return self._views[slot]


#: the trainer's handles on its writer processes, whose sockets a child made by ``fork`` closes (see below)
_LIVE: "weakref.WeakSet[WriterProcess]" = weakref.WeakSet()


def _drop_writer_sockets_in_child() -> None:
    """In a child made by ``fork`` without ``exec`` (a DataLoader's workers beside a ``ModuleRecorder``): close
    its copies of the writer processes' sockets. The writer process stops at the end of its socket, which
    every copy keeps open, so after a killed trainer it kept the run locked while such a child lived."""
    for process in list(_LIVE):
        process._close_sockets()
    _LIVE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_writer_sockets_in_child)


class WriterProcess:
    """The trainer's handle on a writer process (see the module docstring).

    ``start()`` launches the interpreter and returns at once; ``open(...)`` gives it the run;
    ``submit(slot, start, count)`` hands off a filled slot; ``close()`` waits until everything handed off
    is committed and the process has exited. Callbacks run on a receiver thread: ``on_free(slot)``
    when a slot's chunk files are written, ``on_commit(n)`` at each commit, ``on_error(exc)`` once.
    """

    def __init__(self, proc: subprocess.Popen, sock: socket.socket) -> None:
        self.proc = proc
        self._sock = sock
        self._conn = Connection(os.dup(sock.fileno()))
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._closing = False
        self._killed = False  # kill() stopped it: its end is no error to report
        self.final: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._receiver: threading.Thread | None = None
        self._shared: SharedChunks | None = None
        _LIVE.add(self)

    @classmethod
    def start(cls) -> "WriterProcess":
        """Launch the writer process (it imports the store while the caller goes on)."""
        package = sys.modules["trajscope"]  # the parent package, loaded before any of its subpackages
        store = sys.modules["trajscope.store"]

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, list(package.__path__)[0],
                 list(store.__path__)[0], str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
            )
        except BaseException:  # (e.g. no memory to fork): no descriptor is left open
            parent.close()
            raise
        finally:
            child.close()
        return cls(proc, parent)

    # -- trainer side -------------------------------------------------------------------------------
    def open(self, writer, shared: SharedChunks, columns: Mapping[str, np.ndarray], *,
             on_free: Callable[[int], None], on_commit: Callable[[int], None],
             on_error: Callable[[BaseException], None]) -> None:
        """Give the writer process the run of ``writer`` (opened by this process, lock held here)."""
        self._shared = shared
        self._on_free, self._on_commit, self._on_error = on_free, on_commit, on_error
        lock = writer.lock
        stamp = lock.lease()
        message = {
            "location": writer.root.location, "run_id": writer.run_id, "attrs": writer.attrs,
            # the threads this side sized the shared buffers for
            "options": {"durability": writer.durability, "threads": writer.write_pool_size,
                        "commit_seconds": writer.commit_seconds, "io": writer.io},
            "lease": {k: stamp[k] for k in ("token", "host", "pid")},
            "shared": shared.spec, "columns": {n: np.asarray(c) for n, c in columns.items()},
        }
        fds = [shared.fd] + ([lock._fd] if getattr(lock, "_fd", None) is not None else [])
        try:
            self._send(("open", message))
            socket.send_fds(self._sock, [b"F"], fds)
        except OSError as exc:
            raise self._died(f"could not reach it ({exc})") from None
        finally:
            shared.release_fd()  # the writer process has its own copy now
        self._receiver = threading.Thread(target=self._receive, name="trajscope-writer-process", daemon=True)
        self._receiver.start()

    def submit(self, slot: int, start: int, count: int) -> None:
        """Hand off slot ``slot`` holding states ``start : start + count`` (filled completely)."""
        try:
            self._send(("block", slot, start, count))
        except OSError:  # the socket broke: the process died (or closed it), whichever side notices first
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._report(self._died("exited unexpectedly" if self.proc.poll() is not None else "stopped reading"))

    def close(self, timeout: float = 600.0) -> int:
        """Ask for the final commit, wait for it and for the process to exit; returns ``committed_steps``
        as the writer process last committed it (``-1`` if it never said)."""
        self._closing = True
        try:
            self._send(("close",))
        except OSError:
            pass  # gone already: its exit code tells
        if self._receiver is not None:
            self._closed.wait(timeout)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung child
            self.proc.kill()
            self.proc.wait()
        self._conn.close()
        self._sock.close()
        _LIVE.discard(self)
        return -1 if self.final is None else int(self.final["committed"])

    def kill(self) -> None:
        """Stop the writer process at once (nothing more is written or committed)."""
        self._killed = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._closing = True
        if self._receiver is not None and self._receiver is not threading.current_thread():
            # its recv() sees the end of the socket now: closing the socket under it could hand the descriptor's
            # number to a file opened meanwhile, which its next recv() would read
            self._closed.wait(5)
        self._close_sockets()
        _LIVE.discard(self)

    def _close_sockets(self) -> None:
        for closer in (self._conn.close, self._sock.close):
            try:
                closer()
            except OSError:
                pass

    def _send(self, message) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _died(self, why: str) -> WriterProcessError:
        code = self.proc.poll()
        said = f"exit code {code}" if code is not None else "still running"
        return WriterProcessError(f"the writer process (pid {self.proc.pid}) {why}; {said}")

    def _report(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self._on_error(exc)

    def _receive(self) -> None:
        try:
            while True:
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    if not self._killed and (not self._closing or self.final is None):
                        try:
                            self.proc.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            pass
                        self._report(self._died("exited unexpectedly"))
                    return
                kind = message[0]
                if kind == "free":
                    self._on_free(message[1])
                elif kind == "committed":
                    self._on_commit(message[1])
                elif kind == "error":
                    self._report(WriterProcessError(f"the writer process failed: {message[1]}"))
                elif kind == "closed":
                    self.final = message[1]
                    self._on_commit(self.final["committed"])
                    return
        finally:
            self._closed.set()


# -- the writer process ----------------------------------------------------------------------------
class _BorrowedLock:
    """The trainer's lock, seen from the writer process: the same ``flock`` (a duplicate of its file
    descriptor, kept open until exit) and the trainer's identity in every ``writer`` stamp."""

    #: (local roots only: a flock is never taken over, and documents are written without ETags)
    lost = None
    document_etag = None

    def __init__(self, lease: Mapping[str, Any], fd: int | None) -> None:
        self._lease = dict(lease)
        self._fd = fd

    def lease(self) -> dict[str, Any]:
        return {**self._lease, "heartbeat": time.time()}

    def check(self) -> None:
        pass

    def release(self) -> None:  # the trainer releases the lock
        pass


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def child_main(fd: int) -> None:
    """The writer process's main loop (see the module docstring); exits at end-of-file."""
    import trajscope.store.writer  # noqa: F401 - imported while the trainer builds its data

    sock = socket.socket(fileno=os.dup(fd))
    conn = Connection(fd)
    send_lock = threading.Lock()
    try:
        kind, message = conn.recv()
        _, fds, _, _ = socket.recv_fds(sock, 1, 2)
    except (EOFError, OSError, ValueError):
        os._exit(0)  # the trainer went away before giving a run
    try:
        _serve(conn, send_lock, message, fds)
    except (EOFError, ConnectionError):
        pass
    os._exit(0)  # no interpreter teardown: nothing may be written after the trainer is gone


def _serve(conn: Connection, send_lock: threading.Lock, message: dict, fds: list[int]) -> None:
    from trajscope.store import faults
    from trajscope.store.locks import HEARTBEAT_SECONDS
    from trajscope.store.root import StoreRoot
    from trajscope.store.writer import RunWriter

    trainer = int(message["lease"]["pid"])
    faults.also_kill(trainer)  # a "kill" fault is a crash of the producer: both processes stop

    def send(item) -> None:
        with send_lock:
            conn.send(item)

    error: list[BaseException] = []
    wake_r, wake_w = os.pipe()

    def block_done(slot: int, handle) -> None:
        if handle.exception is not None and not error:
            error.append(handle.exception)
        try:
            send(("free", slot))
        except OSError:
            pass
        os.write(wake_w, b"w")

    writer = None
    committed = handed = int(message["attrs"].get("committed_steps", 0))
    try:
        shared = SharedChunks.from_spec(message["shared"], fds[0])
        shared.release_fd()
        columns = message["columns"]
        writer = RunWriter(StoreRoot(message["location"]), message["run_id"],
                           _BorrowedLock(message["lease"], fds[1] if len(fds) > 1 else None), message["attrs"])
        writer.set_write_options(**message["options"])
    except Exception as exc:  # noqa: BLE001 - reported to the trainer
        error.append(exc)
    reported = False
    while True:
        if error and not reported:
            reported = True
            send(("error", _one_line(error[0])))
        timeout = HEARTBEAT_SECONDS / 2
        if not error and writer.written_steps > committed:
            timeout = min(timeout, max(writer.seconds_until_commit_due(), 0.005))
        ready = wait([conn, wake_r], timeout)
        if wake_r in ready:
            os.read(wake_r, 4096)
        if conn in ready:
            item = conn.recv()  # EOFError: the trainer is gone
            if item[0] == "close":
                break
            _, slot, start, count = item
            if error:
                send(("free", slot))
                continue
            try:
                values = {n: a[:count] for n, a in shared.views(slot).items()}
                values.update({n: c[start : start + count] for n, c in columns.items()})
                handle = writer.write_block(start, values)
                handed = max(handed, start + count)
                handle.add_done_callback(lambda h, s=slot: block_done(s, h))
            except Exception as exc:  # noqa: BLE001
                error.append(exc)
                send(("free", slot))
                continue
        if error:
            continue
        try:
            if writer.commit_if_due():
                committed = writer.committed_steps
                send(("committed", committed))
            elif writer.heartbeat_due():
                writer.commit(committed)
        except Exception as exc:  # noqa: BLE001
            error.append(exc)
    if not error:
        try:
            if handed > committed:
                writer.commit(handed)
                committed = handed
            writer.close_writes()
        except Exception as exc:  # noqa: BLE001
            error.append(exc)
    if error and not reported:  # (a block that failed after the last message, or during the final commit)
        send(("error", _one_line(error[0])))
    if error and writer is not None:
        try:  # best effort: every block written before the failure is committed all the same
            committed = writer.commit_written(handed)
        except Exception:  # noqa: BLE001 - the first error is the one reported
            pass
        try:
            writer.close_writes()
        except Exception:  # noqa: BLE001 - the first error is the one reported
            pass
    send(("closed", {"committed": committed}))
