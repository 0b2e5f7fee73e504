"""The ``trajscope`` command line: one typer app, one module per group of commands.

Each module exposes ``register(app)`` that adds its commands. Every error a user can fix — a
:class:`trajscope.errors.UserError` raised by our code, or a usage error found by typer's parser (an
unknown command or option, a missing argument, a bad value) — is printed as ONE line on stderr and
ends the process with exit code 2; a run whose stored data is corrupt or lost
(:class:`~trajscope.store.errors.CorruptData`), or a run that failed
(:class:`~trajscope.store.errors.RunFailed`: its writing failed, say on a full disk), is one line too, with
exit code 1; ``trajscope --help`` / ``-h`` and ``--version`` exit 0.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import warnings
from typing import Annotated, Callable, Iterator, Optional

import typer

from trajscope._signals import interrupting_signals
from trajscope.errors import UserError
from trajscope.store.errors import CorruptData, RunFailed, object_store_error

app = typer.Typer(
    name="trajscope",
    help="Record, analyse and serve full-resolution training trajectories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help text: rich markup would turn 'a:b:s' into an emoji (':b:') and wrap tables in boxes
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        import trajscope

        typer.echo(f"trajscope {trajscope.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_print_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Record, analyse and serve full-resolution training trajectories."""


from trajscope.cli import analyze, experiments, fsck, manage, produce, serve  # noqa: E402
from trajscope.cli.progress import quiet_what_a_cut_leaves  # noqa: E402

for _module in (produce, analyze, manage, serve, experiments, fsck):
    _module.register(app)


def _usage_line(err: Exception, args: list[str]) -> str:
    """One line for a usage error of typer's parser: what is wrong, and where the help is (the command's help when
    the parser gave no context but the command is known: an option missing its value, found by a review)."""
    message = " ".join(err.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        path = ctx.command_path
    else:
        names = {c.name or c.callback.__name__ for c in app.registered_commands}
        path = f"trajscope {args[0]}" if args and args[0] in names else "trajscope"
    return f"{message} (`{path} --help` shows the usage)"


#: numpy's warnings on arithmetic with inf and NaN (what a diverged run's states hold); not an overflow "in cast"
#: (a value too large for the dtype it is stored as)
NON_FINITE_WARNINGS = r"(invalid value|overflow|divide by zero) encountered in (?!cast)|All-NaN (slice|axis) encountered"


@contextlib.contextmanager
def quiet_non_finite_arithmetic() -> Iterator[None]:
    """Within it, numpy's warnings on arithmetic with a diverged run's inf and NaN are not shown (the process's
    warning filters, put back after): the analyses give NaN for such states and the commands say the run diverged,
    in one line, where these printed "RuntimeWarning: invalid value encountered in matmul" and the source line,
    from the analyses' dask threads, which ``np.errstate`` set by the caller does not reach (found by a review)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", NON_FINITE_WARNINGS, RuntimeWarning)
        yield


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``trajscope`` script: user errors become one line on stderr, exit 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:  # bare `trajscope`: the help, and the exit code of a usage error
        app(["--help"], prog_name="trajscope", standalone_mode=False)
        raise SystemExit(2)
    restore = _sigterm_interrupts()
    try:
        with quiet_non_finite_arithmetic():
            code = app(args, prog_name="trajscope", standalone_mode=False)  # returns the code of typer.Exit
        if code == 130:
            quiet_what_a_cut_leaves()
        if code == 130 and args[0] in ("sweep", "reproduce"):  # Ctrl-C, SIGTERM (found by a review: it said nothing)
            print("trajscope: interrupted: the runs that were training end `interrupted`; run the same command to go "
                  "on (finished runs are skipped, interrupted ones resumed)", file=sys.stderr)
        elif code == 130 and args[0] not in ("produce", "resume"):  # (they say what became of the run themselves)
            print("trajscope: interrupted", file=sys.stderr)  # (found by a review: `show`, `export` ended silently;
            # typer returns a Ctrl-C as the code 130)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except UserError as err:
        print(f"trajscope: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (CorruptData, RunFailed) as err:  # the command was fine, the stored run (or the run itself) is not:
        print(f"trajscope: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line too (a device's error
        raise SystemExit(1) from None  # may span several), exit 1
    except typer.Abort:
        raise SystemExit(130) from None
    except ImportError as err:
        if err.name != "torch":
            raise
        print("trajscope: error: recording needs torch, which is not installed: "
              "pip install 'trajscope[producer]' (reading, analysis and serving do not need it)", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.TyperException as err:  # typer's vendored click: usage errors, bad parameters, no such file
        if hasattr(err, "format_message"):
            print(f"trajscope: error: {_usage_line(err, args)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except typer.Exit as err:
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        from trajscope.store.integrity import is_checksum_error

        if is_checksum_error(err):  # zarr's own read found it (a chunk read outside the store's checks)
            print("trajscope: error: a stored chunk of the run failed its checksum (its data is corrupt on storage): "
                  "`trajscope fsck RUN` names the chunks and what to do", file=sys.stderr)
            raise SystemExit(1) from None
        line = object_store_error(err) or _os_error(err)
        if line is None:
            raise
        print(f"trajscope: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        restore()


def _sigterm_interrupts() -> Callable[[], None]:
    """From the first line of a command on, SIGTERM interrupts it as Ctrl-C does; returns the undo.

    Found by a review of the images: ``trajscope`` is PID 1 of a container, and the kernel drops a signal PID 1
    has no handler for. Training installs its own (``sigterm_as_interrupt``) only once the run is set up, so a
    ``podman stop`` in the first seconds (imports, dataset build, run creation) was ignored until the SIGKILL
    after the grace period, which left the run ``running``. Now it ends the command at once: no run yet, or
    the run ended ``interrupted`` by its setup's clean-up.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    # (SIGINT keeps Python's own handler, which raises KeyboardInterrupt too, unless it was inherited ignored: a
    # command started with `&` by a script, which training interrupts on SIGINT all the same; found by a review:
    # a SIGINT before training was dropped, one during training ended the run; SIGHUP: see interrupting_signals)
    previous = {sig: signal.signal(sig, interrupt) for sig in interrupting_signals()
                if sig != signal.SIGINT or signal.getsignal(signal.SIGINT) == signal.SIG_IGN}
    kept = {sig: old for sig, old in previous.items() if old is not None}  # (one not set from Python: cannot be
    return lambda: [signal.signal(sig, old) for sig, old in kept.items()]  # put back from here)


#: errors of the file system the user can fix: one line saying which path and what to do, not a traceback (found
#: by a review: a read-only root or output folder printed OSError tracebacks from produce, resume, tag, rm and
#: export). The advice fits the error and any command: a read (``show``, ``fsck``) meets EACCES too, where
#: "choose another --root" alone was odd advice.
_OS_ERRORS = {
    errno.EROFS: ("the file system is read-only", "this command writes there: use a writable --root or output path"),
    errno.EACCES: ("permission denied", "give this user access to it, or use another --root or output path"),
    errno.EPERM: ("operation not permitted", "give this user access to it, or use another --root or output path"),
    errno.ENOSPC: ("no space left on the device", "free space there, or use another --root or output path"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota, or use another --root or output path"),
    errno.ENAMETOOLONG: ("a file name is too long", "use a shorter run name, --root or output path"),
}


def _os_error(err: BaseException) -> str | None:
    """One line for an ``OSError`` of :data:`_OS_ERRORS` (also as the cause of another error), else ``None``."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in _OS_ERRORS:
            what, advice = _OS_ERRORS[err.errno]
            where = f" at {err.filename}" if err.filename else ""  # (reading or writing: EACCES is either)
            if err.errno in (errno.EACCES, errno.EPERM) and hasattr(os, "getuid"):  # (an image's user is uid
                where += f" (for uid {os.getuid()})"  # 10001, not the host's: found by a review)
            return f"{what}{where}: {advice}"
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None
