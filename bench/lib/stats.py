"""Summaries over repeats: medians and maxima that tolerate failed runs, ratios, slopes."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def median(vals: Iterable[float]) -> float | None:
    """Median of ``vals``; None when there are none (every run failed)."""
    v = list(vals)
    return statistics.median(v) if v else None


def maximum(vals: Iterable[float]) -> float | None:
    """Largest of ``vals``; None when there are none."""
    return max(vals, default=None)


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either is missing or zero."""
    return num / den if num and den else None


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0..n-1."""
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    num = sum((i - xm) * (y - ym) for i, y in enumerate(ys))
    den = sum((i - xm) ** 2 for i in range(n))
    return num / den if den else 0.0
