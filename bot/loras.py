"""LoRA tags on the bot's side: checked when a job is asked for, kept in its prompt, turned
into the worker's `LoraRef`s when it is dispatched.

A job's stored prompt is the text the member typed with the style applied, followed by its
tags in one canonical form (`… <lora:pixel:0.8>`): LoRAs ride in the prompt, so Refine,
Edit, variants, series and the gallery keep them with no column of their own, and a form
edits them with the prompt. `config.lora_tags` fixes the order (tags out, template, trigger
words first); this module applies it at the two ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bot.errors import UserError
from bot.styles import Composed
from config.catalogue import Catalogue
from config.lora_tags import TAG_RE, LoraTagError, LoraUse, describe, split_loras, with_triggers
from pipeline.request import MAX_PROMPT_CHARS, LoraRef

LORA_GONE = (
    "A LoRA this job asked for is no longer offered here, so it could not run. "
    "See /models and send it again."
)


@dataclass(frozen=True)
class LoraTags:
    catalogue: Catalogue
    max_per_job: int

    def split(self, prompt: str, model: str | None = None) -> tuple[str, tuple[LoraUse, ...]]:
        """The prompt without its tags, and the LoRAs they ask for; `UserError` (the member's
        message, naming what fits) for a tag that cannot be used."""
        try:
            return split_loras(
                prompt, self.catalogue, self._model(model), max_loras=self.max_per_job
            )
        except LoraTagError as exc:
            raise UserError(str(exc)) from None

    def styled(self, composed: Composed, uses: tuple[LoraUse, ...]) -> Composed:
        """The job's stored prompt: the style's text, then the tags in canonical form, the
        member's first, then the style's LoRAs the member did not name (theirs win);
        `UserError` if that passes the prompt limit or the LoRAs per job."""
        if composed.loras:
            typed = {u.name for u in uses}
            extra = [
                u
                for u in self._style_uses(composed.loras, composed.model or None)
                if u.name not in typed
            ]
            uses = (*uses, *extra)
            if len(uses) > self.max_per_job:
                raise UserError(
                    f"With the style's LoRAs this picture would use {len(uses)}; at most "
                    f"{self.max_per_job} can be used in one job. Remove some `<lora:…>` tags."
                )
        if not uses:
            return composed
        tags = " ".join(f"<lora:{u.name}:{u.weight:g}>" for u in uses)
        prompt = f"{composed.prompt} {tags}"
        if len(prompt) > MAX_PROMPT_CHARS:  # a form must be able to show it again
            raise UserError(
                f"With its LoRA tags (written out as `{tags}`) the prompt would be "
                f"{len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}. Shorten it "
                f"by {len(prompt) - MAX_PROMPT_CHARS}."
            )
        return replace(composed, prompt=prompt)

    def style_tags(self, text: str | None, model: str | None = None) -> str:
        """A style's `loras` option (`pixel:0.8, ink`) as canonical tags; `UserError`
        naming what fits (the style's model, else the default) for one that cannot be used."""
        names = [part.strip() for part in (text or "").split(",") if part.strip()]
        _, uses = self.split(" ".join(f"<lora:{name}>" for name in names), model)
        return " ".join(f"<lora:{u.name}:{u.weight:g}>" for u in uses)

    def for_worker(self, prompt: str, model: str | None = None) -> tuple[str, tuple[LoraRef, ...]]:
        """What the model sees (tags out, trigger words first) and the LoRAs to apply;
        `LoraTagError` where the catalogue no longer offers one (`LORA_GONE`)."""
        if not TAG_RE.search(prompt):
            return prompt, ()
        text, uses = split_loras(prompt, self.catalogue, self._model(model), max_loras=len(prompt))
        refs = tuple(LoraRef(u.name, self.catalogue.loras[u.name].source, u.weight) for u in uses)
        return with_triggers(text, uses, self.catalogue), refs

    def _style_uses(self, tags: str, model: str | None) -> tuple[LoraUse, ...]:
        """A saved style's LoRAs (the limit applies to the job's total, checked after)."""
        try:
            return split_loras(tags, self.catalogue, self._model(model), max_loras=len(tags))[1]
        except LoraTagError as exc:  # the catalogue changed since the style was saved
            raise UserError(f"This style's LoRAs cannot be used now: {exc}") from None

    def _model(self, model: str | None) -> str:
        return self.catalogue.model(model).name


def shown(prompt: str) -> str | None:
    """The result's `LoRA` field (`pixel ×0.8, ink ×1.0`) from a stored prompt; None: none."""
    uses = []
    for match in TAG_RE.finditer(prompt):
        name, _, weight = match.group(1).partition(":")
        try:
            uses.append(LoraUse(name.strip().lower(), float(weight or 1.0)))
        except ValueError:
            continue
    return describe(tuple(uses)) or None
