"""Numbers as tables print them (light: the CLI's listings use it without importing the analysis)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fmt(value: Any, digits: int = 4) -> str:
    """Format a number for tables: ``digits`` significant digits, integers plain, NaN as ``"—"``."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "—"
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.{digits}g}"
