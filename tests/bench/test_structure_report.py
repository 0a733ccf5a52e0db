"""Section `structure` of the bench: its figures and verdict reach the report and the JSON
line, and the section runs by default."""

from __future__ import annotations

from bench.options import parse_args
from bench.structure import render_structure


def test_structure_section_reports_its_figures_against_the_target() -> None:
    result = {
        "jobs": 16, "size": 256, "max_batch": 4, "steps": 20, "strength": 0.75,
        "step_mixed_s": 10.0, "call_grouped_s": 11.0, "ratio_structure_mixed": 1.1,
        "mixed_pixels_equal": False, "step_plain_s": 7.0, "step_all_lines_s": 9.8,
        "structure_overhead": 1.4,
    }  # fmt: skip
    lines, figures = render_structure(result, [], {"kept": 1})
    assert figures == {
        "kept": 1, "ratio_structure_mixed": 1.1, "structure_overhead": 1.4,
        "structure_pixels_equal": False,
    }  # fmt: skip
    assert any("ratio_structure_mixed 1.100   target ≥ 1.15  MISSED" in line for line in lines)
    assert any("structure_overhead 1.400" in line for line in lines)
    assert any("DIFFER" in line for line in lines)
    assert "structure" in parse_args([], "").only
