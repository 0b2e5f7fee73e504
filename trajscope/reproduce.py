"""``trajscope reproduce``: run (or reuse) the paper's experiments and sweeps, write a report.

The report folder holds ``REPORT.md`` and ``figures/``. Its first table gives, per claim of Min,
Mallada & Vidal (ICLR 2024): the paper's statement, the value measured here, the rule that judges it
(written out, with its thresholds) and the verdict — ``holds``, ``fails``, or ``not applicable`` with
the reason (a hypothesis of the claim fails on the runs, or a run is missing). Runs are ordinary runs under the store
root with deterministic ids, so a second call reuses finished runs and resumes interrupted ones.

``quick=True`` subsamples MNIST (500 images per digit), shortens the appendix runs and the sweeps
(the reductions are listed in :data:`QUICK` and printed in the report).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trajscope.producer.config import RunConfig, load_config
from trajscope.experiments.sweep import (
    BUSY,
    SweepPoint,
    any_busy,
    check_table_files,
    expand,
    load_sweep,
    point_run_id,
    run_points,
    still_stored,
    table_name,
    write_table,
)
from trajscope.claims import ALIGN_LEVEL, _claims, _fmt
from trajscope.resources import configs_dir
from trajscope.store.errors import UserError
from trajscope.store.safe import zarr_store_holding

CONFIGS = configs_dir()  # the repository's configs/, shipped as package data

# key -> config file under configs/paper
EXPERIMENTS: dict[str, str] = {
    "fig5": "fig5_mnist01.yaml",
    "mnist38": "mnist38.yaml",
    "mnist17": "mnist17.yaml",
    "sgd": "mnist01_sgd.yaml",
    "w_only": "mnist01_w_only.yaml",
    "balanced": "mnist01_balanced.yaml",
    "toy_r2": "toy_r2.yaml",
    "two_point_0p1": "two_point_0p1.yaml",
    "two_point_0p001": "two_point_0p001.yaml",
    "two_point_orthogonal": "two_point_orthogonal.yaml",
}
SWEEPS: dict[str, str] = {"alignment_time": "alignment_time.yaml", "epsilon": "epsilon.yaml"}

_MNIST_QUICK = ["data.per_class=500"]
QUICK: dict[str, list[str]] = {
    "fig5": _MNIST_QUICK,
    "mnist38": _MNIST_QUICK + ["train.steps=10000"],
    "mnist17": _MNIST_QUICK + ["train.steps=10000"],
    "sgd": _MNIST_QUICK + ["train.steps=10000", "train.batch_size=160"],
    "w_only": _MNIST_QUICK + ["train.steps=10000"],
    "balanced": _MNIST_QUICK + ["train.steps=10000"],
}
"""``--quick`` overrides per experiment (sweeps use their own ``quick:`` section). Batch 160 keeps the
paper's batch fraction 2000/12665 on the 1000-image subsample."""

_SPLITS = {"train": "all 60 000 training images", "train50k": "the first 50 000 training images",
           "test": "the 10 000 test images"}


@dataclass
class Experiment:
    """One paper experiment: its key, config, the paper's statements and its run's row."""

    key: str
    config: RunConfig
    paper: list[str]
    source: str
    row: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.row) and self.row.get("status") == "complete" and "t2_step" in self.row


def _paper_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("# paper"):
            lines.append(line.split(":", 1)[1].strip())
        elif lines and line.startswith("#   "):
            lines[-1] += " " + line[1:].strip()
    return lines


def _same_t1_note(exps: list[Experiment]) -> list[str]:
    """A note when experiments of one data kind but different μ reached the same ``t1`` (the two-point study:
    same seed and width, so ``t1`` is set by the worst-placed initial neuron, not by μ; found by a review)."""
    by_kind: dict[str, list[Experiment]] = {}
    for e in exps:
        if e.ok and e.row.get("t1_status", "reached") == "reached":
            by_kind.setdefault(e.config.data.kind, []).append(e)
    out = []
    for kind, group in by_kind.items():
        mus = {round(float(e.row["mu"]), 6) for e in group}
        if len(group) >= 2 and len(mus) >= 2 and len({e.row["t1_step"] for e in group}) == 1:
            out += [f"**Note.** The {kind} runs ({', '.join(e.key for e in group)}) reach t1 at the same step "
                    f"({_fmt(group[0].row['t1_step'])}) for μ from {_fmt(min(mus))} to {_fmt(max(mus))}: with the same "
                    "seed and width, t1 is set by the worst-placed initial neuron, not by μ, so they do not test "
                    "how the alignment time grows as μ shrinks (the `alignment_time` sweep does).", ""]
    return out


def _load_experiments(experiments: dict[str, Any] | None, configs: Path, quick: bool) -> list[Experiment]:
    out = []
    for key, source in (experiments if experiments is not None else
                        {k: configs / "paper" / f for k, f in EXPERIMENTS.items()}).items():
        overrides = QUICK.get(key, []) if quick else []  # for the paper's files, not for configs given inline
        if isinstance(source, (dict, RunConfig)):
            config, paper, label = load_config(source), [], "(given)"
        else:
            path = Path(source)
            if not path.is_file():
                raise UserError(f"paper config {path} not found: run from the repository or pass --configs DIR")
            config, paper, label = load_config(path, overrides), _paper_lines(path), str(path)
        out.append(Experiment(key, config, paper, label))
    return out


def _points(exps: list[Experiment], sweeps: dict[str, Any], quick: bool) -> tuple[list[SweepPoint], dict]:
    points = []
    for exp in exps:
        prefix = f"paper-{exp.key}{'-quick' if quick else ''}"
        run_id = point_run_id(prefix, {}, exp.config)
        config = exp.config.model_copy(deep=True)
        config.name = run_id
        points.append(SweepPoint(run_id, config, {"experiment": exp.key}))
    sweep_points = {}
    for key, source in sweeps.items():
        spec, folder = load_sweep(source)
        sweep_points[key] = (spec, expand(spec, folder, quick=quick))
        points.extend(sweep_points[key][1])
    return points, sweep_points


# -- measurements beyond the per-run summary (analysis functions, combined) ---------------------------------------


def _alignment_onset(ds) -> float:
    """First recorded step from which both mean-neuron cosines stay ≥ ALIGN_LEVEL (NaN if never)."""
    from trajscope.analysis.alignment import mean_neuron_alignment

    mean = mean_neuron_alignment(ds)["mean"].compute()
    good = (mean >= ALIGN_LEVEL).all("label").values
    steps = ds["step"].values
    bad = np.nonzero(~good)[0]
    first = 0 if bad.size == 0 else bad[-1] + 1
    return float(steps[first]) if first < len(steps) else math.nan


def _cell(text: Any) -> str:
    """Markdown table cell: pipes (as in ||W||) escaped."""
    return str(text).replace("|", "\\|")


# -- the report ---------------------------------------------------------------------------------------------


def reproduce(
    out: str | os.PathLike = "report",
    *,
    root: str | os.PathLike | None = None,
    quick: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    configs: str | os.PathLike | None = None,
    experiments: dict[str, Any] | None = None,
    sweeps: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any], int, int], None] | None = None,
) -> Path:
    """Run or reuse every experiment and sweep, then write ``<out>/REPORT.md`` and its figures.

    ``experiments``/``sweeps`` replace the default sets (key → config path/dict, key → sweep path/dict);
    the claims look for the keys ``fig5``, ``w_only`` (experiments) and ``alignment_time``, ``epsilon``
    (sweeps) and say "not applicable" when one is absent.
    """
    import pandas as pd

    from trajscope.analysis.sweep import sweep_table
    from trajscope.store import StoreRoot

    started = time.perf_counter()
    configs_dir = Path(configs) if configs is not None else CONFIGS
    if (experiments is None or sweeps is None) and not configs_dir.is_dir():
        raise UserError(f"configs folder {configs_dir} not found: pass --configs DIR, a folder holding paper/ and sweeps/")
    exps = _load_experiments(experiments, configs_dir, quick)
    sweep_sources = sweeps if sweeps is not None else {k: configs_dir / "sweeps" / f for k, f in SWEEPS.items()}
    points, sweep_points = _points(exps, sweep_sources, quick)
    store_root = StoreRoot(root)
    for spec, _ in sweep_points.values():  # (before any training: a folder in a table's way)
        check_table_files(store_root.location, table_name(spec.name, quick))
    out_dir = Path(out)
    inside = zarr_store_holding(out_dir)  # (a folder not made yet: its parents)
    if inside is not None:  # (found by a review: the figures were refused one by one after all the training)
        raise UserError(f"--out {out}: it is inside the Zarr store {inside} (a run, an export...): the report would be "
                        "taken for part of it and deleted with it; choose a folder outside it")
    made = [d for d in (out_dir, out_dir / "figures") if not d.exists()]
    try:  # before any run: a report folder that cannot be made is said now, not after an hour of training
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot make the report folder there ({err.strerror}); choose another") from None
    try:
        rows = run_points(points, root=store_root.location, workers=workers, scheduler=scheduler, progress=progress)
    except BaseException:  # (--workers 0, a bad --scheduler, no torch, Ctrl-C: found by reviews to leave an empty
        # report/ behind)
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # only folders this call made, and only while empty
                folder.rmdir()
        raise
    if any_busy(rows):  # held by another writer (another sweep or reproduce): taken again once, as run_sweep does
        busy = [p for p, row in zip(points, rows) if row.get("action") == BUSY]
        again = {row["run_id"]: row for row in run_points(busy, root=store_root.location, workers=workers,
                                                            scheduler=scheduler)}
        rows = [again.get(row["run_id"], row) if row.get("action") == BUSY else row for row in rows]
    if any_busy(rows):  # (found by a review: the report was written without them, its claims over fewer runs)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        held = [row["run_id"] for row in rows if row.get("action") == BUSY]
        raise UserError(f"{len(held)} run(s) are being written by another process ({', '.join(held[:3])}"
                        f"{', ...' if len(held) > 3 else ''}): the report is not written; run the same command again "
                        "once they are done")
    rows, _ = still_stored(rows, store_root)  # (a run deleted meanwhile gives no numbers to the report)
    by_id = {row["run_id"]: row for row in rows}
    for exp, point in zip(exps, points):
        exp.row = by_id.get(point.run_id)
    tables: dict[str, pd.DataFrame] = {}
    for key, (spec, pts) in sweep_points.items():
        tables[key] = sweep_table([by_id[p.run_id] for p in pts])
        write_table(tables[key], store_root.location, table_name(spec.name, quick))
    extra = _extras(exps, store_root)
    figures = _figures(exps, tables, store_root, out_dir / "figures")
    claims = _claims({e.key: e for e in exps}, tables, extra)
    seconds = time.perf_counter() - started
    text = _markdown(exps, tables, claims, extra, figures, quick=quick, seconds=seconds, rows=rows,
                     root=store_root.location)
    from trajscope.figures import write_replacing

    write_replacing(out_dir / "REPORT.md", text.encode())  # (a link of the name replaced, never written through)
    for key, table in tables.items():
        write_replacing(out_dir / f"{key}.csv", table.to_csv(index=False).encode())
    return out_dir / "REPORT.md"


def _open(store_root, exp: Experiment):
    from trajscope.store import open_run

    return open_run(exp.row["run_id"], store_root)


def _extras(exps: list[Experiment], store_root) -> dict[str, dict[str, float]]:
    extra = {}
    for exp in exps:
        if not exp.ok:
            continue
        ds = _open(store_root, exp)
        extra[exp.key] = {"align_onset_step": _alignment_onset(ds)}
        if exp.key == "fig5" and exp.row.get("t1_status") != "reached":
            from trajscope.analysis.separability import cone_condition_text, cone_margins

            extra[exp.key]["cone_condition"] = cone_condition_text(cone_margins(ds))
    return extra


def _figures(exps, tables, store_root, folder: Path) -> list[tuple[str, str]]:
    from trajscope.analysis.plots import PLOT_KINDS
    from trajscope.figures import save_figure as save
    from trajscope.analysis.sweep import plot_against_log_inv_eps, plot_t1_vs_scale

    made = []
    wanted = {"fig5": ["alignment", "loss", "mean_neurons"], "w_only": ["loss", "alignment"],
              "balanced": ["alignment", "loss"], "toy_r2": ["plane", "alignment", "loss"],
              "two_point_0p001": ["alignment"], "mnist38": ["alignment", "loss"], "mnist17": ["alignment", "loss"],
              "sgd": ["loss"]}
    for exp in exps:
        if not exp.ok:
            continue
        ds = _open(store_root, exp)
        for kind in wanted.get(exp.key, ["loss"]):
            name = f"{exp.key}_{kind}.png"
            try:
                fig = PLOT_KINDS[kind](ds)
            except UserError:  # e.g. "plane" on data that are not 2-D (a refusal to write is not caught)
                continue
            save(fig, folder / name)
            made.append((f"{exp.key}: {kind}", name))
    if "alignment_time" in tables and tables["alignment_time"]["t1_sum"].notna().any():
        save(plot_t1_vs_scale(tables["alignment_time"]), folder / "sweep_t1_vs_scale.png")
        made.append(("alignment_time sweep: measured t1 vs log n/(√μ X_min)", "sweep_t1_vs_scale.png"))
    if "epsilon" in tables and tables["epsilon"]["t2_time"].notna().any():
        save(plot_against_log_inv_eps(tables["epsilon"]), folder / "sweep_eps.png")
        made.append(("epsilon sweep: t1, t2 vs log(1/ε)", "sweep_eps.png"))
    return made


def _markdown(exps, tables, claims, extra, figures, *, quick, seconds, rows, root) -> str:
    import trajscope

    lines = ["# Reproduction report: Early Neuron Alignment in Two-layer ReLU Networks with Small Initialization",
             "", "Min, Mallada & Vidal, ICLR 2024 (arXiv 2307.12851); produced by `trajscope reproduce"
             + (" --quick`." if quick else "`."), ""]
    if quick:
        lines += ["> **Quick mode.** MNIST is subsampled to 500 images per digit; the appendix MNIST runs are "
                  "shortened to 10000 iterations (SGD: batch 160, the paper's batch fraction); the sweeps use their "
                  "`quick:` grids. Numbers differ from the full run; run `trajscope reproduce` for the full version.",
                  ""]
    actions = {}
    for row in rows:
        actions[row.get("action", "?")] = actions.get(row.get("action", "?"), 0) + 1
    lines += [f"Runtime: {seconds:.0f} s on {os.cpu_count()} CPU cores ({platform.machine()}), trajscope "
              f"{trajscope.__version__}; runs: {len(rows)} ("
              + ", ".join(f"{v} {k}" for k, v in sorted(actions.items())) + f") under `{root}`.", ""]
    lines += ["## Claims", "", "| claim | paper | measured | rule | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        lines.append("| " + " | ".join(_cell(c[k]) for k in ("claim", "paper", "measured", "rule", "verdict")) + " |")
    lines += ["", "Each verdict follows from its rule alone; \"not applicable\" says which hypothesis or run is missing. "
              "t1 is \"undefined\" when no neuron is in S+, S- or S_dead at any recorded state, \"not reached\" when "
              "some is but the last state is not all aligned. Theory values are bounds and scales, not predictions "
              "of the exact step.", ""]
    notes = [f"{e.key}: {e.row['data_warnings']}" for e in exps if e.ok and e.row.get("data_warnings")]
    if notes:
        lines += ["**Data warnings.** " + " ".join(notes), ""]
    lines += ["## Experiments", "",
              "| experiment | run | status | n | μ | t1 step | t2 step | post-t2 slope | stable rank | cos(w̄+,x+) | "
              "cos(w̄-,x-) | final loss | paper reports |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in exps:
        r = e.row or {}
        paper = _cell("; ".join(e.paper) or "—")
        if not e.ok:
            lines.append(f"| {e.key} | {r.get('run_id', '—')} | {r.get('status', 'missing')} "
                         f"{(r.get('error') or '')[:80]} | | | | | | | | | | {paper} |")
            continue
        lines.append(f"| {e.key} | `{r['run_id']}` | {r['status']} | {_fmt(r['n'])} | {_fmt(r['mu'])} | "
                     f"{_fmt(r['t1_step']) if r.get('t1_status', 'reached') == 'reached' else r['t1_status']} | "
                     f"{_fmt(r['t2_step'])} | {_fmt(r['post_t2_slope'])} | "
                     f"{_fmt(r['stable_rank_final'])} | {_fmt(r['mean_alignment_pos_final'])} | "
                     f"{_fmt(r['mean_alignment_neg_final'])} | {_fmt(r['loss_final'])} | {paper} |")
    lines += ["", "Configs: " + ", ".join(f"{e.key} = `{e.source}`" for e in exps), ""]
    lines += _same_t1_note(exps)
    mnist = sorted({(e.config.data.split, e.config.data.per_class, e.config.data.center) for e in exps
                    if e.config.data.kind == "mnist"}, key=str)
    if mnist:
        lines += ["MNIST data: pixels k/255 in [0, 1]; " + "; ".join(
            f"split `{split}` ({_SPLITS.get(split, split)})"
            + (f", {per} images per digit drawn from it" if per else ", every image of the two digits")
            + (", centred" if centre else "") for split, per, centre in mnist) + ".", ""]
    for key, table in tables.items():
        lines += [f"## Sweep `{key}`", "", f"{len(table)} runs; table also at `{key}.csv` here and next to the runs.", ""]
        cols = [c for c in table.columns if c.startswith("param.")] + ["n", "mu", "epsilon", "t1_step", "t2_step",
                                                                     "t1_sum", "t2_sum", "post_t2_slope",
                                                                     "stable_rank_final", "status"]
        cols = list(dict.fromkeys(c for c in cols if c in table.columns))
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in table.iterrows():
            lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for title, name in figures:
            lines += [f"### {title}", "", f"![{title}](figures/{name})", ""]
    return "\n".join(lines)
