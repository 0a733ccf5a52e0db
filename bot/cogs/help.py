"""/help: the guide by topic (bot.ui.help), one private page at a time with a topic menu.

The menu is a `DynamicItem` with a fixed custom_id, so it routes after a restart like every
other component of the bot; choosing a topic edits the private answer in place.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.safety_notice import unfiltered_notice
from bot.ui.help import HELP_SELECT_ID, TOPICS, help_embed, topic, topic_options

if TYPE_CHECKING:
    from bot.app import ImgBot

Interaction = discord.Interaction[Any]
Select = discord.ui.Select[Any]


class HelpTopicSelect(discord.ui.DynamicItem[Select], template=re.escape(HELP_SELECT_ID)):
    """The topic menu under every /help page; the chosen topic is the select's value."""

    def __init__(self, current: str = TOPICS[0].key) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=HELP_SELECT_ID,
                placeholder="Pick a topic",
                options=topic_options(current),
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: Interaction, item: Select, match: re.Match[str]
    ) -> HelpTopicSelect:
        return cls()

    async def callback(self, interaction: Interaction) -> None:
        chosen = topic(self.item.values[0] if self.item.values else "").key
        cog = cast("HelpCog", interaction.client.get_cog("HelpCog"))  # type: ignore[attr-defined]
        embed, view = await cog.page(interaction, chosen)
        await interaction.response.edit_message(embed=embed, view=view)


class HelpCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HelpTopicSelect)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HelpTopicSelect)

    async def page(self, interaction: Interaction, key: str) -> tuple[discord.Embed, Any]:
        """The page of topic `key` and the menu showing it chosen; every page warns when
        results are not filtered right now."""
        view = discord.ui.View(timeout=None)
        view.add_item(HelpTopicSelect(key))
        notice = await unfiltered_notice(self.bot, interaction.guild_id)
        return help_embed(key, notice), view

    @app_commands.command(name="help", description="How to use the image bot, by topic")
    async def help(self, interaction: Interaction) -> None:
        embed, view = await self.page(interaction, TOPICS[0].key)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)


async def setup(bot: ImgBot) -> None:
    await bot.add_cog(HelpCog(bot))
