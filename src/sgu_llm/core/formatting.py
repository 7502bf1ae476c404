"""Numbers as the reports print them, and spreads over model seeds: one rule for every table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fmt(x: Any) -> str:
    """A number in 3 significant digits (2 below 0.01), None or nan as a dash, anything else as `str`.

    Example:
        >>> fmt(0.123456), fmt(0.000123456), fmt(None), fmt(12), fmt(float("nan"))
        ('0.123', '0.00012', '–', '12', '–')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool) or not isinstance(x, (float, np.floating)):
        return str(x)
    return f"{x:.2g}" if abs(x) < 0.01 and x != 0 else f"{x:.3g}"


def spread(values: list[float]) -> dict[str, float]:
    """Mean, median, min and max of `values`.

    Example:
        >>> spread([1.0, 2.0, 6.0])
        {'mean': 3.0, 'median': 2.0, 'min': 1.0, 'max': 6.0}
    """
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
