"""Variant clamping and labels, and the progress/queue texts."""

from __future__ import annotations

import pytest

from bot.ui.render import duration, ordinal, progress_bar, progress_text, queue_text
from bot.variants import STEP, compare_strengths, variant_label, variant_strength


@pytest.mark.parametrize(
    ("strength", "delta", "expected"),
    [
        (0.5, -STEP, 0.35),
        (0.5, STEP, 0.65),
        (0.1, -STEP, 0.05),
        (0.05, -STEP, None),
        (0.95, STEP, 1.0),
        (1.0, STEP, None),
        (0.2, -STEP, 0.05),
    ],
)
def test_variant_strength_clamps_to_range(
    strength: float, delta: float, expected: float | None
) -> None:
    assert variant_strength(strength, delta) == expected


@pytest.mark.parametrize(
    ("strength", "delta", "label"),
    [
        (0.5, -STEP, "−0.15 → 0.35"),
        (0.5, STEP, "+0.15 → 0.65"),
        (0.1, -STEP, "−0.05 → 0.05"),
        (1.0, STEP, "+0.15 → 1.00"),
    ],
)
def test_variant_label_shows_change_and_new_strength(
    strength: float, delta: float, label: str
) -> None:
    assert variant_label(strength, delta) == label


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (102, "102nd"),
    ],
)
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


def test_queue_text_names_place_and_eta() -> None:
    assert queue_text(3, 40) == "⏳ 3rd in this server's queue, about 40 s"
    assert duration(125) == "2 min 05 s"


@pytest.mark.parametrize(
    ("step", "total", "filled"), [(0, 10, 0), (5, 10, 8), (10, 10, 16), (12, 10, 16)]
)
def test_progress_bar(step: int, total: int, filled: int) -> None:
    bar = progress_bar(step, total)
    assert len(bar) == 16 and bar.count("█") == filled


def test_progress_text_says_step_k_of_n() -> None:
    assert "step 3 of 10" in progress_text(3, 10)
    assert "30%" in progress_text(3, 10)


@pytest.mark.parametrize(
    ("strength", "expected"),
    [
        (0.5, [0.35, 0.5, 0.65]),
        (0.1, [0.05, 0.1, 0.25]),
        (0.05, [0.05, 0.2]),
        (1.0, [0.85, 1.0]),
        (0.95, [0.8, 0.95, 1.0]),
    ],
)
def test_compare_strengths_clamp_and_drop_coinciding(
    strength: float, expected: list[float]
) -> None:
    assert compare_strengths(strength) == expected
