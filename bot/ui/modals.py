"""The settings modal behind Refine, Edit and "Apps → Img2img this", and reading it back.

The modal's custom_id names what it is for (`i2i:modal:refine:JOB`, `i2i:modal:edit:JOB`,
`i2i:modal:this:KEY`), and its submit is routed by that id alone (`parse_custom_id`), never by
an in-memory modal object: a modal opened before a restart is still handled after it. So the
modal is only a payload builder here; `build` stops it before it is sent, which keeps
discord.py from storing it.

Reading the values is pure (`submitted_values`, `read_form`) and checks them like the slash
command, with `pipeline.request`'s own rules.

Structure rides in the prompt as a tag (`<structure:lines:1.2>`), the way LoRAs do: Discord
allows five components in a modal and Edit and Img2img this use all five, so the form cannot
grow a Structure field. Edit and Refine show the job's structure as that tag after the
prompt; removing it turns structure off, editing it changes the kind or weight.
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
    MAX_STRUCTURE_WEIGHT,
    MIN_STRENGTH,
    MIN_STRUCTURE_WEIGHT,
    InputError,
    check_prompt,
    check_seed,
    check_strength,
    check_structure,
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
STRUCTURE_TAG = re.compile(r"\s*<structure:(?P<kind>[^:>]*)(?::(?P<weight>[^>]*))?>", re.I)
MAX_TAG_CHARS = 32  # room in the Prompt field for the tag beside a prompt at its limit
STRUCTURE_HINT = "Keep the input's structure: add <structure:lines:1> (sketches) or edges (photos)"


@dataclass(frozen=True)
class Form:
    """What a submitted modal asks for, already checked."""

    prompt: str
    negative_prompt: str | None
    strength: float
    seed: int | None  # None: a new random seed
    style: str | None = None  # a saved style's name to apply to the prompt
    structure: str | None = None  # the tag's kind ("off" included); None: no tag
    structure_weight: float = 1.0
    structure_skipped: str | None = None  # a style's kind left out: no ControlNet for it


def custom_id(kind: str, ref: int) -> str:
    return f"{PREFIX}:{kind}:{ref}"


def parse_custom_id(value: str) -> tuple[str, int] | None:
    """(kind, job id or key) of one of our modals, or None for anybody else's."""
    match = CUSTOM_ID.match(value)
    return (match["kind"], int(match["ref"])) if match else None


def strength_text(strength: float) -> str:
    return f"{strength:.2f}"


def structure_tag(kind: str, weight: float) -> str:
    return f"<structure:{kind}:{weight:g}>"


def split_structure(text: str) -> tuple[str, str | None, float]:
    """The prompt without its `<structure:KIND[:WEIGHT]>` tag, the tag's kind (`off`
    included; None without a tag) and weight (1 when not given). Raises `InputError` for
    two tags, a kind not offered or a weight that is not a number in range."""
    tags = list(STRUCTURE_TAG.finditer(text))
    if not tags:
        return text, None, 1.0
    if len(tags) > 1:
        raise InputError(
            "Use one `<structure:…>` tag, such as `<structure:lines:1>`; this prompt has "
            f"{len(tags)}."
        )
    kind = tags[0]["kind"].strip().lower()
    raw = (tags[0]["weight"] or "1").strip().replace(",", ".")
    try:
        weight = float(raw)
    except ValueError:
        raise InputError(
            f"The weight in `<structure:{kind[:10]}:…>` must be a number from "
            f"{MIN_STRUCTURE_WEIGHT:g} to {MAX_STRUCTURE_WEIGHT:g}, such as "
            "`<structure:lines:1.2>`."
        ) from None
    check_structure(kind, weight)  # the slash command's own rules and messages
    return STRUCTURE_TAG.sub("", text).strip(), kind, weight


def build(
    kind: str,
    ref: int,
    *,
    prompt: str = "",
    negative_prompt: str | None = None,
    strength: float,
    seed: int | None = None,
    pictures: list[str] | None = None,
    structure: str | None = None,
    structure_weight: float = 1.0,
    takes_structure: bool = False,
) -> discord.ui.Modal:
    """The modal, prefilled; inputs in Label components labelled exactly `Prompt`,
    `Negative prompt`, `Strength`, `Seed` and, on Edit and Img2img this, `Style` (the README
    and the tests rely on them). With several `pictures` (file names), a `Picture` select
    comes first, the first one chosen, and Seed gives way to it (five components at most).
    The job's `structure` follows the prompt as its tag; `takes_structure` (the new job will
    have an input to hold) puts the tag's syntax under the Prompt label."""
    modal = discord.ui.Modal(
        title=TITLES[kind].format(ref=ref), custom_id=custom_id(kind, ref), timeout=None
    )
    shown = prompt[:MAX_PROMPT_CHARS]
    if structure:
        shown = f"{shown} {structure_tag(structure, structure_weight)}".strip()
    inputs = [
        (
            "Prompt",
            discord.ui.TextInput(
                custom_id=PROMPT,
                style=discord.TextStyle.paragraph,
                default=shown or None,
                max_length=MAX_PROMPT_CHARS + MAX_TAG_CHARS,
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
        hint = STRUCTURE_HINT if label == "Prompt" and takes_structure else None
        modal.add_item(discord.ui.Label(text=label, component=text_input, description=hint))
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
    """Check a submitted modal like `/img2img` checks its options; raises `InputError`.
    The prompt's structure tag becomes the form's structure (the tag's own rules)."""
    text, structure, weight = split_structure(values.get(PROMPT) or "")
    prompt = check_prompt(text)
    negative = check_prompt(values.get(NEGATIVE), field="negative prompt", required=False)
    return Form(
        prompt=prompt,
        negative_prompt=negative or None,
        strength=read_strength(values.get(STRENGTH, "")),
        seed=read_seed(values.get(SEED, "")),
        style=values.get(STYLE, "").strip() or None,
        structure=structure,
        structure_weight=weight,
    )
