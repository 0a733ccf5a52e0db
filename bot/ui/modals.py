"""The settings modal behind Refine, Edit and "Apps → Img2img this", and reading it back.

The modal's custom_id names what it is for (`i2i:modal:refine:JOB`, `i2i:modal:edit:JOB`,
`i2i:modal:this:KEY`), and its submit is routed by that id alone (`parse_custom_id`), never by
an in-memory modal object: a modal opened before a restart is still handled after it. So the
modal is only a payload builder here; `build` stops it before it is sent, which keeps
discord.py from storing it.

Reading the values is pure (`submitted_values`, `read_form`) and checks them like the slash
command, with `pipeline.request`'s own rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import discord

from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_STRENGTH,
    InputError,
    check_prompt,
    check_seed,
    check_strength,
)

PREFIX = "i2i:modal"
CUSTOM_ID = re.compile(rf"^{PREFIX}:(?P<kind>refine|edit|this):(?P<ref>\d+)$")
PROMPT, NEGATIVE, STRENGTH, SEED, PICTURE = "prompt", "negative", "strength", "seed", "picture"
STYLE = "style"
MAX_STYLE_CHARS = 100
MAX_COMPONENTS = 5  # Discord's limit for one modal
STYLED = ("edit", "this")  # the modals with a Style field
MAX_PICTURES = 25  # options in one select
REFINE_STRENGTH = 0.30
THIS_STRENGTH = 0.5
TITLES = {"refine": "Refine #{ref}", "edit": "Edit #{ref}", "this": "Img2img this picture"}


@dataclass(frozen=True)
class Form:
    """What a submitted modal asks for, already checked."""

    prompt: str
    negative_prompt: str | None
    strength: float
    seed: int | None  # None: a new random seed
    style: str | None = None  # a saved style's name to apply to the prompt


def custom_id(kind: str, ref: int) -> str:
    return f"{PREFIX}:{kind}:{ref}"


def parse_custom_id(value: str) -> tuple[str, int] | None:
    """(kind, job id or key) of one of our modals, or None for anybody else's."""
    match = CUSTOM_ID.match(value)
    return (match["kind"], int(match["ref"])) if match else None


def strength_text(strength: float) -> str:
    return f"{strength:.2f}"


def build(
    kind: str,
    ref: int,
    *,
    prompt: str = "",
    negative_prompt: str | None = None,
    strength: float,
    seed: int | None = None,
    pictures: list[str] | None = None,
) -> discord.ui.Modal:
    """The modal, prefilled; inputs in Label components labelled exactly `Prompt`,
    `Negative prompt`, `Strength`, `Seed` and, on Edit and Img2img this, `Style` (the README
    and the tests rely on them). With several `pictures` (file names), a `Picture` select
    comes first, the first one chosen, and Seed gives way to it (five components at most)."""
    modal = discord.ui.Modal(
        title=TITLES[kind].format(ref=ref), custom_id=custom_id(kind, ref), timeout=None
    )
    inputs = [
        (
            "Prompt",
            discord.ui.TextInput(
                custom_id=PROMPT,
                style=discord.TextStyle.paragraph,
                default=prompt[:MAX_PROMPT_CHARS] or None,
                max_length=MAX_PROMPT_CHARS,
                placeholder="What the new picture should show",
            ),
        ),
        (
            "Negative prompt",
            discord.ui.TextInput(
                custom_id=NEGATIVE,
                style=discord.TextStyle.paragraph,
                default=(negative_prompt or "")[:MAX_PROMPT_CHARS] or None,
                max_length=MAX_PROMPT_CHARS,
                required=False,
                placeholder="What to avoid (optional)",
            ),
        ),
        (
            "Strength",
            discord.ui.TextInput(
                custom_id=STRENGTH,
                default=strength_text(strength),
                max_length=10,
                placeholder=f"{MIN_STRENGTH} (keep the picture) to {MAX_STRENGTH} (ignore it)",
            ),
        ),
        (
            "Seed",
            discord.ui.TextInput(
                custom_id=SEED,
                default=None if seed is None else str(seed),
                max_length=len(str(MAX_SEED)),
                required=False,
                placeholder="Empty: a new random seed",
            ),
        ),
    ]
    if kind in STYLED:
        style_input = discord.ui.TextInput(
            custom_id=STYLE,
            max_length=MAX_STYLE_CHARS,
            required=False,
            placeholder="A saved style to apply to the prompt (see /style list)",
        )
        inputs.append(("Style", style_input))
    choosing = bool(pictures and len(pictures) > 1)
    if choosing and len(inputs) + 1 > MAX_COMPONENTS:
        inputs = [pair for pair in inputs if pair[0] != "Seed"]
    if pictures and choosing:
        options = [
            discord.SelectOption(label=f"{i + 1}. {name}"[:100], value=str(i), default=i == 0)
            for i, name in enumerate(pictures[:MAX_PICTURES])
        ]
        choice = discord.ui.Select[Any](custom_id=PICTURE, options=options)
        modal.add_item(discord.ui.Label(text="Picture", component=choice))
    for label, text_input in inputs:
        modal.add_item(discord.ui.Label(text=label, component=text_input))
    modal.stop()  # never stored: the submit is routed by custom_id (see the module docstring)
    return modal


def submitted_values(data: Any) -> dict[str, str]:
    """Text input values (and a select's first choice) of a MODAL_SUBMIT's `data`, by
    custom_id, whether the inputs sit in action rows (type 1) or Label components (type 18)."""
    values: dict[str, str] = {}

    def walk(comp: Any) -> None:
        if not isinstance(comp, dict):
            return
        if comp.get("type") == 4 and isinstance(comp.get("custom_id"), str):
            values[comp["custom_id"]] = str(comp.get("value") or "")
        if comp.get("type") == 3 and isinstance(comp.get("custom_id"), str):
            values[comp["custom_id"]] = str((comp.get("values") or [""])[0])
        for child in comp.get("components") or []:
            walk(child)
        walk(comp.get("component"))

    for comp in (data or {}).get("components") or []:
        walk(comp)
    return values


def read_strength(text: str) -> float:
    """A strength as people type it: `0.3`, `0,3` (decimal comma), ` .3 `."""
    cleaned = text.strip().replace(",", ".")
    try:
        value = float(cleaned)
    except ValueError:
        raise InputError(
            f"Strength must be a number from {MIN_STRENGTH} to {MAX_STRENGTH}, such as 0.3; "
            f"“{text.strip()[:20]}” is not one."
        ) from None
    return check_strength(value)


def read_seed(text: str) -> int | None:
    cleaned = text.strip()
    if not cleaned:
        return None
    if not cleaned.isdigit():
        raise InputError(
            f"Seed must be a whole number from 0 to {MAX_SEED}, or empty for a random one."
        )
    return check_seed(int(cleaned))


def read_form(values: dict[str, str]) -> Form:
    """Check a submitted modal like `/img2img` checks its options; raises `InputError`."""
    prompt = check_prompt(values.get(PROMPT))
    negative = check_prompt(values.get(NEGATIVE), field="negative prompt", required=False)
    return Form(
        prompt=prompt,
        negative_prompt=negative or None,
        strength=read_strength(values.get(STRENGTH, "")),
        seed=read_seed(values.get(SEED, "")),
        style=values.get(STYLE, "").strip() or None,
    )
