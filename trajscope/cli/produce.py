"""``trajscope produce``, ``trajscope config`` and ``trajscope resume``."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer
from rich.console import Console

from trajscope.cli.progress import progress_display, quiet_what_a_cut_leaves

if TYPE_CHECKING:
    from trajscope.producer.train import RunResult

RootOption = Annotated[
    Optional[str], typer.Option("--root", help="Store root: a directory or fsspec URL (default $TRAJSCOPE_ROOT or ./runs).")
]


def _report(console: Console, result) -> None:
    console.print(
        f"run [bold]{result.run_id}[/bold]: {result.status}, {result.committed_steps} state{'' if result.committed_steps == 1 else 's'} recorded "
        f"(last step {result.last_step}) in {result.seconds:.1f} s, final loss {result.final_loss:.4g}"
        if result.final_loss is not None
        else f"run {result.run_id}: {result.status}"
    )
    line = store_wait_line(result)
    if line:
        console.print(line, highlight=False)
    if result.final_loss is not None and not math.isfinite(result.final_loss):  # (it ended `complete`: a review)
        console.print(f"warning: the loss is {result.final_loss} at the last state: the run diverged (try a smaller "
                      "train.lr)", highlight=False)
    console.print(f"stored at {result.location}")
    if str(result.location).startswith("memory://"):  # (found by a review: a hint no other process can follow)
        console.print("a memory:// root lives in this process only: the run is gone when it exits", highlight=False)
    else:
        console.print(f'open it: python -c "import trajscope; print(trajscope.open_run(\'{result.location}\'))"')
    if result.status in ("interrupted", "failed"):  # (no hint was printed: found by a review)
        from trajscope.cli.analyze import resume_command
        from trajscope.store import resolve_run

        root, run_id = resolve_run(result.location)  # (the store knows how a run's location names its root)
        console.print(f"continue it: {resume_command(run_id, root.location)}", highlight=False)


#: a run whose loop waited for the store (and for its last writes) at least this share of its time, and at
#: least :data:`STORE_BOUND_SECONDS`, gets a hint on what to change
STORE_BOUND_SHARE = 0.05
STORE_BOUND_SECONDS = 0.5


def store_wait_line(result: RunResult) -> str | None:
    """One line on how long the training loop waited for the store, or ``None`` for a run that recorded
    nothing.

    The store's share is ``(store_wait_seconds + store_close_seconds) / seconds``: the loop's waits for a
    free chunk buffer whose chunk had reached host memory (back-pressure), and the wait for the last writes
    at the end. From :data:`STORE_BOUND_SHARE` of the run and :data:`STORE_BOUND_SECONDS` on, the store,
    not the training, set the pace, and the line says what to change for the next run. A GPU loop that ran
    ahead of its device's computation is not the store's doing: that wait is named apart.
    """
    if not result.committed_steps or not result.seconds:
        return None
    behind = result.store_wait_seconds + result.store_close_seconds
    line = (f"store: the training loop waited {result.store_wait_seconds:.2f} s for free chunk buffers and "
            f"{result.store_close_seconds:.2f} s for the last writes ({behind / result.seconds:.1%} of the run)")
    device = result.device_wait_seconds
    if device > 0.005:
        line += f"; {device:.2f} s more for the device's computation"
    if behind >= STORE_BOUND_SHARE * result.seconds and behind >= STORE_BOUND_SECONDS:
        line += ("; the store set the pace. For the next run: a faster root (a local disk), a larger "
                 "record.chunk_mib, more record.write_threads (up to the cores on a local disk), or fewer "
                 "recorded steps (record.every)")
    return line


@contextlib.contextmanager
def _user_warnings_to(console: Console):
    """Print each :class:`~trajscope.producer.data.DataWarning` (and
    :class:`~trajscope.producer.segments.ResumeWarning`) as one ``warning:`` line when it is raised."""
    from trajscope.producer.data import DataWarning
    from trajscope.producer.segments import ResumeWarning

    shown = (DataWarning, ResumeWarning)
    with warnings.catch_warnings():
        for category in shown:
            warnings.simplefilter("always", category)
        default = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, shown):
                console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, highlight=False)
            else:
                default(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _said_if_interrupted() -> Iterator[None]:
    """A Ctrl-C, SIGTERM or SIGHUP that training did not end its run for (training ends it ``interrupted`` and
    reports it): one line saying what the run was left as, exit 130 (found by a review: the command ended with
    nothing printed). Before training began that is the line below; while the run was created, or after a second
    Ctrl-C while it was ended, the producer's note on the interrupt says it (found by a review: "nothing was
    trained" was said of those too, and "resume" of a run resume refuses)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        notes = getattr(exc, "__notes__", None)
        line = notes[-1] if notes else ("interrupted before training began: nothing was trained (a run already made "
                                        "is left `interrupted`; `trajscope resume RUN` continues it)")
        print(f"trajscope: {line}", file=sys.stderr)
        quiet_what_a_cut_leaves()
        raise typer.Exit(130) from None


def _report_uncut(result: "RunResult") -> None:
    """:func:`_report`; a Ctrl-C meanwhile (the run has ended) is one line saying how, exit 130 (found by a review:
    a second Ctrl-C there ended the command with nothing printed)."""
    try:
        _report(Console(soft_wrap=True), result)
    except KeyboardInterrupt:
        from trajscope.store import resolve_run
        from trajscope.store.root import command_for

        quiet_what_a_cut_leaves()
        root, run_id = resolve_run(result.location)
        print(f"trajscope: interrupted while reporting: run {run_id} ended `{result.status}` with "
              f"{result.committed_steps} states; `{command_for('show', run_id, root.location)}` says the rest",
              file=sys.stderr)
        raise typer.Exit(130) from None


def config_path(path: Path, folder: str = "") -> Path:
    """``path``, or the packaged config it names when it is not here (:func:`trajscope.resources.packaged_config`),
    saying so on stderr."""
    from trajscope.resources import packaged_config

    found = packaged_config(path, folder)
    if found != path:
        print(f"trajscope: no {path} here: using the packaged {found}", file=sys.stderr)
    return found


def register(app: typer.Typer) -> None:
    """Add ``produce``, ``config`` and ``resume``."""

    @app.command()
    def produce(
        config: Annotated[Path, typer.Argument(help="Run config (YAML), e.g. configs/quickstart.yaml.")],
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: --set train.lr=0.01 (repeatable).")] = None,
        root: RootOption = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Run id (default: <config name>-<timestamp>).")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
        tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Tag the run (repeatable); `trajscope ls --tag T` filters.")] = None,
        note: Annotated[Optional[str], typer.Option("--note", help="A free-text note stored with the run.")] = None,
    ) -> None:
        """Train the configured network and record every step of its trajectory."""
        with _said_if_interrupted(), _user_warnings_to(Console(stderr=True)):  # (its filter outlives the other)
            from trajscope.producer import load_config  # (inside: a Ctrl-C while these load is said too, found by a
            from trajscope.producer import produce as run_produce  # review: it ended with nothing printed)
            from trajscope.store.run_attrs import labels

            resolved = load_config(config_path(config), set_)  # config errors surface before any display starts
            extra = labels(tag, note)
            if quiet:
                result = run_produce(resolved, root=root, name=name, labels=extra)
            else:
                with progress_display() as display:
                    result = run_produce(resolved, root=root, name=name, progress=display, labels=extra)
        _report_uncut(result)
        if result.status != "complete":
            raise typer.Exit(130 if result.status == "interrupted" else 1)

    @app.command("config")
    def show_config(
        config: Annotated[Optional[Path], typer.Argument(help="Run config (YAML); omitted: the defaults.")] = None,
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field (repeatable).")] = None,
    ) -> None:
        """Print the resolved config (every field, defaults filled in) as YAML."""
        import yaml

        from trajscope.producer import load_config

        print(yaml.safe_dump(load_config(config and config_path(config), set_).model_dump(mode="json"),
                             sort_keys=False), end="")

    @app.command()
    def resume(
        run: Annotated[str, typer.Argument(help="Run id under --root, or the path/URL of a <run>.zarr.")],
        root: RootOption = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    ) -> None:
        """Continue a killed or interrupted run from its last committed state."""
        with _said_if_interrupted(), _user_warnings_to(Console(stderr=True)):  # (its filter outlives the other)
            from trajscope.producer import resume as run_resume

            if quiet:
                result = run_resume(run, root=root)
            else:
                with progress_display() as display:
                    result = run_resume(run, root=root, progress=display)
        _report_uncut(result)
        if result.status != "complete":
            raise typer.Exit(130 if result.status == "interrupted" else 1)
