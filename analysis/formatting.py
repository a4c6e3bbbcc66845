"""How values are written in the report's tables and text: one formatter for every cell."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

DIGITS = 4  # significant digits of a float in a table or sentence


def text(value: Any, spec: str | None = None) -> str:
    """A table cell or inline value: missing values (None, NA, NaN) as "n/a", booleans and
    integers as they are, floats with `DIGITS` significant digits (or ``spec``, a
    ``str.format`` spec such as ``"{:.2f}"``), infinities as "inf"/"-inf"."""
    if value is None or value is pd.NA:
        return "n/a"
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isinf(value):
            return "inf" if value > 0 else "-inf"
        return spec.format(value) if spec else f"{value:.{DIGITS}g}"
    return str(value)


def interval_text(low: Any, high: Any) -> str:
    """An interval as "[low, high]"."""
    return f"[{text(low)}, {text(high)}]"


def compact_ranges(seeds: Iterable[int]) -> str:
    """Seeds as ranges: [0, 1, 2, 3, 7] -> "0-3, 7" (with an en dash); "none" when empty."""
    values = sorted({int(s) for s in seeds})
    if not values:
        return "none"
    parts = []
    start = previous = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}\u2013{previous}")
        if value is not None:
            start = previous = value
    return ", ".join(parts)


def value_counts_text(values: pd.Series) -> str:
    """Distinct values with the number of files having each: "abc123 (3 files), ..."."""
    counts = values.fillna("not recorded").value_counts()
    return ", ".join(f"`{v}` ({n} file{'s' if n > 1 else ''})" for v, n in counts.items())


def extreme_text(values: pd.Series, largest: bool) -> str:
    """The smallest (or largest) recorded value, "not recorded" when there is none."""
    recorded = values.dropna().astype(str)
    if not len(recorded):
        return "not recorded"
    return max(recorded) if largest else min(recorded)


def family_label(row: pd.Series | dict[str, Any], columns: Iterable[str]) -> str:
    """A facet or group label: "c1=v1 · c2=v2" for the given columns ("all" when none)."""
    return " \u00b7 ".join(f"{c}={text(row[c])}" for c in columns) or "all"


def slug(value: str) -> str:
    """``value`` as a safe file name part."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", value).strip("_") or "all"
