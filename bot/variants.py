"""Strength variants: the −/+ buttons re-run a job a notch weaker or stronger."""

from __future__ import annotations

from pipeline.request import MAX_STRENGTH, MIN_STRENGTH

STEP = 0.15


def variant_strength(strength: float, delta: float) -> float | None:
    """New strength after `delta`, clamped to the accepted range; None when it cannot move."""
    new = round(min(MAX_STRENGTH, max(MIN_STRENGTH, strength + delta)), 2)
    return None if abs(new - strength) < 1e-9 else new


def variant_label(strength: float, delta: float) -> str:
    """Button text such as `−0.15 → 0.35`; shows the real change where clamping shortened it."""
    new = variant_strength(strength, delta)
    if new is None:
        return f"{_signed(delta)} → {strength:.2f}"
    return f"{_signed(new - strength)} → {new:.2f}"


def _signed(value: float) -> str:
    return f"{'−' if value < 0 else '+'}{abs(value):.2f}"


def compare_strengths(strength: float) -> list[float]:
    """The strengths a comparison shows, in order: s − 0.15, s, s + 0.15, clamped to the
    accepted range; where clamping makes two coincide, only the distinct ones (two)."""
    candidates = [variant_strength(strength, -STEP), strength, variant_strength(strength, STEP)]
    return sorted({s for s in candidates if s is not None})
