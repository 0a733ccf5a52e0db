"""Section `swaps` of the bench: its figures and verdict reach the report and the JSON line."""

from __future__ import annotations

from bench.options import parse_args
from bench.swaps import render_swaps


def test_swaps_section_reports_swaps_per_job_and_the_displacement() -> None:
    result = {
        "jobs": 16, "swaps": 5, "swaps_per_job": 0.3125, "swap_displacement": 7, "swap_window": 8
    }  # fmt: skip
    lines, figures = render_swaps(result, [], {"kept": 1})
    assert figures == {"kept": 1, "swaps_per_job": 0.3125, "swap_displacement": 7}
    assert any("swaps_per_job" in line and "MISSED" in line for line in lines)
    assert any("largest displacement from fair order: 7 places" in line for line in lines)
    ok, _ = render_swaps({**result, "swaps": 1, "swaps_per_job": 0.0625}, [], {})
    assert any("target ≤ 0.25  ok" in line for line in ok)
    assert "swaps" in parse_args([], "").only
