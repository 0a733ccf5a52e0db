"""The benchmark's arithmetic and options: pure functions, no model."""

from __future__ import annotations

import json
import math

import pytest

from bench.direct import DirectRun
from bench.fullpath import FullRun
from bench.options import parse_args
from bench.report import json_line, percentile


def test_percentile_interpolates_and_is_nan_when_empty() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 50))


def test_json_line_rounds_and_turns_nan_into_null() -> None:
    line = json_line({"ratio_batched": 1.234567, "lag_p99_ms": math.nan, "nested": {"x": 0.1234}})
    assert json.loads(line) == {"ratio_batched": 1.235, "lag_p99_ms": None, "nested": {"x": 0.123}}
    assert "\n" not in line


def test_full_run_unit_times_share_each_call_among_its_images() -> None:
    run = FullRun(
        wall=3.0,
        latencies=[1.0, 1.0, 3.0],
        service_times=[1.0, 1.0, 2.0],
        batches=[("1", "2"), ("3",)],
        released_at=10.0,
        delivered_at={"1": 10.9, "2": 11.0, "3": 13.0},
    )
    # first call: release → its last delivery (1 s) for 2 images; second: 2 s for 1 image
    assert run.unit_times == [0.5, 0.5, 2.0]


def test_direct_run_unit_times_with_a_short_last_call() -> None:
    run = DirectRun(calls=[4.0, 1.0], wall=5.0, outputs=[], images=5, batch=4)
    assert run.unit_times == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_options_from_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ID", "/models/sd")
    monkeypatch.setenv("MAX_BATCH", "8")
    monkeypatch.setenv("COMPILE", "yes")
    monkeypatch.setenv("BENCH_N", "6")
    opts = parse_args(["--n", "3", "--sweep", "1,4,8"], "")
    assert opts.model == "/models/sd"
    assert opts.max_batch == 8 and opts.compile is True
    assert opts.n == 3  # a flag wins over its variable
    assert opts.sweep == [1, 4, 8] and "sweep" in opts.only


def test_options_refuse_an_unknown_section() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "big,nope"], "")


def test_upscale_section_reports_its_ratio_against_the_target() -> None:
    from bench.upscale import render_upscale

    mode = {"ips_wall": 1.0, "latency_p50_s": 2.0}
    result = {
        "batched": mode, "single": mode, "tiles": 49, "tile_px": 128, "size": (512, 512),
        "max_batch": 4, "ratio_upscale": 1.1, "ratio_upscale_cpu": 1.6,
        "pictures": {"max": 0.0, "share": 0.0},
    }  # fmt: skip
    lines, figures = render_upscale(result, [], {})
    assert figures["ratio_upscale"] == 1.1 and figures["upscale_pictures_max_diff"] == 0.0
    assert any("target ≥ 1.25  MISSED" in line for line in lines)
    assert any("identical" in line for line in lines)
    assert "upscale" in parse_args([], "").only


def test_preview_section_reports_its_ratio_against_the_target() -> None:
    from bench.previews import render_preview

    mode = {"ips_wall": 1.0, "image_steps_per_s": 20.0}
    result = {
        "taesd": mode, "off": mode, "every_steps": 5, "previews_shown": 12,
        "ratio_preview": 0.97, "ratio_preview_median": 0.99,
    }  # fmt: skip
    lines, figures = render_preview(result, [], {})
    assert figures["ratio_preview"] == 0.97
    assert any("target ≥ 0.95  ok" in line for line in lines)
    assert any("12 previews" in line for line in lines)
    assert "preview" in parse_args([], "").only
