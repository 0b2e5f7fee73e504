"""``trajscope show`` and ``trajscope plot``: a run's headline numbers and its figures."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from trajscope.errors import UserError

if TYPE_CHECKING:
    import xarray as xr

STEP_HELP = "Recorded states to use, a:b:s (a, b: optimizer steps, both included; s: stride over recorded states)."
ROOT_HELP = "Store root (directory or fsspec URL); default $TRAJSCOPE_ROOT or ./runs."


def parse_step(text: str | None) -> slice | None:
    """``"a:b:s"`` (any part may be empty) → ``slice(a, b, s)``; ``None`` → ``None``."""
    if text is None or text.strip() in ("", ":"):
        return None
    parts = text.split(":")
    if len(parts) > 3:
        raise UserError(f"--step {text!r}: use a:b:s, e.g. 0:5000:10")
    try:
        values = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        raise UserError(f"--step {text!r}: a, b and s must be integers, e.g. 0:5000:10") from None
    if values[2] is not None and values[2] < 1:
        raise UserError(f"--step {text!r}: the stride s must be a positive integer")
    if any(v is not None and v < 0 for v in values[:2]):  # (-5: read as "from step -5", i.e. everything)
        raise UserError(f"--step {text!r}: steps count from 0 (the initial state); a negative step is none, e.g. 0:5000")
    if values[0] is not None and values[1] is not None and values[0] > values[1]:
        raise UserError(f"--step {text!r}: the first step a must not exceed the last step b, e.g. "
                        f"{values[1]}:{values[0]}")
    if len(parts) == 1:  # a single step
        return slice(values[0], values[0])
    return slice(*values)


def resume_command(run_id: str, root_location: str) -> str:
    """``trajscope resume RUN``, with ``--root`` unless the run is under the default root (a hint without it
    named no run: found by a review)."""
    from trajscope.store.root import command_for

    return command_for("resume", run_id, root_location)


def resume_hint(run_id: str, root_location: str, attrs: dict) -> str:
    """How to continue a stopped run: :func:`resume_command`, or for a run recorded from a script
    (``ModuleRecorder``, which ``trajscope resume`` refuses) that script with ``resume=True``."""
    from trajscope.store.schema import is_module_run

    if is_module_run(attrs):
        return "ModuleRecorder(..., resume=True) in its script"
    return f"`{resume_command(run_id, root_location)}`"


def no_state_yet(run: str, ds: xr.Dataset) -> UserError:
    """A run with no committed state: wait for its producer, or, where none is left, resume it (the hint was to
    wait even for a run whose producer was killed: found by a review)."""
    from trajscope.store import StoreRoot
    from trajscope.store.locks import writer_gone

    if ds.attrs.get("status") == "running":
        if not writer_gone(StoreRoot(ds.attrs["root"]), ds.attrs["run_id"]):
            return UserError(f"run {run!r} has no committed steps yet: wait for the producer to commit a chunk")
    if ds.attrs.get("status") == "complete":  # (found by a review: it was told to resume a complete run)
        return UserError(f"run {run!r} is complete with no recorded state (its script never called record()): "
                         "there is nothing to show; record again under another name")
    again = resume_hint(ds.attrs["run_id"], ds.attrs["root"], ds.attrs)
    return UserError(f"run {run!r} has no committed steps: its producer stopped before the first chunk was full; "
                     f"{again} records it from the start")


def _open(run: str, root: str | None, step: slice | None = None):
    """The run, checked to hold committed states (and one in ``step``, when given)."""
    from trajscope.store import open_run
    from trajscope.store.export import select

    ds = open_run(run, root=root)
    if ds.sizes.get("step", 0) == 0:
        raise no_state_yet(run, ds)
    select(ds, step)  # a UserError naming the run's steps when the range holds no recorded state
    return ds


def register(app: typer.Typer) -> None:
    """Add ``show`` and ``plot`` to ``app``."""

    @app.command("show")
    def show(
        run: str = typer.Argument(..., help="Run id under --root, or a path/URL of a run."),
        root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
        step: Optional[str] = typer.Option(None, "--step", help=STEP_HELP),
    ) -> None:
        """Print a run's headline numbers: data geometry, measurements and the theory side by side."""
        from rich.console import Console
        from rich.table import Table

        import trajscope.analysis.accessor  # noqa: F401
        from trajscope.analysis.summary import summary, summary_rows

        sel = parse_step(step)
        ds = _open(run, root, sel)
        from trajscope.cli.show_generic import show_generic

        if show_generic(ds, sel, run):  # a run of another model: the generic table (show_generic.py)
            return
        s = summary(ds, sel)
        table = Table(title=f"run {s.attrs.get('run_id', run)} ({ds.attrs.get('status', 'unknown status')})")
        for col, kw in (("quantity", {}), ("measured", {"justify": "right"}), ("theory", {"justify": "right"}),
                        ("unit", {}), ("theory is a", {})):
            table.add_column(col, **kw)
        for row in summary_rows(s):
            table.add_row(row["quantity"], row["measured"], row["theory"], row["unit"], row["note"])
        console = Console()
        console.print(table)
        for text in s.attrs.get("warnings", []):
            console.print(f"[yellow]warning:[/yellow] {text}", soft_wrap=True, highlight=False)
        console.print(
            f"t1: first recorded step from which every neuron stays in S_(sign v_j) or S_dead; "
            f"t2: first recorded step with L ≤ {1 - s.attrs['t2_drop']:g}·L(first state). "
            "O(1/t): the loss must stay under the theorem's envelope after t2 (the slope is only a description). "
            "Theory values are scales and bounds, not predictions of the exact step."
        )

    @app.command("plot")
    def plot_cmd(
        run: str = typer.Argument(..., help="Run id under --root, or a path/URL of a run."),
        kind: str = typer.Argument(..., help="Figure: for two-layer runs gram, alignment, loss, mean_neurons, plane, "
                                        "spectra, cones, direction_field; for any run param_norms, param_updates, "
                                        "param_spectrum."),
        output: Path = typer.Option(..., "-o", "--output", help="Output file: .png, .svg or .pdf."),
        root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
        step: Optional[str] = typer.Option(None, "--step", help=STEP_HELP),
        parameter: Optional[str] = typer.Option(None, "--parameter", help="param_norms, param_updates, "
                                                "param_spectrum: the parameters drawn (fnmatch patterns, comma-"
                                                "separated; param_spectrum draws the first match)."),
    ) -> None:
        """Draw one of the paper's figures for a run into a PNG, SVG or PDF file."""
        from trajscope.analysis.plots import PLOT_KINDS, plot
        from trajscope.figures import FILE_FORMATS
        from trajscope.figures import save_figure as save

        if kind not in PLOT_KINDS:
            raise UserError(f"unknown plot kind {kind!r}: choose one of {', '.join(PLOT_KINDS)}")
        if output.suffix.lower().lstrip(".") not in FILE_FORMATS:
            raise UserError(f"cannot write {output.name!r}: the output file must end in .png, .svg or .pdf")
        if output.parent and not output.parent.exists():
            raise UserError(f"directory {str(output.parent)!r} does not exist: create it or choose another -o")
        sel = parse_step(step)
        ds = _open(run, root, sel)
        from trajscope.analysis.registry import check_applies

        check_applies("plot", kind, ds)
        options = {}
        if parameter is not None:  # (found by a review: from the CLI only the first matrix could be plotted)
            if "parameter" not in inspect.signature(PLOT_KINDS[kind]).parameters:
                raise UserError(f"--parameter applies to param_norms, param_updates and param_spectrum, not {kind!r}")
            options["parameter"] = parameter
        save(plot(ds, kind, sel, **options), output)
        typer.echo(f"wrote {output}")
