"""Which model a job runs on, on the bot's side: chosen when the job is asked for, kept on
the job row (`jobs.model`, the catalogue's name), turned into the request's `model` at
dispatch.

A job's model is, first to last: the member's `model:` option, the saved style's model, the
server's default (`/settings model`), the catalogue's default. Buttons, Refine and Edit keep
the job's model; Apps → Img2img this uses the server's default. The name is stored, not the
source, so an operator may point a name at new weights without breaking old buttons; a
name the catalogue dropped fails its job plainly (`MODEL_GONE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from bot.errors import UserError
from config.catalogue import NAME_RE, Catalogue, ModelEntry

MODEL_GONE = (
    "The model this job asked for is no longer offered here, so it could not run. "
    "See /models and send it again."
)


@dataclass(frozen=True)
class ModelChoice:
    catalogue: Catalogue
    default_steps: int
    default_guidance: float

    def entry(self, name: str) -> ModelEntry:
        """The catalogue's entry for a member's `model:` (any case); `UserError` naming
        the models offered."""
        key = name.strip().lower()
        entry = self.catalogue.models.get(key)
        if entry is None:
            raise UserError(
                f"There is no model called `{name.strip()[:40]}` here. Models: "
                f"{self.names()}. See /models."
            )
        return entry

    def pick(self, typed: str | None, style: str | None, server: str | None) -> ModelEntry:
        """The job's model: typed, else the style's, else the server's, else the default.
        A style's or server's model the catalogue dropped falls back to the next."""
        if typed:
            return self.entry(typed)
        for name in (style, server):
            if name and name in self.catalogue.models:
                return self.catalogue.models[name]
        return self.catalogue.default_model

    def steps(self, entry: ModelEntry) -> int:
        return entry.steps if entry.steps is not None else self.default_steps

    def guidance(self, entry: ModelEntry) -> float:
        return entry.guidance if entry.guidance is not None else self.default_guidance

    def names(self) -> str:
        return ", ".join(f"`{n}`" for n in self.catalogue.models)

    def title(self, name: str | None) -> str | None:
        """What members see for a stored job's model: its label, else its name; None for
        a job from before models had names (its footer names the weights)."""
        entry = self.catalogue.models.get(name or "")
        return entry.title if entry is not None else None

    def for_worker(self, name: str | None) -> str:
        """The request's `model`: the catalogue name, or "" (the worker's default) for a
        job stored before names (its column held the weights' id, or nothing)."""
        return name if name and name in self.catalogue.models else ""

    def gone(self, name: str | None) -> bool:
        """A job asked for a model by name that the catalogue no longer has (a job stored
        before names holds the weights' id, or nothing: it runs on the default)."""
        return bool(name and NAME_RE.fullmatch(name)) and name not in self.catalogue.models

    def kept(self, name: str | None) -> str:
        """The model a button, Refine or Edit gives the new job: the clicked job's, the
        default for a job stored before names; `UserError` when it was dropped."""
        if self.gone(name):
            raise UserError(
                f"The model `{name}` this picture was made with is no longer offered here. "
                "Use /img2img with another model (see /models)."
            )
        return name if name in self.catalogue.models else self.catalogue.default


async def server_model(db: aiosqlite.Connection, guild_id: int) -> str | None:
    """`/settings model`: the server's default model's name, or None."""
    rows = list(
        await db.execute_fetchall("SELECT model FROM guild_settings WHERE guild_id=?", (guild_id,))
    )
    return rows[0][0] if rows and rows[0][0] else None
