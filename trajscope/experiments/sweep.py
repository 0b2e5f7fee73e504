"""Sweeps: one run per point of a grid (or list) over any config fields, on a process pool or a cluster.

A sweep spec (YAML)::

    name: alignment_time            # run ids start with it
    base: ../quickstart.yaml        # a run config: a path (relative to the spec) or an inline mapping
    set: {train.steps: 4000}        # dotted overrides applied to every point
    grid:                           # cartesian product over dotted config fields
      data.n: [16, 64, 256]
      data.mu: [0.02, 0.1, 0.4]
    points: []                      # optional explicit list of {dotted: value}, crossed with the grid
    seeds: [0, 1]                   # the run's `seed` (data and init), crossed with everything
    quick:                          # --quick replaces set (merged), grid keys, points and seeds
      grid: {data.n: [16, 256]}
      seeds: [0]

Run ids are deterministic: ``<name>-<varied values>-<hash>``, the hash covering the resolved config
(except the CPU thread count, device and run name), so re-running a sweep finds its runs again:
finished ones are skipped, interrupted or killed ones resumed, a changed config gets a new id.

Execution: :func:`run_points` runs each point in its own process (``ProcessPoolExecutor``, spawned
workers) or, given a ``dask.distributed`` scheduler address, as one cluster task per run. Each task
produces (or resumes) the run and returns one table row: what it did plus the run's headline numbers
(:func:`trajscope.analysis.sweep.summary_record`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import hashlib
import itertools
import math
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trajscope.producer.config import RunConfig, load_config, read_yaml_mapping, set_dotted
from trajscope.store.dataset_attrs import run_attr
from trajscope.store.errors import NotARun, RunLocked, UserError
from trajscope.store.layout import RUN_UID, never_fully_created

if TYPE_CHECKING:
    import pandas as pd

HASH_EXCLUDE = {("name",), ("train", "threads"), ("train", "device"),
                # (added after runs were made: how and when chunks reach the store, never the states' bytes)
                ("record", "io"), ("record", "flush_seconds")}

#: fields whose default changed, hashed as their former default so that the ids of runs made before stay
#: the same: ``record.write_threads`` was 4 until its default became ``None`` (one per core, at most 4);
#: ``record.writer`` was ``thread`` until its default became ``auto`` (now the thread everywhere; same bytes)
HASH_AS_FORMER_DEFAULT = {("record", "write_threads"): (None, 4), ("record", "writer"): ("auto", "thread")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuickSpec(_Strict):
    """Reductions applied by ``--quick``: ``set`` is merged, grid keys replaced, points/seeds replaced."""

    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] | None = None
    seeds: list[int] | None = None


class SweepSpec(_Strict):
    """A sweep: a base run config, overrides, a grid and/or list of points, and seeds."""

    name: str
    base: str | dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])
    quick: QuickSpec | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _a_name_for_runs(cls, name: str) -> str:
        # (a message, not the pattern: found by a review, "String should match pattern '^[A-Za-z0-9]…'")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ValueError(f"{name[:70]!r} cannot name a sweep: use 1-64 characters from A-Z a-z 0-9 . _ -, "
                             "starting with a letter or digit (it begins the names of the sweep's runs)")
        return name


@dataclass
class SweepPoint:
    """One run of a sweep: its id, resolved config and the values that vary."""

    run_id: str
    config: RunConfig
    values: dict[str, Any] = field(default_factory=dict)


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    model = QuickSpec if first["loc"][:1] == ("quick",) else SweepSpec  # (found by a review: quick's fields)
    message = f"unknown field (known: {', '.join(model.model_fields)})" \
        if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return f"invalid sweep spec {source}: {where}: {message}"


def load_sweep(source: str | os.PathLike | dict[str, Any]) -> tuple[SweepSpec, Path | None]:
    """Read and validate a sweep spec (YAML file or dict); returns the spec and its folder."""
    if isinstance(source, dict):
        raw, label, folder = source, "(dict)", None
    else:
        path = Path(source)
        label, folder = str(path), path.resolve().parent
        raw = read_yaml_mapping(path, "sweep spec", example="configs/sweeps/alignment_time.yaml",
                                shape="a mapping with name, base and grid (or points)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(_one_line(err, label)) from None
    for key, values in {**spec.grid, **(spec.quick.grid if spec.quick else {})}.items():
        if not values:
            raise UserError(f"sweep spec {label}: grid.{key} is empty; give at least one value")
    return spec, folder


def set_path(raw: dict[str, Any], dotted: str, value: Any, *, where: str = "") -> None:
    """``raw[a][b] = value`` for ``dotted = "a.b"`` (creating sections); a leaf in the way is an error."""
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise UserError(f"sweep {where}: empty field name")
    set_dotted(raw, parts, copy.deepcopy(value), label=f"sweep {where}: {dotted!r}")


def _base_raw(spec: SweepSpec, folder: Path | None) -> dict[str, Any]:
    if isinstance(spec.base, dict):
        return copy.deepcopy(spec.base)
    path = Path(spec.base)
    if not path.is_absolute() and folder is not None:
        path = folder / path
    return load_config(path).model_dump(mode="json")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_fmt(v) for v in value)
    return str(value)


def config_hash(config: RunConfig) -> str:
    """8 hex digits of the resolved config, ignoring fields that do not change the trajectory's identity."""
    raw = config.model_dump(mode="json")

    def parent(path: tuple[str, ...]) -> dict:
        node = raw
        for part in path[:-1]:
            node = node.get(part, {})
        return node

    for path in HASH_EXCLUDE:
        parent(path).pop(path[-1], None)
    for path, (new_default, former) in HASH_AS_FORMER_DEFAULT.items():
        node = parent(path)
        if path[-1] in node and node[path[-1]] == new_default:
            node[path[-1]] = former
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:8]


def point_run_id(prefix: str, values: dict[str, Any], config: RunConfig) -> str:
    """``<prefix>-<leaf><value>_...-<hash>``, restricted to the run-id alphabet and 128 characters."""
    label = "_".join(f"{key.rsplit('.', 1)[-1]}{_fmt(val)}" for key, val in values.items())
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", label)
    digest = config_hash(config)
    room = 128 - len(prefix) - len(digest) - 2
    label = label[: max(room, 0)].strip("-_.")
    return f"{prefix}-{label}-{digest}" if label else f"{prefix}-{digest}"


#: the most runs one sweep expands to
MAX_POINTS = 10_000
#: a row's ``action`` when another live writer held its run
BUSY = "busy"


def any_busy(rows: list[dict[str, Any]]) -> bool:
    """Whether another writer held some run of ``rows``: its sweep table is that writer's to write."""
    return any(row.get("action") == BUSY for row in rows)


def expand(spec: SweepSpec, folder: Path | None = None, *, quick: bool = False) -> list[SweepPoint]:
    """All points of the sweep (validated), in a deterministic order: seeds × points × grid."""
    overrides, grid, points, seeds = dict(spec.set), dict(spec.grid), list(spec.points), list(spec.seeds)
    if quick and spec.quick is not None:
        overrides.update(spec.quick.set)
        grid.update(spec.quick.grid)
        points = list(spec.quick.points) if spec.quick.points is not None else points
        seeds = list(spec.quick.seeds) if spec.quick.seeds is not None else seeds
    base = _base_raw(spec, folder)
    quick_seeds = quick and spec.quick is not None and spec.quick.seeds is not None
    if "seeds" not in spec.model_fields_set and "seed" in base and not quick_seeds:  # (found by a review: the
        seeds = [base["seed"]]  # base's seed became the default 0)
    if not seeds:
        raise UserError(f"sweep {spec.name}: seeds is empty; give at least one seed, e.g. seeds: [0]")
    in_points = {k for point in points or [] for k in point}
    varied = set(grid) | in_points | set(overrides)
    if "seed" in varied:  # (each point's seed is set from `seeds`: a varied one would be overwritten)
        raise UserError(f"sweep {spec.name}: the seed is varied with `seeds: [0, 1, 2]`, not in grid, points or set")
    if "name" in varied:  # (each run is named from the sweep's name and its values: found by a review)
        raise UserError(f"sweep {spec.name}: `name` cannot be set or varied: each run's name is made from the "
                        f"sweep's name and the values that vary; remove it from grid, points and set")
    both = sorted(set(grid) & in_points)
    if both:  # (the grid's value replaced the point's: found by a review)
        raise UserError(f"sweep {spec.name}: {both[0]} is in both points and grid"
                        + (" (with --quick: quick's points, and the grid with quick's grid merged in)" if quick else "")
                        + ": give it in one of them (a point's value would be replaced by the grid's)")
    count = len(seeds) * max(1, len(points)) * math.prod(len(v) for v in grid.values())
    if count > MAX_POINTS:  # (found by a review: a 10^6 grid took minutes and GBs before saying anything)
        raise UserError(f"sweep {spec.name}: {count} runs, over the limit of {MAX_POINTS}: split it into several "
                        f"sweeps, or vary fewer values")
    for key, value in overrides.items():
        set_path(base, key, value, where=f"{spec.name} set")
    keys = list(grid)
    out: list[SweepPoint] = []
    seen: dict[str, str] = {}
    for seed in seeds:
        for point in points or [{}]:
            for combo in itertools.product(*(grid[k] for k in keys)):
                values = {**point, **dict(zip(keys, combo))}
                raw = copy.deepcopy(base)
                for key, value in values.items():
                    set_path(raw, key, value, where=f"{spec.name} point {values}")
                raw["seed"] = seed
                label = {**values, "seed": seed}
                try:
                    config = load_config(raw)
                except UserError as err:
                    raise UserError(f"sweep {spec.name} point {_fmt_values(label)}: {err}") from None
                run_id = point_run_id(spec.name, label, config)
                config.name = run_id
                if run_id in seen:
                    continue  # the same config twice (e.g. a point repeating a grid value)
                seen[run_id] = run_id
                out.append(SweepPoint(run_id, config, label))
    return out


def _fmt_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


# -- executing one point (in a worker process or a cluster task) ------------------------------------------------


def execute_point(config: dict[str, Any], run_id: str, root: str, storage_options: dict | None = None,
                  summarize: bool = True, parent_pid: int | None = None, stop_file: str | None = None) -> dict[str, Any]:
    """:func:`_execute_point` in a worker; the worker exits after it when the sweep's process is gone (killed: its
    SIGTERM ended the run, however the run took it), since nobody takes the row and it would wait for work forever."""
    try:
        return _execute_point(config, run_id, root, storage_options, summarize, parent_pid, stop_file)
    finally:
        if parent_pid is not None and os.getppid() != parent_pid:
            os._exit(0)


def _execute_point(config: dict[str, Any], run_id: str, root: str, storage_options: dict | None,
                   summarize: bool, parent_pid: int | None, stop_file: str | None) -> dict[str, Any]:
    """Produce, resume or skip one run, then summarize it. Runs in a worker; returns a table row.

    ``action``: ``produced`` (new run), ``resumed`` (an unfinished run continued from its last
    committed state), ``skipped`` (already complete), ``restarted`` (an empty husk from a run killed
    while being created, removed and produced anew) or ``busy`` (another live writer holds it).
    """
    import dask

    from trajscope.producer import train
    from trajscope.producer.train import produce, resume
    from trajscope.store import StoreRoot, WriterLock, open_run

    if parent_pid is not None:  # a worker of a local sweep: a Ctrl-C from the terminal, then the sweep's SIGTERM,
        train.INTERRUPT_ONCE = True  # end the run once (see INTERRUPT_ONCE)
        train.PARENT_PID = parent_pid

    store_root = StoreRoot(root, storage_options)
    started = time.perf_counter()
    row: dict[str, Any] = {"run_id": run_id, "action": "", "status": "", "error": None}
    stopped = stop_file is not None and (os.path.exists(stop_file) or not os.path.isdir(os.path.dirname(stop_file)))
    if (parent_pid is not None and os.getppid() != parent_pid) or stopped:  # (its folder gone: the sweep has ended)
        return {**row, "action": "abandoned", "status": "not started", "seconds": 0.0}  # (the sweep was stopped)
    try:
        if store_root.exists(run_id):
            attrs = store_root.read_attrs(run_id)
            if store_root.is_foreign(run_id, attrs):  # someone else's Zarr group: kept
                raise NotARun(store_root.run_url(run_id), "a Zarr group without a run's attributes",
                              "sweep into another root")
            # only such a husk (found by a review: a crashed ModuleRecorder run of the same id, with no producer
            # config, was deleted); the lock refuses when a creator is still alive
            if never_fully_created(attrs):
                with WriterLock(store_root, run_id, purpose="deleting"):
                    store_root.delete(run_id)
                produce(config, root=store_root, name=run_id)
                row["action"] = "restarted"
            else:
                _check_same_config(store_root, run_id, attrs, config)
                if attrs.get("status") == "complete":
                    row["action"] = "skipped"
                else:
                    resume(run_id, root=store_root)
                    row["action"] = "resumed"
        else:
            produce(config, root=store_root, name=run_id)
            row["action"] = "produced"
    except RunLocked as err:
        row.update(action=BUSY, error=str(err))
    except NotThisPoint as err:  # (found by a review: the other run's status, `complete`, and its numbers were the
        # point's in the table, and the sweep exited 0)
        row.update(action="failed", status=NOT_THIS_POINT, error=f"{type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - reported per point, the sweep goes on
        row.update(action=row["action"] or "failed", error=f"{type(err).__name__}: {err}")
    if row["status"] != NOT_THIS_POINT:
        row["status"], row[RUN_UID] = stored_identity(store_root, run_id)  # (which run the row's numbers are of)
    if row["action"] == BUSY and row["status"] in ("missing", "unreadable"):
        row["status"] = "being created"  # (another writer makes it)
    row["seconds"] = time.perf_counter() - started
    if summarize and row["status"] == "complete":
        from trajscope.analysis.sweep import summary_record

        with dask.config.set(scheduler="threads"):  # never the cluster from inside a cluster task
            try:
                row.update(summary_record(open_run(run_id, store_root)))
            except Exception as err:  # noqa: BLE001
                row["error"] = f"summary: {type(err).__name__}: {err}"
    return row


#: a point's row status when the run under its id is another's (:class:`NotThisPoint`): no numbers, not complete
NOT_THIS_POINT = "another run"


class NotThisPoint(UserError):
    """The run under a point's id was not made from the point's config."""


def _check_same_config(store_root: Any, run_id: str, attrs: dict[str, Any], config: dict[str, Any]) -> None:
    """A run found under a point's id is that point's: made by ``produce`` from a config of the same hash, else
    :class:`NotThisPoint` (found by a review: a run another ``produce --name`` had made there with other settings
    was skipped into the table, or resumed, as the point's)."""
    stored = run_attr(attrs, "config")
    if stored is None:
        raise NotThisPoint(f"run {run_id!r} exists under {store_root.location} and was not made by `trajscope produce` "
                        "(a ModuleRecorder run?): it is no run of this sweep; sweep into another root, or remove it")
    try:
        same = config_hash(load_config(stored)) == config_hash(load_config(config))
    except UserError as err:
        raise NotThisPoint(f"run {run_id!r} exists under {store_root.location}, its stored config unreadable by this "
                        f"version ({err}): it cannot be told to be this sweep's point; sweep into another root, or "
                        "remove it") from None
    if not same:
        raise NotThisPoint(f"run {run_id!r} exists under {store_root.location} with another config than this sweep's "
                        "point: it is no run of this sweep; sweep into another root, or remove it")


def _with_threads(config: RunConfig, threads: int) -> dict[str, Any]:
    raw = config.model_dump(mode="json")
    if raw["train"].get("threads") is None:
        raw["train"]["threads"] = threads
    return raw


Progress = Callable[[dict[str, Any], int, int], None]


def run_points(
    points: list[SweepPoint],
    *,
    root: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    summarize: bool = True,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run every point (skip finished, resume unfinished) and return one row per point, in order.

    Local: ``workers`` processes (default: one per CPU core, at most one per point); each run's
    training uses ``cores // workers`` threads unless its config sets ``train.threads``.
    ``scheduler``: the address of a ``dask.distributed`` scheduler; each run is one task (one thread
    per run unless configured), written to ``root``, which the workers must be able to reach.
    """
    from trajscope.store import StoreRoot

    store_root = StoreRoot(root, storage_options)
    location = store_root.location
    if not points:
        return []
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: give a positive number of worker processes")
    if scheduler:
        results = _run_on_cluster(points, location, storage_options, scheduler, summarize, progress)
    else:
        results = _run_on_local_pools(points, store_root, storage_options, workers, summarize, progress)
    return [{**{f"param.{k}": v for k, v in p.values.items()}, **results[p.run_id]} for p in points]


def _run_on_local_pools(points: list[SweepPoint], store_root: Any, storage_options: dict | None, workers: int | None,
                        summarize: bool, progress: Progress | None) -> dict[str, dict[str, Any]]:
    """Run the points on worker processes; a worker that dies (killed, out of memory) loses no point's row.

    A dead worker breaks its whole pool: every point it had not finished, on any worker, is lost to it (the other
    workers are stopped, their runs ending ``interrupted``). Those points run again in a fresh pool, as long as the
    last pool finished at least one point; after a pool that finished none, the next ``workers`` points run in a
    worker each, so that a point whose worker dies every time fails alone, with its row saying so, and the rest
    go on in pools again. (Found by a review: one killed worker made every row ``failed``, status ``unknown``, and
    a table of NaN, although the finished runs were complete.)
    """
    from trajscope.producer.train import sigterm_as_interrupt  # (torch: imported where runs are made)
    from trajscope.store.hotpath import usable_cores

    cores = usable_cores()
    n_workers = max(1, min(workers or cores, len(points)))
    threads = max(1, cores // n_workers)
    ctx = multiprocessing.get_context("spawn")
    _start_resource_tracker_without_hangups()
    results: dict[str, dict[str, Any]] = {}

    def finished(point: SweepPoint, row: dict[str, Any]) -> None:
        results[point.run_id] = row
        if progress is not None:
            progress(row, len(results), len(points))

    stop_dir = tempfile.mkdtemp(prefix="trajscope-sweep-")  # its pools' "stop" files: no point starts once one exists
    pending, alone = list(points), False
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, stop_dir, True)
        stack.enter_context(sigterm_as_interrupt())  # (stops the workers too)
        while pending:
            before = len(results)
            batch, rest = (pending[:n_workers], pending[n_workers:]) if alone else (pending, [])
            pending = _pool_round(batch, ctx, n_workers, alone, finished, store_root, stop_dir,
                                  lambda p, stop_file: (execute_point, _with_threads(p.config, threads), p.run_id,
                                                        store_root.location, storage_options, summarize, os.getpid(),
                                                        stop_file)) + rest
            alone = len(results) == before
    return results


@dataclass
class _Workers:
    """One process pool of a sweep and what ends it: its processes (a broken pool forgets them) and the stop file
    its tasks check before they start a point."""

    executor: cf.ProcessPoolExecutor
    stop_file: str
    processes: list = field(default_factory=list)
    broken: bool = False
    unfinished: int = 0  # its points without a row yet
    deadline: float | None = None  # (broken) when its survivors are killed, whoever waits for them


def _pool_round(points: list[SweepPoint], ctx: Any, n_workers: int, alone: bool,
                finished: Callable[[SweepPoint, dict[str, Any]], None], store_root: Any, stop_dir: str,
                task: Callable[[SweepPoint, str], tuple]) -> list[SweepPoint]:
    """Run ``points`` on one pool of ``n_workers`` processes (``alone``: one pool of one process per point, at most
    ``n_workers`` at once); hand each row to ``finished``; return the points lost to a broken pool, in order.

    A pool is ended before the round goes on: a broken one's survivors (each ended its run ``interrupted`` on the
    pool's SIGTERM) start no queued point (its stop file) and are killed once no lost point's run is being written
    (found by a review: one went on training queued points beside the next round, or, blocked on the queue lock
    of the worker that died, never ended, nor let the sweep's process exit)."""
    queue, running, lost, live = list(points), {}, [], []
    order = {point.run_id: i for i, point in enumerate(points)}  # (rows and lost points in the spec's order)

    def start(size: int, items: list[SweepPoint]) -> None:
        workers = _Workers(cf.ProcessPoolExecutor(max_workers=size, mp_context=ctx, initializer=_end_with_parent),
                           os.path.join(stop_dir, f"stop-{uuid.uuid4().hex}"))
        live.append(workers)
        for point in items:
            running[workers.executor.submit(*task(point, workers.stop_file))] = (workers, point)
            workers.unfinished += 1  # (and its processes known at once: a Ctrl-C may come at the next submit)
            workers.processes = list((getattr(workers.executor, "_processes", None) or {}).values())

    try:
        while queue or running:
            if alone:
                while queue and len(running) < n_workers:
                    start(1, [queue.pop(0)])
            elif queue:
                start(n_workers, queue)
                queue = []
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: order[running[f][1].run_id]):
                workers, point = running.pop(future)
                workers.unfinished -= 1
                try:
                    row = future.result()
                except cf.process.BrokenProcessPool:
                    workers.broken = True
                    Path(workers.stop_file).touch()
                    if not alone:
                        lost.append(point)
                        row = None
                    else:
                        row = _died_row(store_root, point.run_id)
                except Exception as err:  # noqa: BLE001 - the task could not run (e.g. not picklable)
                    row = _failed_row(store_root, point.run_id, f"worker: {type(err).__name__}: {err}")
                if row is not None:
                    finished(point, row)  # (outside the try: a progress callback's error is no worker's)
                if not workers.unfinished:
                    _end_pool(workers, store_root, [p.run_id for p in lost])
                    live.remove(workers)
    except BaseException:  # Ctrl-C, SIGTERM, an error (a progress callback's): no queued point starts, the
        _stop_workers(live)  # running ones end `interrupted` (resumable: the same command goes on), no worker stays
        raise
    return sorted(lost, key=lambda point: order[point.run_id])


def _end_pool(workers: _Workers, store_root: Any, run_ids: list[str]) -> None:
    """Shut a pool down. A broken one: its survivors are waited for while a run of ``run_ids`` is being written
    (at most :data:`STOP_SECONDS`), then killed; a whole one's workers exit once their points are done."""
    if workers.broken:
        from trajscope.store.locks import writer_holds

        def writing() -> bool:
            for run_id in run_ids:
                with contextlib.suppress(Exception):
                    if writer_holds(store_root, run_id):
                        return True
            return False

        # (its stop file was made when it broke); the deadline is the pool's: a Ctrl-C during this wait stops the
        # sweep, whose stop waits for these processes until then, not STOP_SECONDS more (found by a review)
        workers.deadline = deadline = time.monotonic() + STOP_SECONDS
        while any(p.is_alive() for p in workers.processes) and time.monotonic() < deadline and writing():
            time.sleep(0.05)
        for process in workers.processes:
            if process.is_alive():  # idle, or blocked for ever on the dead worker's queue lock
                process.kill()
        for process in workers.processes:
            process.join(5)
    workers.executor.shutdown(wait=True, cancel_futures=True)


def _died_row(store_root: Any, run_id: str) -> dict[str, Any]:
    """The row of a point whose worker process died in a pool of its own too (``alone``)."""
    row = _failed_row(store_root, run_id, "its worker process died (killed, or out of memory?), in a pool of its "
                                          "own too; what the run committed is kept: run the sweep again to resume it")
    if row["status"] in ("missing", "creating"):  # (found by a review: "what the run committed is kept" of no run)
        row["error"] = ("its worker process died (killed, or out of memory?) before its run of this point was made, "
                        "in a pool of its own too: run the sweep again to start it")
    return row


def _failed_row(store_root: Any, run_id: str, error: str) -> dict[str, Any]:
    """The row of a point whose worker or task never returned one: its run's status as the store has it, and its
    ``run_uid`` (so that :func:`still_stored` tells a run made again under its id meanwhile)."""
    status, uid = stored_identity(store_root, run_id)
    return {"run_id": run_id, "action": "failed", "status": status, RUN_UID: uid, "error": error}


def still_stored(rows: list[dict[str, Any]], store_root: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of complete runs checked against the store once every point is done; returns the rows and the ids of
    those whose run changed meanwhile. A run deleted since its point finished is ``missing``, one replaced by another
    run of its id (another ``run_uid``) ``replaced``; either row loses the numbers of a run no longer
    there (found by a review: a run deleted during the sweep counted complete, its numbers in the table). A run
    whose document cannot be read now (a store that did not answer) keeps its row: nothing says it changed."""
    complete = [i for i, row in enumerate(rows) if row.get("status") == "complete"]
    if not complete:
        return rows, []
    with cf.ThreadPoolExecutor(max_workers=min(16, len(complete))) as pool:  # (a request each on object stores)
        now = list(pool.map(lambda i: stored_identity(store_root, rows[i]["run_id"]), complete))
    rows, changed = list(rows), []
    for i, (status, uid) in zip(complete, now):
        row = rows[i]
        replaced = row.get(RUN_UID) is not None and uid is not None and uid != row[RUN_UID]
        if status == "unreadable" or (status == "complete" and not replaced):
            continue
        kept = {k: v for k, v in row.items() if k.startswith("param.") or k in ("run_id", "action", "seconds")}
        why = ("its run was deleted after its point finished: run the sweep again to make it anew" if status == "missing"
               else f"another run of this id is there now ({status}), made after its point finished: its numbers are "
                    f"not this point's; `trajscope show {row['run_id']}` says what it is" if replaced
               else f"its run is {status} now, after its point finished")
        rows[i] = {**kept, "status": "replaced" if replaced else status, RUN_UID: uid, "error": why}
        changed.append(row["run_id"])
    return rows, changed


def stored_identity(store_root: Any, run_id: str) -> tuple[str, str | None]:
    """A run's ``status`` and ``run_uid`` attributes; ``missing`` where no run is, ``unreadable`` where its document
    cannot be read (and no ``run_uid`` then)."""
    try:
        attrs = store_root.read_attrs(run_id)
        return attrs.get("status", "unknown"), attrs.get(RUN_UID)
    except Exception:  # noqa: BLE001
        try:
            return ("unreadable" if store_root.exists(run_id) else "missing"), None
        except Exception:  # noqa: BLE001
            return "unreadable", None


def _start_resource_tracker_without_hangups() -> None:
    """Start multiprocessing's resource tracker with SIGHUP blocked (it ignores only SIGINT and SIGTERM): a closed
    terminal's SIGHUP to the whole group killed it, and the sweep printed its tracebacks ("process died
    unexpectedly, relaunching", ``KeyError: '/mp-...'``; found by a review). Elsewhere than POSIX, a no-op."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None or not hasattr(signal, "pthread_sigmask"):
        return
    from multiprocessing import resource_tracker

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {hangup})  # (a blocked signal stays blocked across exec)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _end_with_parent() -> None:
    """A worker's start (Linux): SIGTERM it when the sweep's process dies (SIGKILL included), so that it ends
    its run ``interrupted`` instead of waiting for work forever. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


#: how long a stopped sweep waits for its workers to end their runs ``interrupted`` before killing them
STOP_SECONDS = 60.0


def _stop_workers(pools: list[_Workers]) -> None:
    """Cancel the points not started and SIGTERM the workers of every pool at once: a worker training a run ends it
    ``interrupted`` (its committed states kept, as on a Ctrl-C), an idle one exits, and a point already handed to a
    worker's queue is not started (the stop file). They are waited for together, at most :data:`STOP_SECONDS`
    (found by a review: one pool after the other, a sweep's pools of one worker each took that long each); a broken
    pool's survivors, already waited for when the stop came, until its own deadline."""
    deadline = time.monotonic() + STOP_SECONDS
    processes = [(process, min(deadline, workers.deadline or deadline)) for workers in pools
                 for process in workers.processes]
    for workers in pools:
        Path(workers.stop_file).touch()
        workers.executor.shutdown(wait=False, cancel_futures=True)
    for process, _ in processes:
        with contextlib.suppress(OSError):
            process.terminate()  # (not os.kill of its pid: one already reaped may name another process by now)
    for process, until in processes:  # waited for here: the pool's own exit no longer waits once shut down
        process.join(max(0.0, until - time.monotonic()))
        if process.is_alive():  # stuck (no Python code running to take the signal): what it committed stays
            process.kill()
            process.join(5)


def _run_on_cluster(points, location, storage_options, scheduler, summarize, progress) -> dict[str, dict]:
    from trajscope.store import StoreRoot

    try:
        from distributed import Client, as_completed
        from distributed.comm import get_address_host_port
    except ImportError:
        raise UserError("--scheduler needs dask.distributed: pip install 'trajscope[distributed]'") from None
    try:  # not an address (no port): refused before a Client exists (a failed one's clean-up timed out, a traceback)
        get_address_host_port(scheduler)
    except ValueError as err:
        raise UserError(f"--scheduler {scheduler!r} is not a scheduler address ({err}): give HOST:PORT, e.g. "
                        "tcp://127.0.0.1:8786") from None
    try:
        client = Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise UserError(f"cannot reach the dask scheduler at {scheduler} ({err}); start one with "
                        "`dask scheduler` or drop --scheduler to use local processes") from None
    results: dict[str, dict[str, Any]] = {}
    try:
        futures = {
            client.submit(execute_point, _with_threads(p.config, 1), p.run_id, location, storage_options, summarize,
                          key=f"trajscope-run-{p.run_id}-{uuid.uuid4().hex[:6]}", pure=False): p
            for p in points
        }
        for done, future in enumerate(as_completed(list(futures), loop=client.loop), 1):
            point = futures[future]
            try:
                row = future.result()
            except Exception as err:  # noqa: BLE001
                row = _failed_row(StoreRoot(location, storage_options), point.run_id,
                                  f"task: {type(err).__name__}: {err}")
            results[point.run_id] = row
            if progress is not None:
                progress(row, done, len(points))
    finally:
        client.close()
    return results


def table_name(spec_name: str, quick: bool) -> str:
    """File stem of a sweep's table next to its runs."""
    return f"{spec_name}{'-quick' if quick else ''}.sweep"


#: the files a sweep's table is written as (``.parquet`` where pyarrow is installed)
TABLE_SUFFIXES = (".csv", ".parquet")


def check_table_files(root: str | os.PathLike | None, stem: str, storage_options: dict | None = None) -> None:
    """Before any training: a :class:`UserError` when the table's files could not be written (a folder in the
    way), rather than after all of it."""
    from trajscope.store import StoreRoot

    store_root = StoreRoot(root, storage_options)
    for suffix in TABLE_SUFFIXES:
        store_root.check_file_name(f"{stem}{suffix}")


def write_table(table: pd.DataFrame, root: str | os.PathLike | None, stem: str,
                storage_options: dict | None = None) -> list[str]:
    """Write the sweep table next to the runs as CSV (and Parquet when pyarrow is installed), each file replaced
    whole (a sweep stopped while writing leaves the old table or the new one, never half of one)."""
    import io

    from trajscope.store import StoreRoot

    store_root = StoreRoot(root, storage_options)
    written = [store_root.write_file(f"{stem}.csv", table.to_csv(index=False).encode())]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    parquet = io.BytesIO()
    table.to_parquet(parquet, index=False)
    written.append(store_root.write_file(f"{stem}.parquet", parquet.getvalue()))
    return written


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: one row per run and the files holding the table (none when another writer
    held some of the runs: :attr:`busy`)."""

    spec: SweepSpec
    rows: list[dict[str, Any]]
    table: Any  # pandas.DataFrame
    files: list[str]
    seconds: float
    #: runs deleted or replaced after their point finished (:func:`still_stored`): their rows say so
    changed: list[str] = field(default_factory=list)

    @property
    def busy(self) -> list[dict[str, Any]]:
        """Rows of runs another live writer held (another sweep of the same spec, say)."""
        return [r for r in self.rows if r.get("action") == BUSY]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows whose run did not finish (not counting those another writer holds: :attr:`busy`)."""
        return [r for r in self.rows if r.get("status") != "complete" and r.get("action") != BUSY]


def run_sweep(
    source: str | os.PathLike | dict[str, Any] | SweepSpec,
    *,
    root: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    quick: bool = False,
    progress: Progress | None = None,
) -> SweepResult:
    """Expand, run (skipping finished and resuming unfinished runs), tabulate and write a sweep."""
    from trajscope.analysis.sweep import sweep_table

    started = time.perf_counter()
    if isinstance(source, SweepSpec):
        spec, folder = source, None
    else:
        spec, folder = load_sweep(source)
    if quick and spec.quick is None:  # (found by a review: it ran the full sweep, named -quick)
        raise UserError(f"sweep {spec.name} has no quick: section, so --quick would run the full sweep: drop --quick, "
                        f"or add e.g. quick: {{grid: {{...}}, seeds: [0]}}")
    points = expand(spec, folder, quick=quick)
    check_table_files(root, table_name(spec.name, quick), storage_options)
    rows = run_points(points, root=root, storage_options=storage_options, workers=workers, scheduler=scheduler,
                      progress=progress)
    if any_busy(rows):  # held by another writer when this sweep came to them: finished by now (two sweeps of one
        busy = [p for p, row in zip(points, rows) if row.get("action") == BUSY]  # spec started together, found
        again = run_points(busy, root=root, storage_options=storage_options, workers=workers,  # each other busy,
                           scheduler=scheduler)  # and neither wrote the table: found by a review), they are taken
        by_id = {row["run_id"]: row for row in again}  # as they are now: the last sweep to end writes the table
        rows = [by_id.get(row["run_id"], row) if row.get("action") == BUSY else row for row in rows]
    from trajscope.store import StoreRoot

    rows, changed = still_stored(rows, StoreRoot(root, storage_options))
    table = sweep_table(rows)
    # a run another writer holds (another sweep of this spec) has no row yet: that sweep writes the table, not
    # this one (found by a review: the sweep that finished last overwrote the table with `busy` rows of NaN)
    files = [] if any_busy(rows) else write_table(table, root, table_name(spec.name, quick), storage_options)
    return SweepResult(spec, rows, table, files, time.perf_counter() - started, changed)
