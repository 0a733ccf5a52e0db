"""Table tests of the pure request rules in pipeline.request."""

from __future__ import annotations

import pickle

import pytest

from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    GenerationRequest,
    InputError,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
    effective_steps,
    plan_steps,
)


@pytest.mark.parametrize(
    ("steps", "strength", "planned"),
    [
        (4, 0.05, (20, 1)),  # 4 × 0.05 = 0.2 → raised until one step runs
        (4, 0.35, (4, 1)),
        (4, 0.5, (4, 2)),
        (4, 1.0, (4, 4)),
        (30, 0.05, (30, 1)),
        (30, 0.35, (30, 10)),
        (30, 0.5, (30, 15)),
        (30, 1.0, (30, 30)),
        (1, 0.05, (20, 1)),
        (1, 1.0, (1, 1)),
        (2, 0.3, (4, 1)),  # SD-Turbo style: few steps at low strength
        (50, 0.8, (50, 40)),
        (0, 0.5, (2, 1)),  # nonsense step count still plans at least one step
    ],
)
def test_plan_steps(steps: int, strength: float, planned: tuple[int, int]) -> None:
    assert plan_steps(steps, strength) == planned
    total, run = planned
    assert run == effective_steps(total, strength) >= 1


@pytest.mark.parametrize(
    ("steps", "strength", "expected"),
    [(30, 0.35, 10), (30, 1.0, 30), (4, 0.05, 0), (10, 0.99, 9), (7, 1.0, 7)],
)
def test_effective_steps(steps: int, strength: float, expected: int) -> None:
    assert effective_steps(steps, strength) == expected


@pytest.mark.parametrize("strength", [0.05, 0.1, 0.5, 0.999, 1.0, 1])
def test_strength_accepted(strength: float) -> None:
    assert check_strength(strength) == float(strength)


@pytest.mark.parametrize("strength", [0.0, 0.049, -0.5, 1.0001, 2.0, float("nan"), float("inf")])
def test_strength_rejected(strength: float) -> None:
    with pytest.raises(InputError) as err:
        check_strength(strength)
    assert "out of range" in str(err.value) and "0.05" in str(err.value)
    with pytest.raises(InputError):
        plan_steps(30, strength)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a fox", "a fox"), ("  a fox \n", "a fox"), ("x" * MAX_PROMPT_CHARS, "x" * MAX_PROMPT_CHARS)],
)
def test_prompt_accepted(prompt: str, expected: str) -> None:
    assert check_prompt(prompt) == expected


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", None])
def test_prompt_empty(prompt: str | None) -> None:
    with pytest.raises(InputError, match="empty"):
        check_prompt(prompt)


def test_prompt_too_long() -> None:
    with pytest.raises(InputError) as err:
        check_prompt("y" * (MAX_PROMPT_CHARS + 1))
    assert f"{MAX_PROMPT_CHARS + 1} characters" in str(err.value)
    assert f"limit is {MAX_PROMPT_CHARS}" in str(err.value)


def test_negative_prompt_optional_but_limited() -> None:
    assert check_prompt(None, field="negative prompt", required=False) == ""
    assert check_prompt(" blurry ", field="negative prompt", required=False) == "blurry"
    with pytest.raises(InputError, match="negative prompt"):
        check_prompt("z" * 1001, field="negative prompt", required=False)


@pytest.mark.parametrize(
    ("seed", "ok"), [(None, True), (0, True), (MAX_SEED, True), (-1, False), (MAX_SEED + 1, False)]
)
def test_check_seed(seed: int | None, ok: bool) -> None:
    if ok:
        assert check_seed(seed) == seed
    else:
        with pytest.raises(InputError, match="Seed"):
            check_seed(seed)


@pytest.mark.parametrize(
    ("steps", "ok"), [(None, True), (1, True), (150, True), (0, False), (151, False)]
)
def test_check_steps(steps: int | None, ok: bool) -> None:
    if ok:
        assert check_steps(steps) == steps
    else:
        with pytest.raises(InputError, match="Steps"):
            check_steps(steps)


def test_request_is_picklable() -> None:
    req = GenerationRequest("j", "/in.png", "p", 0.5, 1, 30, 7.5, "/out.png", None)
    assert pickle.loads(pickle.dumps(req)) == req
