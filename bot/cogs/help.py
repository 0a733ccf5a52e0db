"""/help: how to use the bot, with the strength guide, working on a result, the guide's
troubleshooting table and a first-time walkthrough."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.ui.render import HELP_TEXT
from bot.ui.tips import INPAINTING, TROUBLESHOOTING, WALKTHROUGH, WORKING_ON_A_RESULT

if TYPE_CHECKING:
    from bot.app import ImgBot


class HelpCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to use the image bot")
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        embed = discord.Embed(title="Image-to-image bot", description=HELP_TEXT)
        embed.add_field(name="Working on a result", value=WORKING_ON_A_RESULT, inline=False)
        embed.add_field(name="Inpainting", value=INPAINTING, inline=False)
        embed.add_field(name="When it goes wrong", value=TROUBLESHOOTING, inline=False)
        embed.add_field(name="First time? Try this", value=WALKTHROUGH, inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImgBot) -> None:
    await bot.add_cog(HelpCog(bot))
