"""Saved styles as plain values: name rules, template composition, built-ins, limits.

A style is a prompt template plus an optional negative prompt and strength, so a series of
pictures can share one look without typing the settings again. Everything here is a function
of values; `bot.store.styles` keeps styles in SQLite and `bot.cogs.styles` words the answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bot.errors import UserError
from pipeline.request import MAX_PROMPT_CHARS, MAX_STRENGTH, MIN_STRENGTH

log = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"
MAX_NAME_CHARS = 32
NAME_RE = re.compile(rf"[a-z0-9-]{{1,{MAX_NAME_CHARS}}}")
MAX_PER_MEMBER = 25
MAX_PER_SERVER = 50
DEFAULT_STRENGTH = 0.5
MAX_CHOICES = 25  # Discord shows at most 25 autocomplete choices

Scope = Literal["mine", "server", "builtin"]
SCOPE_LABEL: dict[Scope, str] = {"mine": "yours", "server": "this server's", "builtin": "built-in"}


@dataclass(frozen=True)
class Style:
    """A named look. `strength` None: the user's strength, or the default, applies."""

    name: str
    template: str
    negative_prompt: str | None = None
    strength: float | None = None
    scope: Scope = "builtin"
    description: str = ""
    loras: str = ""
    """LoRA tags the style adds (`<lora:pixel:0.8> …`, canonical); a member's own tag for
    the same LoRA wins."""
    model: str | None = None
    """The catalogue model the style runs on; a member's `model:` wins."""
    structure: str = ""
    """The structure kind the style keeps (`lines`, `edges`) where the job's model has a
    ControlNet for it; "" none. A member's own `structure:` wins."""


@dataclass(frozen=True)
class Composed:
    """What a job runs with once a style (or none) was applied."""

    prompt: str
    negative_prompt: str | None
    strength: float
    style: str | None
    loras: str = ""
    """The style's LoRA tags, joined with the member's by `bot.loras.LoraTags.styled`."""
    model: str = ""
    """The catalogue model the job runs on (`bot.models.ModelChoice.pick`); "" until chosen."""
    structure: str = ""
    """The style's structure kind ("" none); `structure_for` decides whether it runs."""


BUILTINS: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            "oil-painting",
            "{prompt}, oil painting, impressionist brushwork, warm palette",
            "photo, blurry, low quality",
            0.5,
            description="impressionist oil painting, warm palette",
        ),
        Style(
            "watercolour",
            "{prompt}, watercolour painting, soft colours, painterly, paper texture",
            "photo, harsh lines, low quality",
            0.5,
            description="soft colours, painterly",
        ),
        Style(
            "concept-art",
            "{prompt}, polished concept art, detailed digital painting, dramatic lighting",
            "rough sketch, unfinished, low quality",
            0.7,
            description="polished concept art from a rough sketch",
            structure="lines",
        ),
        Style(
            "digital-illustration",
            "{prompt}, professional digital illustration, clean lines, vibrant colours",
            "photo, blurry, low quality",
            0.45,
            description="photo to professional illustration",
        ),
        Style(
            "product-clean",
            "{prompt}, product photo, clean white background, studio lighting, soft shadows",
            "clutter, busy background, harsh shadows",
            0.5,
            description="clean white background, studio lighting",
        ),
        Style(
            "winter",
            "{prompt}, the same scene in winter, snow, frost, cold light",
            "summer, green leaves",
            0.5,
            description="the same scene in winter",
        ),
    )
}


def check_name(name: str) -> str:
    """The name as stored (trimmed, lower case), or a `UserError` saying the rule."""
    text = (name or "").strip().lower()
    if not NAME_RE.fullmatch(text):
        raise UserError(
            f"A style name uses only a–z, 0–9 and '-', at most {MAX_NAME_CHARS} characters, "
            "e.g. `family-oil`."
        )
    return text


def check_template(template: str) -> str:
    """A template is a prompt that may hold `{prompt}`; it must leave room for the user's."""
    text = (template or "").strip()
    if not text.replace(PLACEHOLDER, "").strip(" ,"):
        raise UserError(
            "The style's prompt is empty. Describe the look, e.g. "
            "`{prompt}, oil painting, impressionist`."
        )
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(
            f"The style's prompt is {len(text)} characters long; the limit is "
            f"{MAX_PROMPT_CHARS}. Shorten it and try again."
        )
    return text


def check_strength(strength: float | None) -> float | None:
    if strength is not None and not (MIN_STRENGTH <= strength <= MAX_STRENGTH):
        raise UserError(
            f"Strength {strength} is out of range. Use a number from {MIN_STRENGTH} to "
            f"{MAX_STRENGTH}; 0.5 is a balanced start."
        )
    return strength


def compose_prompt(template: str, prompt: str) -> str:
    """The user's prompt goes where `{prompt}` is; without it, the prompt comes first and
    the template follows after ", "."""
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, prompt).strip()
    return f"{prompt}, {template}" if prompt else template


def join_negative(user: str | None, style: str | None) -> str | None:
    """The user's negative prompt, then the style's, joined by ", "; None if both empty."""
    parts = [p.strip() for p in (user, style) if p and p.strip()]
    return ", ".join(parts) or None


def pick_strength(user: float | None, style: float | None) -> float:
    """The user's strength wins; else the style's; else the default."""
    if user is not None:
        return user
    return style if style is not None else DEFAULT_STRENGTH


def apply_style(
    style: Style | None, prompt: str, negative_prompt: str | None, strength: float | None
) -> Composed:
    """Compose a job's prompt, negative prompt and strength; a result past the prompt
    limit is refused (the user can shorten their prompt or pick another style)."""
    if style is None:
        return Composed(prompt, negative_prompt or None, pick_strength(strength, None), None)
    composed = compose_prompt(style.template, prompt)
    negative = join_negative(negative_prompt, style.negative_prompt)
    for field, text in (("prompt", composed), ("negative prompt", negative or "")):
        if len(text) > MAX_PROMPT_CHARS:
            raise UserError(
                f"With the style `{style.name}` the {field} would be {len(text)} characters "
                f"long; the limit is {MAX_PROMPT_CHARS}. Shorten yours by "
                f"{len(text) - MAX_PROMPT_CHARS} or pick another style."
            )
    return Composed(
        composed, negative, pick_strength(strength, style.strength), style.name, style.loras,
        structure=style.structure,
    )  # fmt: skip


def structure_for(
    chosen: str | None, composed: Composed, served: tuple[str, ...] | None
) -> str | None:
    """The job's structure: the member's own choice wins (`off` included); else the style's
    where the worker serves that kind (`served`: `EngineInfo.structures`, None before a
    worker is ready), else none: the style runs without it rather than being refused."""
    if chosen is not None:
        return chosen
    if composed.structure and (served is None or composed.structure in served):
        return composed.structure
    return None


def structure_skipped(
    chosen: str | None, composed: Composed, served: tuple[str, ...] | None
) -> str | None:
    """The style's structure kind when `structure_for` leaves it out because the worker has
    no ControlNet for it (the result then says it ran without); None otherwise."""
    if chosen is None and composed.structure and served is not None:
        return None if composed.structure in served else composed.structure
    return None


def resolve(name: str, mine: Iterable[Style], server: Iterable[Style]) -> Style | None:
    """Lookup order: the member's styles, then the server's, then the built-ins."""
    key = (name or "").strip().lower()
    for style in (*mine, *server):
        if style.name == key:
            return style
    return BUILTINS.get(key)


def check_room(count: int, scope: Scope) -> None:
    """Refuse a new style past the limit of its scope (replacing one is always allowed)."""
    limit = MAX_PER_MEMBER if scope == "mine" else MAX_PER_SERVER
    if count >= limit:
        who = "You have" if scope == "mine" else "This server has"
        raise UserError(
            f"{who} {count} saved styles, the most allowed is {limit}. Delete one with "
            "`/style delete` first."
        )


def unknown_style_text(name: str) -> str:
    return (
        f"There is no style called `{name}`. `/style list` shows yours, this server's and "
        "the built-in ones."
    )


def style_choices(
    current: str, mine: Iterable[Style], server: Iterable[Style]
) -> list[tuple[str, str]]:
    """Autocomplete (label, value) pairs in lookup order; a name shadowed by an earlier
    scope is offered once. Prefix matches come before other matches."""
    needle = (current or "").strip().lower()
    seen: set[str] = set()
    first: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for style in (*mine, *server, *BUILTINS.values()):
        if style.name in seen or needle not in style.name:
            continue
        seen.add(style.name)
        label = f"{style.name} ({SCOPE_LABEL[style.scope]})"
        (first if style.name.startswith(needle) else rest).append((label, style.name))
    return (first + rest)[:MAX_CHOICES]
