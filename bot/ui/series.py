"""The album's components and the delivery wrapper for series jobs.

`OpenSelect` and `CancelSeries` are DynamicItems: the series id lives in the custom_id, so
they keep working after a restart. `SeriesDelivery` wraps the bot's delivery: a series job's
end re-renders its album instead of posting a message of its own.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.store.db import Job

if TYPE_CHECKING:
    from bot.app import ImgBot
    from bot.cogs.series import SeriesCog
    from bot.jobs.events import Delivery

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]


def _bot(interaction: Interaction) -> ImgBot:
    return cast("ImgBot", interaction.client)


def _cog(interaction: Interaction) -> SeriesCog:
    cog = _bot(interaction).get_cog("SeriesCog")
    assert cog is not None
    return cast("SeriesCog", cog)


class OpenSelect(discord.ui.DynamicItem[discord.ui.Select[Any]], template=r"i2i:so:(?P<s>\d+)"):
    """`Open…`: post one finished image of the album as a normal result (no GPU work)."""

    def __init__(self, series_id: int, options: list[discord.SelectOption] | None = None) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=f"i2i:so:{series_id}",
                placeholder="Open…",
                options=options or [discord.SelectOption(label="…", value="0")],
            )
        )
        self.series_id = series_id

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Select[Any], match: re.Match[str]
    ) -> OpenSelect:
        return cls(int(match["s"]))

    async def callback(self, interaction: Interaction) -> None:
        values = (interaction.data or {}).get("values") or ["0"]  # type: ignore[union-attr]
        await _cog(interaction).open(interaction, self.series_id, int(values[0]))


class CancelSeries(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:sc:(?P<s>\d+)"):
    """Cancel every image of the series that has not started yet."""

    def __init__(self, series_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel the rest",
                style=discord.ButtonStyle.secondary,
                custom_id=f"i2i:sc:{series_id}",
            )
        )
        self.series_id = series_id

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Button[Any], match: re.Match[str]
    ) -> CancelSeries:
        return cls(int(match["s"]))

    async def callback(self, interaction: Interaction) -> None:
        await _cog(interaction).cancel(interaction, self.series_id)


class SeriesDelivery:
    """The bot's delivery, except that a series job's end updates its album."""

    def __init__(self, inner: Delivery, cog: SeriesCog) -> None:
        self.inner = inner
        self.cog = cog

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def show_status(self, job: Job, text: str, cancellable: bool) -> None:
        if job.kind != "series":  # the album changes when an image ends, not every step
            await self.inner.show_status(job, text, cancellable)

    async def deliver_result(self, job: Job) -> None:
        if job.kind != "series":
            await self.inner.deliver_result(job)
        else:
            await self.cog.refresh_of(job)

    async def deliver_failure(self, job: Job, message: str) -> None:
        if job.kind != "series":
            await self.inner.deliver_failure(job, message)
        else:
            await self.cog.refresh_of(job)

    async def deliver_cancelled(self, job: Job) -> None:
        if job.kind != "series":
            await self.inner.deliver_cancelled(job)
        else:
            await self.cog.refresh_of(job)

    async def deliver_withheld(self, job: Job) -> None:
        if job.kind != "series":
            await self.inner.deliver_withheld(job)
        else:
            await self.cog.refresh_of(job)
