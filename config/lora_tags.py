"""LoRAs the way A1111 users already type them: `<lora:NAME>` or `<lora:NAME:WEIGHT>` anywhere
in the prompt, several allowed.

The order matters and is fixed here so every way into a job (commands, forms, styles, the CLI)
gets the same text: blocked words are checked on the prompt as typed (by the caller), then
`split_loras` takes the tags out (runs of whitespace collapse to one space, the ends are
stripped), the caller applies the style's template, and `with_triggers` puts each LoRA's
trigger words first, so the text encoder's 77-token limit never cuts them off.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from config.catalogue import MAX_LORA_WEIGHT, Catalogue

MAX_LORAS_PER_JOB = 4
TAG_RE = re.compile(r"<\s*lora\s*:([^<>]*)>", re.IGNORECASE)


class LoraTagError(ValueError):
    """A tag the member must fix; the message is shown to them as is."""


@dataclass(frozen=True)
class LoraUse:
    """One LoRA applied to one job, at one weight."""

    name: str
    weight: float


def split_loras(
    prompt: str, catalogue: Catalogue, model: str, *, max_loras: int = MAX_LORAS_PER_JOB
) -> tuple[str, tuple[LoraUse, ...]]:
    """The prompt without its tags, and the LoRAs they ask for (in the order typed).

    Raises `LoraTagError` naming the tag and what fits instead: an unknown LoRA, one that
    does not fit `model`, a bad weight, the same LoRA twice, or more than `max_loras`.
    """
    uses: list[LoraUse] = []
    for match in TAG_RE.finditer(prompt):
        uses.append(_use(match.group(0), match.group(1), catalogue, model))
    if not uses:
        return prompt, ()  # a prompt without tags is left exactly as typed
    names = [u.name for u in uses]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise LoraTagError(f"`<lora:{twice}>` appears twice. Give each LoRA once, with one weight.")
    if len(uses) > max_loras:
        raise LoraTagError(
            f"The prompt asks for {len(uses)} LoRAs; at most {max_loras} can be used in one job. "
            "Remove some `<lora:…>` tags."
        )
    text = " ".join(TAG_RE.sub(" ", prompt).split())
    return text, tuple(uses)


def with_triggers(prompt: str, loras: tuple[LoraUse, ...], catalogue: Catalogue) -> str:
    """`trigger, …, prompt`: each used LoRA's trigger words first (once each)."""
    triggers = [catalogue.loras[u.name].trigger for u in loras if u.name in catalogue.loras]
    words = list(dict.fromkeys(t for t in triggers if t))
    return ", ".join([*words, prompt] if prompt else words)


def describe(loras: tuple[LoraUse, ...]) -> str:
    """The result's `LoRA` field: `pixel ×0.8, ink ×1.0`."""
    return ", ".join(f"{u.name} ×{u.weight:.1f}" for u in loras)


def _use(tag: str, body: str, catalogue: Catalogue, model: str) -> LoraUse:
    name, _, weight_text = body.strip().partition(":")
    name = name.strip().lower()
    fitting = ", ".join(f"`{lora.name}`" for lora in catalogue.loras_for(model)) or "none"
    model_title = catalogue.model(model).title
    if not name:
        raise LoraTagError(
            f"`{tag}` names no LoRA. Write `<lora:NAME>`; for {model_title}: {fitting}."
        )
    lora = catalogue.loras.get(name)
    if lora is None:
        raise LoraTagError(
            f"There is no LoRA called `{name}`. LoRAs for {model_title}: {fitting} (see /models)."
        )
    if not catalogue.fits(lora, model):
        raise LoraTagError(
            f"The LoRA `{name}` does not fit the model {model_title}. LoRAs for it: {fitting}."
        )
    if not weight_text.strip():
        return LoraUse(name, lora.weight)
    try:
        weight = float(weight_text.strip())
    except ValueError:
        weight = math.nan
    if not (0.0 <= weight <= MAX_LORA_WEIGHT):
        raise LoraTagError(
            f"`{tag}`: the weight must be a number from 0 to {MAX_LORA_WEIGHT:g} "
            f"(e.g. `<lora:{name}:0.8>`)."
        )
    return LoraUse(name, weight)
