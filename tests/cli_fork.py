"""``trajscope ARGS`` in a process of its own, forked from a warm interpreter: the tests' command-line runs.

A fresh ``python -c "from trajscope.cli import main; main()"`` spends seconds (on the CI's 2 cores) importing
trajscope, typer, xarray, s3fs and torch before the command starts, and as many tearing them down after; the suite
runs a few hundred commands.
:func:`run` asks a *zygote* instead, an interpreter started once per test session that imported those modules and
then only forks, for a child per command. The child is a real process: its own pid and exit code, its stdin, stdout
and stderr (files here), the caller's ``os.environ`` and working directory at the call, its own warning registry,
signal handlers and ``atexit``; from there it runs what ``python -c`` runs (an uncaught exception prints its
traceback and exits 1, ``SystemExit`` gives the exit code, a signal's death the negative signal number), and exits
as an interpreter does short of tearing down its modules (:func:`execute`).

What it does not repeat is the import. A test of what happens *as the modules load* (a module blocked before the
import, an environment variable a library reads as it loads) runs a fresh interpreter: :func:`run` does when the
variables read at an interpreter's or a library's start (``PYTHON*``, ``OMP_*``, ``MALLOC_*``..., less
:data:`NOT_STARTUP`) differ from the zygote's, and :func:`fresh` does for a ``prelude`` (``tests/workbench/conftest.py: cli``).
The zygote forks only while it runs no Python thread besides its main one (a fork of a threaded process can inherit
a held lock; the native threads that numpy's BLAS, torch and pyarrow's allocator start as they load mend themselves
at a fork, as torch's data loaders rely on), one command at a time; otherwise, or if it is gone, :func:`run` falls
back to a fresh interpreter.
"""

from __future__ import annotations

import atexit
import collections
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading

#: what the commands' processes run (as ``python -c``)
COMMAND = "from trajscope.cli import main; main()"
#: imported once by the zygote: what the commands would import (each is optional)
WARM = ("trajscope.cli", "trajscope.store", "trajscope.analysis", "trajscope.producer", "trajscope.experiments.sweep",
        "trajscope.api.app", "torch", "xarray", "dask.array", "matplotlib.pyplot", "s3fs", "uvicorn")
#: prefixes of the environment variables read as an interpreter or a library starts (not KMP_: threadpoolctl sets
#: KMP_DUPLICATE_LIB_OK in the tests' process as it inspects the BLAS libraries, and Intel's OpenMP is not loaded here)
STARTUP_ENV = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "GOMP_", "MALLOC_", "LD_", "TORCH_", "MPLBACKEND")

_LAUNCH = ("import importlib.util, sys\n"
           "spec = importlib.util.spec_from_file_location('_trajscope_cli_fork', sys.argv[1])\n"
           "fork = importlib.util.module_from_spec(spec)\n"
           "spec.loader.exec_module(fork)\n"
           "fork.become(fork.zygote(int(sys.argv[2])))\n"  # (returns in each child only)
           "fork.execute()\n")


#: start-up variables that dask's ``Nanny`` writes into the tests' own ``os.environ`` as it spawns its workers (its
#: ``distributed.nanny.pre-spawn-environ``: thread counts of 1, a glibc trim threshold, a hash seed), left set for the
#: rest of the session: a command forked after them runs as one run before any dask test would (found by the CI, where
#: they sent 110 of 139 commands to fresh interpreters); PYTHONUNBUFFERED is the child's streams' (see :func:`become`)
NOT_STARTUP = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
                         "PYTHONHASHSEED", "PYTHONUNBUFFERED"})


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_ENV) and k not in NOT_STARTUP}


# -- the zygote's side ------------------------------------------------------------------------------------------
def zygote(fd: int) -> dict:
    """Import :data:`WARM`, then fork a child per request read from socket ``fd`` (one JSON line each), answering
    ``{"pid": n}`` (0 when it cannot fork: ``why``) and then ``{"code": exit code}``. Returns the request in each child;
    exits at the end of the socket."""
    conn = socket.socket(fileno=fd)
    for name in WARM:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - not installed here: the command imports it itself, if it needs it
            pass
    reader = conn.makefile("rb")

    def answer(message: dict) -> None:
        conn.sendall(json.dumps(message).encode() + b"\n")

    gc.freeze()  # (what it imported is never traversed by a child's collections, nor copied for them)
    answer({"ready": True})
    while True:
        line = reader.readline()
        if not line:
            os._exit(0)
        request = json.loads(line)
        if threading.active_count() != 1:
            answer({"pid": 0, "why": f"the zygote runs {threading.active_count()} Python threads"})
            continue
        pid = os.fork()
        if pid == 0:
            reader.close()
            conn.close()
            return request
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"code": os.waitstatus_to_exitcode(status)})


def become(request: dict) -> None:
    """In the child: the caller's working directory, environment, arguments and standard streams."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, request["stdin"], os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                            (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
    unbuffered = bool(request["env"].get("PYTHONUNBUFFERED"))  # (the child's streams: set as Python sets them)
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if unbuffered else -1, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
    sys.argv = ["-c", *request["args"]]


def execute() -> None:
    """In the child: run :data:`COMMAND` as ``python -c`` does, and exit as it does, up to the interpreter's teardown,
    which is skipped (``os._exit`` once the threads are joined, the ``atexit`` functions run and the streams flushed):
    tearing down the zygote's modules takes longer than most commands run."""
    code = 0
    try:
        exec(compile(COMMAND, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # as Python does: the process ends by SIGINT
        _end()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - the traceback, exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    _end()
    os._exit(code)


def _end() -> None:
    threading._shutdown()  # (the non-daemon threads, as at an interpreter's exit)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


# -- the tests' side --------------------------------------------------------------------------------------------
class _Zygote:
    def __init__(self) -> None:
        parent, child = socket.socketpair()
        self.log = tempfile.TemporaryFile()  # (its stderr: why it failed to start, if it did)
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, __file__, str(child.fileno())],
                                         pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self.log)
        finally:
            child.close()
        self.conn, self._buffer = parent, b""
        self.startup_env = _startup_env(dict(os.environ))
        self.ready = self.answer(timeout=300).get("ready", False)

    def answer(self, timeout: float) -> dict:
        """The zygote's next answer (``TimeoutError`` past ``timeout`` seconds; the socket stays usable)."""
        self.conn.settimeout(timeout)
        while b"\n" not in self._buffer:
            data = self.conn.recv(65536)
            if not data:
                raise EOFError("the zygote is gone")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.conn.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


_zygote: _Zygote | None = None
_failed = False
_guard = threading.Lock()  # one command at a time through the zygote


def _get() -> _Zygote | None:
    global _zygote, _failed
    if _zygote is None and not _failed:
        try:
            _zygote = _Zygote()
            atexit.register(_zygote.close)
        except Exception:  # noqa: BLE001 - commands then run in fresh interpreters
            _failed = True
    if _zygote is not None and (not _zygote.ready or _zygote.proc.poll() is not None):
        _zygote, _failed = None, True
    return _zygote


#: how the commands ran: ``"forked"``, or why a fresh interpreter (the session's summary shows it)
counts: collections.Counter[str] = collections.Counter()


def fresh(args: tuple[str, ...], *, input: str | None, env: dict | None, timeout: float, prelude: str = "",
          cwd: str | os.PathLike | None = None, why: str = "asked for") -> subprocess.CompletedProcess:
    """``trajscope ARGS`` in a fresh interpreter (``prelude`` is Python run first); ``why`` is counted."""
    counts[f"fresh ({why})"] += 1
    return subprocess.run([sys.executable, "-c", prelude + COMMAND, *args], capture_output=True, text=True,
                          input=input, env=env, timeout=timeout, cwd=cwd)


def run(args: tuple[str, ...] | list[str], *, input: str | None = None, timeout: float = 300, env: dict | None = None,
        cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``trajscope ARGS`` in a child of the zygote (see the module docstring), else in a fresh interpreter; as
    ``subprocess.run([...], capture_output=True, text=True, input=input, timeout=timeout, env=env, cwd=cwd)`` returns
    it (``env`` None: this process's environment now)."""
    env = dict(os.environ if env is None else env)
    if _guard.acquire(blocking=False):
        try:
            zygote = _get()
            if zygote is None:
                why = "no zygote"
            elif _startup_env(env) != zygote.startup_env:
                changed = sorted(k for k in _startup_env(env).keys() | zygote.startup_env.keys()
                                 if env.get(k) != zygote.startup_env.get(k))
                why = f"start-up environment changed: {', '.join(changed)}"
            else:
                return _run_forked(zygote, tuple(args), input, env, timeout, os.path.abspath(cwd or os.getcwd()))
        finally:
            _guard.release()
    else:
        why = "another thread's command under way"
    return fresh(tuple(args), input=input, env=env, timeout=timeout, cwd=cwd, why=why)


def _run_forked(zygote: _Zygote, args, input, env, timeout, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", COMMAND, *args]
    with tempfile.TemporaryDirectory(prefix="trajscope-cli-") as folder:
        paths = {name: os.path.join(folder, name) for name in ("stdin", "stdout", "stderr")}
        for name in paths:
            with open(paths[name], "w") as file:
                file.write((input or "") if name == "stdin" else "")
        if input is None:
            paths["stdin"] = os.devnull
        try:
            zygote.conn.sendall(json.dumps({"args": list(args), "cwd": cwd, "env": env, **paths}).encode() + b"\n")
            forked = zygote.answer(timeout=60)
        except (OSError, EOFError):  # the zygote died or stopped answering: no more forks this session
            zygote.ready = False
            return fresh(args, input=input, env=env, timeout=timeout, cwd=cwd, why="the zygote died")
        pid = forked["pid"]
        if not pid:  # it cannot fork now
            return fresh(args, input=input, env=env, timeout=timeout, cwd=cwd, why=f"zygote: {forked['why']}")
        counts["forked"] += 1
        try:
            code = zygote.answer(timeout=timeout)["code"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            zygote.answer(timeout=60)
            out, err = (open(paths[name]).read() for name in ("stdout", "stderr"))
            raise subprocess.TimeoutExpired(command, timeout, out, err) from None
        out, err = (open(paths[name]).read() for name in ("stdout", "stderr"))
    return subprocess.CompletedProcess(command, code, out, err)
