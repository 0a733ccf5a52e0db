"""Section `loras` of the bench: its figures and verdicts reach the report and the JSON line."""

from __future__ import annotations

from bench.loras import render_loras
from bench.options import parse_args


def test_loras_section_reports_both_figures_against_their_targets() -> None:
    result = {
        "jobs": 16, "size": 256, "max_batch": 4, "steps": 20, "strength": 0.5,
        "step_mixed_s": 10.0, "call_grouped_s": 12.0, "ratio_lora_mixed": 1.2,
        "mixed_pixels_equal": True, "step_plain_s": 7.0, "step_one_lora_s": 10.0,
        "lora_overhead": 0.7, "step_plain_runs_s": [7.0, 7.5], "step_one_lora_runs_s": [10.5, 10.0],
    }  # fmt: skip
    lines, figures = render_loras(result, [], {"kept": 1})
    assert figures == {
        "kept": 1, "ratio_lora_mixed": 1.2, "lora_overhead": 0.7, "lora_pixels_equal": True
    }  # fmt: skip
    assert any("ratio_lora_mixed 1.200   target ≥ 1.10  ok" in line for line in lines)
    assert any("lora_overhead 0.700   target ≥ 0.75  MISSED" in line for line in lines)
    assert any("identical" in line for line in lines)
    assert any("best of 7.00 / 7.50 and 10.50 / 10.00 s" in line for line in lines)
    assert "loras" in parse_args([], "").only
