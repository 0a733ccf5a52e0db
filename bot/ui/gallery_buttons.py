"""The gallery's buttons: ◀ / ▶ under a gallery page and forget-me's confirmation.

Both are DynamicItems: what they need lives in the custom_id, so a click routes to the
gallery cog after a restart too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.store.gallery import Direction
from bot.ui.gallery import PAGE_TEMPLATE, page_custom_id, parse_direction

if TYPE_CHECKING:
    from bot.app import ImgBot
    from bot.cogs.gallery import GalleryCog

Interaction = discord.Interaction[Any]

FORGET_TEMPLATE = r"forget:(?P<guild>\d+):(?P<user>\d+)"


def _cog(interaction: Interaction) -> GalleryCog:
    cog = cast("ImgBot", interaction.client).get_cog("Gallery")
    assert cog is not None
    return cast("GalleryCog", cog)


class GalleryPageButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=PAGE_TEMPLATE):
    """◀ / ▶ under a gallery message; everything it needs is in its custom_id."""

    def __init__(
        self,
        direction: Direction,
        anchor: int,
        user_id: int | None,
        search_id: int,
        *,
        disabled: bool = False,
        model: str | None = None,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label="◀ Newer" if direction == "newer" else "Older ▶",
                style=discord.ButtonStyle.secondary,
                custom_id=page_custom_id(direction, anchor, user_id, search_id, model),
                disabled=disabled,
            )
        )
        self.direction, self.anchor = direction, anchor
        self.user_id, self.search_id, self.model = user_id, search_id, model

    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> GalleryPageButton:
        return cls(
            parse_direction(match["dir"]),
            int(match["anchor"]),
            int(match["user"]) or None,
            int(match["search"]),
            model=match["model"],
        )

    async def callback(self, interaction: Interaction) -> None:
        await _cog(interaction).turn_page(
            interaction, self.direction, self.anchor, self.user_id, self.search_id, self.model
        )


class ForgetButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=FORGET_TEMPLATE):
    """The confirmation under `/gallery forget-me`: the member and server are in its
    custom_id, so only that member, in that server, can confirm (also after a restart)."""

    def __init__(self, guild_id: int, user_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete everything of mine",
                style=discord.ButtonStyle.danger,
                custom_id=f"forget:{guild_id}:{user_id}",
            )
        )
        self.guild_id, self.user_id = guild_id, user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: discord.ui.Button[Any], match: re.Match[str]
    ) -> ForgetButton:
        return cls(int(match["guild"]), int(match["user"]))

    async def callback(self, interaction: Interaction) -> None:
        await _cog(interaction).confirm_forget(interaction, self.guild_id, self.user_id)
