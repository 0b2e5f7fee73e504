"""What ``trajscope show`` prints for a run that is not a two-layer run: one row per parameter.

(Printing is the CLI's job, so it lives here; the numbers come from :func:`trajscope.analysis.generic.parameter_summary`.)
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from trajscope.analysis import select
from trajscope.analysis.generic import parameter_summary
from trajscope.analysis.registry import applicable, features, run_schema
from trajscope.analysis.summary import divergence_warning


def show_generic(ds: xr.Dataset, step: slice | None, run: str) -> bool:
    """Print the per-parameter table and the applicable quantities when ``ds`` is not a two-layer run;
    return False (printing nothing) for a two-layer run."""
    if "two_layer" in features(ds):
        return False
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {ds.attrs.get('run_id', run)} ({run_schema(ds).get('kind')} run, "
                        f"{ds.attrs.get('status', 'unknown status')}, {ds.sizes['step']} states)")
    for col in ("parameter", "shape", "‖θ‖_F (last)", "‖θ − θ(0)‖", "relative change"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    s = parameter_summary(ds, step).compute()
    for i, name in enumerate(s["parameter"].values):
        shape = "×".join(str(ds.sizes[d]) for d in ds[str(name)].dims[1:]) or "scalar"
        table.add_row(str(name), shape, f"{float(s['frobenius_norm'][i]):.4g}",
                      f"{float(s['distance_from_init'][i]):.4g}", _relative(s, i))
    console = Console()
    console.print(table)
    if "loss" in ds.data_vars and ds["loss"].dims == ("step",):  # (a number per state)
        console.print(f"loss at the last state: {float(ds['loss'][-1]):.6g}")
    diverged = divergence_warning(ds, step)
    if diverged:
        console.print(f"[yellow]warning:[/yellow] {diverged}", soft_wrap=True, highlight=False)
    console.print("analyses for this run: " + ", ".join(sorted(applicable(ds))))
    return True


def _relative(summary: xr.Dataset, i: int) -> str:
    """A parameter's relative change ``‖θ − θ(0)‖ / ‖θ(0)‖``; one that started at 0 (a LayerNorm or BatchNorm
    bias) has none: said so, not ``nan`` (found by a review)."""
    value, distance = float(summary["relative_change"][i]), float(summary["distance_from_init"][i])
    return "— (θ(0) = 0)" if np.isnan(value) and np.isfinite(distance) else f"{value:.3g}"


def generic_measured(ds: xr.Dataset, step: slice | None, summarized: xr.Dataset | None = None
                     ) -> dict[str, tuple[str, str]]:
    """``trajscope compare``'s measured rows for a run that is not a two-layer run: the loss at the last
    selected state and, per parameter, its distance from its initial value and its relative change
    (``summarized``: its ``parameter_summary`` of ``step``, computed, when the caller has it)."""
    rows: dict[str, tuple[str, str]] = {}
    selected = select(ds, step)
    rows["recorded states"] = (str(selected.sizes["step"]), "")  # (the two-layer summary's row of that name)
    if "loss" in ds.data_vars and ds["loss"].dims == ("step",):  # (a number per state)
        loss = selected["loss"]
        rows["loss (last state)"] = (f"{float(loss[-1]):.4g}", "")  # (4 digits, as every other row: a review)
    s = summarized if summarized is not None else parameter_summary(ds, step).compute()
    for i, name in enumerate(s["parameter"].values):
        rows[f"‖{name} − {name}(0)‖"] = (f"{float(s['distance_from_init'][i]):.4g}", "")
        rows[f"relative change of {name}"] = (_relative(s, i), "")
    return rows
