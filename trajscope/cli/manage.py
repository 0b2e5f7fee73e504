"""Run management: ``ls``, ``tag``, ``rm``, ``compare`` and ``export``."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from trajscope.cli.analyze import STEP_HELP
from trajscope.errors import UserError
from trajscope.store.errors import MalformedRun
from trajscope.store.layout import STATUSES
from trajscope.store.dataset_attrs import NOT_FINITE, run_attr
from trajscope.store.reader import planned_states, unreadable_run

RootOption = Annotated[
    Optional[str], typer.Option("--root", help="Store root: a directory or fsspec URL (default $TRAJSCOPE_ROOT or ./runs).")
]
RunsArgument = Annotated[list[str], typer.Argument(help="Run ids under --root, or paths/URLs of runs.")]


def flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` → ``{"train.lr": 0.1}`` (lists and scalars are leaves)."""
    if not isinstance(mapping, dict):
        return {prefix: mapping} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _seconds(attrs: dict[str, Any]) -> float | None:
    start, end = attrs.get("created"), attrs.get("finished") or attrs.get("updated")
    try:
        return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


@functools.cache
def current_fields() -> frozenset[str]:
    """The dotted fields of today's default run config (``record.io``...; no torch is imported)."""
    from trajscope.producer.config import RunConfig

    return frozenset(flatten(RunConfig().model_dump(mode="json")))


def catalog_row(run_id: str, attrs: dict[str, Any], size_bytes: int | None, columns: list[str],
                writer_gone: bool = False) -> dict[str, Any]:
    """One run of ``trajscope ls``: status, progress, final loss, duration, tags, note, chosen config fields;
    ``writer_gone`` for a run marked ``running`` that no writer holds (its producer was killed)."""
    config = flatten(run_attr(attrs, "config") or {})
    return {
        "run": run_id,
        "status": attrs.get("status", "unknown"),
        "writer_gone": writer_gone,
        "committed_steps": int(attrs.get("committed_steps", 0)),
        "capacity": int(attrs.get("capacity", 0)),
        "planned_states": planned_states(attrs),
        "final_loss": attrs.get("final_loss"),
        "not_finite": dict(run_attr(attrs, NOT_FINITE) or {}),  # (a diverged run's final loss: "nan")
        "seconds": _seconds(attrs),
        "size_bytes": size_bytes,
        "created": attrs.get("created"),
        "tags": list(run_attr(attrs, "tags") or []),
        "note": run_attr(attrs, "note"),
        **{column: config.get(column) for column in columns},
    }


def add_latest_losses(store_root: Any, rows: list[dict[str, Any]]) -> None:
    """``latest_loss`` of each row: for a run still ``running`` (live, or killed: found by a review, the dashboard's
    list showed its last loss where ``ls`` showed none), the loss of its last committed state, read from the store
    (:func:`~trajscope.store.reader.last_committed_value`, a few requests a run, the runs in parallel); ``None`` for the
    others, and where it is not finite, named as text in ``not_finite`` as ``final_loss`` is (JSON has no NaN)."""
    from concurrent.futures import ThreadPoolExecutor

    from trajscope.store.reader import last_committed_value

    running = [r for r in rows if r["status"] == "running" and r["committed_steps"]]
    for row in rows:
        row["latest_loss"] = None
    if not running:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(running))) as pool:
        values = pool.map(lambda r: last_committed_value(store_root, r["run"], "loss", r["committed_steps"]), running)
        for row, value in zip(running, values):
            if value is not None and not math.isfinite(value):
                row["not_finite"]["latest_loss"] = str(value)
            else:
                row["latest_loss"] = value


def _plain_numbers(summarized: Any) -> dict[str, Any]:
    """The variables of a computed summary dataset as JSON values: a number (``null`` for NaN or inf), a bool, or
    ``{label: number}`` along a variable's one dimension (a module run's ``parameter``). ``compare --json``'s
    ``values``: what its ``measured`` rows show as text, unrounded (found by a review: a script got "0.007")."""
    import math

    import numpy as np

    def plain(value: Any) -> Any:
        value = value.item() if hasattr(value, "item") else value
        return None if isinstance(value, float) and not math.isfinite(value) else value

    out: dict[str, Any] = {}
    for name, var in summarized.compute().data_vars.items():
        if var.ndim == 0:
            out[str(name)] = plain(var.values)
        elif var.ndim == 1:
            labels = summarized[var.dims[0]].values if var.dims[0] in summarized.coords else np.arange(var.size)
            out[str(name)] = {str(label): plain(value) for label, value in zip(labels, var.values)}
    return out


def _fmt(value: Any) -> str:
    from trajscope._format import fmt

    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return fmt(value) if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(dt.timedelta(seconds=round(seconds)))


def _console():
    """stdout console; a pipe or file gets wide lines, so a table is never folded for lack of 80 columns."""
    import sys

    from rich.console import Console

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 400)


def _print_leftovers(console, run_ids: list[str], root: str | None) -> None:
    """One line per folder a stopped deletion left without its root document, with the command removing it."""
    import shlex

    where = f" --root {shlex.quote(str(root))}" if root is not None else ""
    for run_id in run_ids:
        console.print(f"{run_id}: left by a stopped deletion (no root document); `trajscope rm {run_id}{where}` "
                      "removes it", markup=False, highlight=False)


def _open_selected(run: str, root: str | None, step: str | None, variables: list[str] | None = None):
    from trajscope.cli.analyze import no_state_yet, parse_step
    from trajscope.store import open_run
    from trajscope.store.export import select

    ds = open_run(run, root=root)
    if ds.sizes.get("step", 0) == 0:
        raise no_state_yet(run, ds)
    return select(ds, parse_step(step), variables)


def register(app: typer.Typer) -> None:
    """Add ``ls``, ``tag``, ``rm``, ``compare`` and ``export`` to ``app``."""

    @app.command("ls")
    def list_command(
        root: RootOption = None,
        columns: Annotated[Optional[str], typer.Option("--columns", help="Config fields to show, comma-separated dotted names, e.g. train.lr,data.n,model.width.")] = None,
        tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Only runs with this tag (repeatable: all must match).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
        status: Annotated[Optional[str], typer.Option("--status", help="Only runs with this status (running, "
                                                                       "complete, failed, interrupted).")] = None,
        sizes: Annotated[bool, typer.Option("--sizes/--no-sizes", help="Measure each run's size on storage (a walk "
                                                                       "of its files: slow on big roots).")] = True,
    ) -> None:
        """List the runs under the store root: status, states, final loss, duration, tags, config fields."""
        from rich.table import Table

        from trajscope.cli.analyze import resume_hint
        from trajscope.store import StoreRoot
        from trajscope.store.locks import writer_gone

        store_root = StoreRoot(root)
        if status is not None and status not in STATUSES:
            raise UserError(f"--status {status!r} is not a run status: use one of {', '.join(STATUSES)}")
        fields = [c.strip() for c in (columns or "").split(",") if c.strip()]
        rows, leftovers, present, malformed = [], [], set(), []  # present: the config fields some run has
        hints: dict[str, str] = {}  # how to continue each run, should its writer be gone
        for run_id in store_root.run_ids():
            try:
                attrs = store_root.read_attrs(run_id)
            except MalformedRun as err:  # skipped, and said below the table: one line each
                malformed.append(str(err))
                continue
            except PermissionError as err:  # another user's run (found by a review: one such run failed the listing)
                malformed.append(unreadable_run(store_root, run_id, err))
                continue
            except (KeyError, ValueError):  # half-created or unreadable: skipped, as the catalog does
                if not tag and store_root.has_leftovers(run_id):  # (it has no tags to match)
                    leftovers.append(run_id)
                continue
            if store_root.is_foreign(run_id, attrs):  # someone else's Zarr group: no run (it read `unknown`)
                malformed.append(f"{run_id}: {store_root.run_url(run_id)} is not a trajscope run (a Zarr group "
                                 "without a run's attributes)")
                continue
            if fields:
                present |= set(flatten(run_attr(attrs, "config") or {}))
            if tag and not set(tag) <= set(run_attr(attrs, "tags") or []):
                continue
            if status is not None and attrs.get("status") != status:
                continue
            gone = attrs.get("status") == "running" and writer_gone(store_root, run_id)
            rows.append(catalog_row(run_id, attrs, store_root.size_bytes(run_id) if sizes else None, fields, gone))
            hints[run_id] = resume_hint(run_id, store_root.location, attrs)
        # a field that some run, or today's config, has is an empty cell where a run lacks it (a run made before
        # the field existed, a run of another data kind); one that none has is a misspelling
        unknown = [f for f in fields if f not in present and f not in current_fields()]
        if unknown:  # (whether or not any run has a config: a root of module runs has none)
            raise UserError(f"--columns: no config field {', '.join(map(repr, unknown))}; `trajscope config` prints "
                            f"the fields (e.g. {', '.join(sorted(present or current_fields())[:3])})")
        for line in malformed:
            typer.echo(f"skipped: {line}", err=True)
        add_latest_losses(store_root, rows)
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
            return
        console = _console()
        if not rows:
            bucket = store_root.missing_bucket()
            if bucket is not None:
                raise UserError(f"no bucket {bucket!r} at the object store of {store_root.location}: check its name, "
                                "or AWS_ENDPOINT_URL")
            if store_root.is_local and not os.path.isdir(store_root.location):
                console.print(f"no store root at {store_root.location} (nothing recorded there yet; --root or "
                              f"$TRAJSCOPE_ROOT names another)")
                return
            console.print(f"no runs in {store_root.location}" + (f" tagged {', '.join(tag)}" if tag else ""))
            _print_leftovers(console, leftovers, root)
            return
        table = Table(title=f"runs in {store_root.location}")
        right = {"states", "final loss", "duration", "size"}
        for column in ["run", "status", "states", "final loss", "duration", "size", "created", "tags", *fields]:
            table.add_column(column, justify="right" if column in right or column in fields else "left")
        for r in rows:
            status = (f"{r['status']} (writer gone: {hints[r['run']]})"
                      if r["writer_gone"] else r["status"])
            loss = (f"{r['not_finite']['final_loss']} (diverged)" if "final_loss" in r["not_finite"]
                    else f"{r['not_finite']['latest_loss']} (latest, diverged)" if "latest_loss" in r["not_finite"]
                    else f"{_fmt(r['latest_loss'])} (latest)" if r["latest_loss"] is not None
                    else _fmt(r["final_loss"]))
            table.add_row(r["run"], status, f"{r['committed_steps']}/{r['planned_states'] or '?'}", loss,
                          _duration(r["seconds"]),
                          "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 2**20:.1f} MiB", r["created"] or "-",
                          _fmt(r["tags"]), *(_fmt(r[f]) for f in fields))
        console.print(table)
        _print_leftovers(console, leftovers, root)

    @app.command("tag")
    def tag_command(
        run: Annotated[str, typer.Argument(help="Run id under --root, or the path/URL of a run.")],
        tags: Annotated[Optional[list[str]], typer.Argument(help="Tags to add.")] = None,
        remove: Annotated[Optional[list[str]], typer.Option("--remove", help="A tag to remove (repeatable).")] = None,
        note: Annotated[Optional[str], typer.Option("--note", help="Replace the run's note ('' clears it).")] = None,
        root: RootOption = None,
    ) -> None:
        """Add tags (`trajscope tag RUN baseline lr-sweep`), remove some (--remove), set a note.

        Refused while the run is being written: the writer rewrites the run's attributes at every commit.
        """
        from trajscope.store.run_attrs import tag_run

        if not tags and not remove and note is None:
            raise UserError("nothing to change: give tags to add, --remove TAG and/or --note TEXT")
        attrs = tag_run(run, root, add=tags or [], remove=remove or [], note=note)
        typer.echo(f"{run}: tags {_fmt(attrs.get('tags'))}; note {attrs.get('note') or '-'}")

    @app.command("rm")
    def remove_command(
        runs: RunsArgument,
        root: RootOption = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Delete runs and everything recorded in them (asks first unless --yes; refuses a run being written)."""
        from trajscope.store import describe_run, resolve_run
        from trajscope.store.run_attrs import LEFTOVERS, delete_run, run_identity

        # every run must exist (or be what a stopped deletion left) before anything is deleted; what each was
        # when shown is checked again under its lock (a run created again under that id meanwhile stays)
        runs = list(dict.fromkeys(runs))  # (`rm c c` deleted c, then failed on the second: found by a review)
        identities = [run_identity(run, root) for run in runs]
        described = []
        for run, identity in zip(runs, identities):
            if identity == LEFTOVERS:
                store_root, run_id = resolve_run(run, root)
                described.append(f"{run_id} (left by a stopped deletion, {store_root.size_bytes(run_id) / 2**20:.1f} MiB)")
            else:
                try:
                    info = describe_run(run, root)
                except MalformedRun:  # deleted all the same: the user names it
                    store_root, run_id = resolve_run(run, root)
                    described.append(f"{run_id} (its zarr.json cannot be read, {store_root.size_bytes(run_id) / 2**20:.1f} MiB)")
                    continue
                described.append(f"{info.run_id} ({info.status}, {info.committed_steps} states, "
                                 f"{info.size_bytes / 2**20:.1f} MiB)")
        if not yes:
            listing = ", ".join(described)
            try:
                confirmed = typer.confirm(f"delete {listing}?", default=False)
            except typer.Abort:  # no answer: stdin at its end (not a terminal), or Ctrl-C/Ctrl-D at the prompt
                typer.echo("\nnothing deleted: no answer (pass --yes to delete without asking)", err=True)
                raise typer.Exit(1) from None
            if not confirmed:
                typer.echo("nothing deleted")
                raise typer.Exit(1)
        for run, identity in zip(runs, identities):
            typer.echo(f"deleted {delete_run(run, root, expect=identity)}")

    @app.command("compare")
    def compare_command(
        runs: RunsArgument,
        root: RootOption = None,
        step: Annotated[Optional[str], typer.Option("--step", help=STEP_HELP)] = None,
        all_fields: Annotated[bool, typer.Option("--all", help="Show every config field, not only those that differ.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one object per run (run, status, seconds, config "
                                                             "fields shown, measured) instead of the tables.")] = False,
    ) -> None:
        """Runs side by side: the config fields that differ, then the measured quantities of each."""
        from rich.table import Table

        from trajscope.analysis import select
        from trajscope.analysis.generic import parameter_summary
        from trajscope.analysis.registry import features
        from trajscope.analysis.summary import summary, summary_rows
        from trajscope.cli.analyze import no_state_yet, parse_step
        from trajscope.cli.show_generic import generic_measured
        from trajscope.store import open_run

        if len(runs) < 2:
            raise UserError("compare needs at least two runs: trajscope compare RUN_A RUN_B ...")
        sel = parse_step(step)  # (checked before anything is printed)
        datasets = [open_run(run, root=root) for run in runs]
        names = [ds.attrs.get("run_id", run) for ds, run in zip(datasets, runs)]
        names = [str(run) if names.count(name) > 1 else name for name, run in zip(names, runs)]  # (two runs of one
        # id, e.g. a run and its Zarr export, in columns told apart by what was given: found by a review)
        configs = [flatten(run_attr(ds, "config") or {}) for ds in datasets]
        scripted = [name for name, ds in zip(names, datasets) if run_attr(ds, "config") is None]
        keys = list(dict.fromkeys(k for c in configs for k in c))
        differing = [k for k in keys if all_fields or len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        console = _console()
        table = Table(title="config" + ("" if all_fields else " (fields that differ)"))
        table.add_column("field")
        for name in names:
            table.add_column(name, justify="right")
        for key in differing:
            table.add_row(key, *(_fmt(c.get(key)) for c in configs))
        for ds, run in zip(datasets, runs):  # (checked before anything is printed)
            if ds.sizes.get("step", 0) == 0:
                raise no_state_yet(run, ds)
            try:
                select(ds, sel)  # a range with no recorded state of this run: one line naming it
            except UserError as err:
                raise UserError(f"run {run!r}: {err}") from None
        if scripted and not as_json:
            console.print(f"config: {', '.join(scripted)} recorded from a script (no producer config)")
        if (differing or len(scripted) < len(datasets)) and not as_json:
            console.print(table if differing else "config: identical")
        measured, numbers = [], []
        for ds in datasets:
            if "two_layer" in features(ds):
                summarized = summary(ds, sel)
                measured.append({r["quantity"]: (r["measured"], r["unit"]) for r in summary_rows(summarized)})
            else:  # a run of another model (ModuleRecorder): what `show` prints for it
                summarized = parameter_summary(ds, sel).compute()
                measured.append(generic_measured(ds, sel, summarized))
                if "loss" in ds.data_vars and ds["loss"].dims == ("step",):  # (as its measured rows: a review)
                    summarized = summarized.assign(loss_last=select(ds, sel)["loss"][-1].drop_vars("step"))
            numbers.append(_plain_numbers(summarized) if as_json else {})
        if as_json:  # (found by a review: 50 runs made a table of 50 columns cut to "abla…"; no way to read it)
            rows = [{"run": name, "status": ds.attrs.get("status"), "seconds": _seconds(ds.attrs),
                     "config": {k: c.get(k) for k in differing},
                     "measured": {q: {"value": v, "unit": u} for q, (v, u) in m.items() if v.strip() not in ("", "-")},
                     "values": values}
                    for name, ds, c, m, values in zip(names, datasets, configs, measured, numbers)]
            print(json.dumps(rows, indent=2, default=str))
            return
        table = Table(title="measured")
        table.add_column("quantity")
        for name in names:
            table.add_column(name, justify="right")
        table.add_column("unit")
        extra = [("status", [ds.attrs.get("status", "-") for ds in datasets]),
                 ("duration", [_duration(_seconds(ds.attrs)) for ds in datasets])]
        for label, values in extra:
            table.add_row(label, *values, "")
        for quantity in dict.fromkeys(q for m in measured for q in m):
            values = [m.get(quantity, ("-", ""))[0] for m in measured]
            if not any(v.strip() not in ("", "-") for v in values):  # a theory-only row (`trajscope show` has those)
                continue
            unit = next((m[quantity][1] for m in measured if quantity in m), "")
            table.add_row(quantity, *values, unit)
        console.print(table)

    @app.command("export")
    def export_command(
        run: Annotated[str, typer.Argument(help="Run id under --root, or the path/URL of a run.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Output file: .nc (netCDF; also .nc4, .netcdf), .zarr or .npz.")],
        root: RootOption = None,
        step: Annotated[Optional[str], typer.Option("--step", help=STEP_HELP)] = None,
        variables: Annotated[Optional[list[str]], typer.Option("--vars", help="Variables to export (repeatable or comma-separated; default all).")] = None,
    ) -> None:
        """Write a run, or a step range / some variables of it, to a netCDF, Zarr or .npz file."""
        from trajscope.store.export import export

        names = [v.strip() for item in (variables or []) for v in item.split(",") if v.strip()]
        if variables is not None and not names:  # (found by a review: `--vars ''` exported every variable)
            raise UserError("--vars names no variable: give some (--vars W,loss), or leave it out to export all")
        ds = _open_selected(run, root, step, names)
        export(ds, output)
        typer.echo(f"wrote {output} ({ds.sizes.get('step', 0)} states, {', '.join(map(str, ds.data_vars))})")
