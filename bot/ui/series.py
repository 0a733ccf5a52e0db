"""The album's components for series jobs.

`OpenSelect` and `CancelSeries` are DynamicItems: the series id lives in the custom_id, so
they keep working after a restart.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord

if TYPE_CHECKING:
    from bot.app import ImgBot
    from bot.cogs.series import SeriesCog

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
