"""Statistics and printing for the benchmark: percentiles, rates and the final JSON line."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0–100); NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def verdict(value: float, target: float) -> str:
    """'ok' or 'MISSED' against a ≥ target."""
    return "ok" if value >= target else "MISSED"


def seconds_text(values: Sequence[float]) -> str:
    """`p50 1.23 s  p95 4.56 s` of a list of durations."""
    return f"p50 {percentile(values, 50):.2f} s  p95 {percentile(values, 95):.2f} s"


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def rounded(value: Any, digits: int = 3) -> Any:
    """Round floats (recursively) so the JSON line stays short; NaN becomes null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def json_line(figures: dict[str, Any]) -> str:
    return json.dumps(rounded(figures), separators=(", ", ": "))
