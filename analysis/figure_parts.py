"""What every time-series figure shares: thinning to at most :data:`MAX_POINTS` recorded states, and a log y
axis that survives runs with nothing positive to draw. Used by :mod:`~trajscope.analysis.plots` (the paper's
figures) and :mod:`~trajscope.analysis.plots_generic` (any run's), and by the API to refuse a figure that would
draw more states than that before it draws anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from trajscope.analysis._common import StepSel, select
from trajscope.analysis.registry import DS_ENTRY, PLOT_STEP_ENTRY, doc_entries

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: states a time-series figure draws at most without an explicit stride
MAX_POINTS = 2000


def thinned(ds: xr.Dataset, step: StepSel = None, max_points: int = MAX_POINTS) -> slice:
    """``step`` with a stride added (when it has none) so that at most ``max_points`` states remain.

    Parameters
    ----------
    ds
        A run's dataset (only its ``step`` coordinate is read).
    step
        ``None`` (every recorded state), an int ``k`` (step ``k`` alone) or ``slice(a, b, s)`` of step labels.
    max_points
        The most states to keep without a stride (default :data:`MAX_POINTS`).

    Returns
    -------
    slice
        ``step`` itself when it has a stride, else ``slice(a, b, s)`` with ``s = max(1, ceil(n / max_points))`` for
        ``n`` states in the range.

    Raises
    ------
    UserError
        When ``step`` has no stride and is malformed or selects no recorded state.
    """
    step = step if step is not None else slice(None)
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):  # (found by a review: an AttributeError)
        step = slice(int(step), int(step))
    if step.step is not None:
        return step
    n = select(ds, step).sizes["step"]
    return slice(step.start, step.stop, max(1, math.ceil(n / max_points)))


@doc_entries(DS_ENTRY, PLOT_STEP_ENTRY)
def states_drawn(ds: xr.Dataset, step: StepSel = None) -> int:
    """How many recorded states a time-series figure of ``step`` reads: those :func:`thinned` keeps (at most
    :data:`MAX_POINTS` without an explicit stride; every ``s``-th state of the range with one).

    Returns
    -------
    int
        The number of states.
    """
    return int(select(ds, thinned(ds, step)).sizes["step"])


def log_y(ax: Axes, *values: Any) -> None:
    """Log y scale where some value is finite and positive (the points at or below 0 are left out); otherwise a
    linear one and a note on the axes. Matplotlib refuses to draw a log axis with no positive value (found by a
    review: a run whose W is 0 throughout, or one that diverged at once, raised "Data cannot be log-scaled").

    Parameters
    ----------
    ax
        The axes.
    values
        The arrays drawn on it (array-likes).
    """
    ok = any(np.any(np.isfinite(a) & (a > 0)) for a in (np.asarray(v, dtype=float) for v in values))
    if ok:
        ax.set_yscale("log", nonpositive="mask")
    else:
        ax.text(0.5, 0.5, "no finite positive value to draw on a log scale", transform=ax.transAxes,
                ha="center", va="center", color="tab:gray")
