"""A result's buttons are sent from a template (`bot.ui.button_rows`) instead of a View per
result: what Discord gets must be exactly what `result_view` would send, for every shape."""

from __future__ import annotations

import pytest

from bot.ui.button_rows import ButtonRows, result_rows
from bot.ui.buttons import result_view
from pipeline.request import TEXT_TO_IMAGE, UPSCALE

STRENGTHS = [round(0.05 * n, 2) for n in range(21)] + [0.333, 0.9999]


@pytest.mark.parametrize("mode", ["img2img", "inpaint", TEXT_TO_IMAGE, UPSCALE])
@pytest.mark.parametrize("upscale", [True, False])
def test_the_rows_sent_are_the_views(mode: str, upscale: bool) -> None:
    for job_id in (1, 42, 987654321, 10**18 + 7):
        for strength in STRENGTHS:
            rows = result_rows(job_id, strength, mode=mode, upscale=upscale)
            view = result_view(job_id, strength, mode=mode, upscale=upscale)
            assert rows.to_components() == view.to_components()
            assert len(rows) == len(view.children) > 0


def test_each_results_rows_are_its_own() -> None:
    """Rows made from one template never share what is filled in per job."""
    first, second = result_rows(1, 0.5), result_rows(2, 0.5)
    first.to_components()[0]["components"][0]["custom_id"] = "changed"
    assert result_rows(1, 0.5).to_components() == result_view(1, 0.5).to_components()
    assert all(
        c["custom_id"].endswith(":2") for row in second.to_components() for c in row["components"]
    )


def test_discord_py_stores_nothing_for_them() -> None:
    """Clicks reach the registered `DynamicItem`s by custom_id: nothing is listened to."""
    rows = result_rows(1, 0.5)
    assert isinstance(rows, ButtonRows) and rows.__discord_ui_view__
    assert not rows.is_dispatchable() and rows.is_finished() and not rows.has_components_v2()
