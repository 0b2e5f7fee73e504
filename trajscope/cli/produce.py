"""``trajscope produce``, ``trajscope resume`` and ``trajscope ls``."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

RootOption = Annotated[
    Optional[str], typer.Option("--root", help="Store root: a directory or fsspec URL (default $TRAJSCOPE_ROOT or ./runs).")
]


class _ProgressDisplay:
    """A rich progress bar fed by the training loop's progress callback (steps/s, loss, committed)."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step {task.completed:>8.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[rate]:>8.0f} steps/s"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("committed {task.fields[committed]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = None
        self.first: tuple[int, float] | None = None

    def __enter__(self) -> "_ProgressDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, info: dict) -> None:
        if self.task is None:
            self.task = self.progress.add_task("training", total=info["steps"], rate=0.0, loss="-", committed=0)
            self.first = (info["step"], info["elapsed"])
        done_steps = info["step"] - self.first[0]
        seconds = info["elapsed"] - self.first[1]
        loss = "-" if info["loss"] is None else f"{info['loss']:.4g}"
        self.progress.update(self.task, completed=info["step"], rate=done_steps / seconds if seconds > 0 else 0.0,
                             loss=loss, committed=info["committed"])


def _report(console: Console, result) -> None:
    console.print(
        f"run [bold]{result.run_id}[/bold]: {result.status}, {result.committed_steps} states recorded "
        f"(last step {result.last_step}) in {result.seconds:.1f} s, final loss {result.final_loss:.4g}"
        if result.final_loss is not None
        else f"run {result.run_id}: {result.status}"
    )
    console.print(f"stored at {result.location}")
    console.print(f'open it: python -c "import trajscope; print(trajscope.open_run(\'{result.location}\'))"')


@contextlib.contextmanager
def _data_warnings_to(console: Console):
    """Print each :class:`~trajscope.producer.data.DataWarning` as one ``warning:`` line when it is raised."""
    from trajscope.producer.data import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        default = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, DataWarning):
                console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, highlight=False)
            else:
                default(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def register(app: typer.Typer) -> None:
    """Add ``produce``, ``resume`` and ``ls``."""

    @app.command()
    def produce(
        config: Annotated[Path, typer.Argument(help="Run config (YAML), e.g. configs/quickstart.yaml.")],
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field: --set train.lr=0.01 (repeatable).")] = None,
        root: RootOption = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Run id (default: <config name>-<timestamp>).")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    ) -> None:
        """Train the configured network and record every step of its trajectory."""
        from trajscope.producer import load_config
        from trajscope.producer import produce as run_produce

        resolved = load_config(config, set_)  # config errors surface before any display starts
        err = Console(stderr=True)
        with _data_warnings_to(err):
            if quiet:
                result = run_produce(resolved, root=root, name=name)
            else:
                with _ProgressDisplay(err) as display:
                    result = run_produce(resolved, root=root, name=name, progress=display)
        _report(Console(soft_wrap=True), result)
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

        print(yaml.safe_dump(load_config(config, set_).model_dump(mode="json"), sort_keys=False), end="")

    @app.command()
    def resume(
        run: Annotated[str, typer.Argument(help="Run id under --root, or the path/URL of a <run>.zarr.")],
        root: RootOption = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    ) -> None:
        """Continue a killed or interrupted run from its last committed state."""
        from trajscope.producer import resume as run_resume

        if quiet:
            result = run_resume(run, root=root)
        else:
            with _ProgressDisplay(Console(stderr=True)) as display:
                result = run_resume(run, root=root, progress=display)
        _report(Console(soft_wrap=True), result)
        if result.status != "complete":
            raise typer.Exit(130 if result.status == "interrupted" else 1)

    @app.command("ls")
    def list_command(root: RootOption = None) -> None:
        """List the runs under the store root: status, recorded states, size, created."""
        from trajscope.store import StoreRoot, list_runs

        store_root = StoreRoot(root)
        runs = list_runs(store_root)
        table = Table(title=f"runs in {store_root.location}")
        for column in ("run", "status", "states", "size", "created"):
            table.add_column(column, justify="right" if column in ("states", "size") else "left")
        for info in runs:
            table.add_row(info.run_id, info.status, f"{info.committed_steps}/{info.capacity}",
                          f"{info.size_bytes / 2**20:.1f} MiB", info.created or "-")
        Console(soft_wrap=True).print(table if runs else f"no runs in {store_root.location}")
