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

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: states a time-series figure draws at most without an explicit stride
MAX_POINTS = 2000


def thinned(ds: xr.Dataset, step: StepSel = None, max_points: int = MAX_POINTS) -> slice:
    """``step`` with a stride added (when it has none) so that at most ``max_points`` states remain."""
    step = step if step is not None else slice(None)
    if step.step is not None:
        return step
    n = select(ds, step).sizes["step"]
    return slice(step.start, step.stop, max(1, math.ceil(n / max_points)))


def states_drawn(ds: xr.Dataset, step: StepSel = None) -> int:
    """How many recorded states a time-series figure of ``step`` reads: those :func:`thinned` keeps (at most
    :data:`MAX_POINTS` without an explicit stride; every ``s``-th state of the range with one)."""
    return int(select(ds, thinned(ds, step)).sizes["step"])


def log_y(ax: Axes, *values: Any) -> None:
    """Log y scale where some value is finite and positive (the points at or below 0 are left out); otherwise a
    linear one and a note on the axes. Matplotlib refuses to draw a log axis with no positive value (found by a
    review: a run whose W is 0 throughout, or one that diverged at once, raised "Data cannot be log-scaled")."""
    ok = any(np.any(np.isfinite(a) & (a > 0)) for a in (np.asarray(v, dtype=float) for v in values))
    if ok:
        ax.set_yscale("log", nonpositive="mask")
    else:
        ax.text(0.5, 0.5, "no finite positive value to draw on a log scale", transform=ax.transAxes,
                ha="center", va="center", color="tab:gray")
