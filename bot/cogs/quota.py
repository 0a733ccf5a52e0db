"""/quota: how many images you and this server have left, and when the next frees up."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.quota import summarize
from bot.store.quotas import QuotaStore

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)


def member_role_ids(interaction: discord.Interaction[Any]) -> tuple[int, ...]:
    """The ids of the member's roles, straight from the interaction (no member cache)."""
    user = interaction.user
    roles = getattr(user, "_roles", None) or getattr(user, "roles", [])
    return tuple(int(getattr(r, "id", r)) for r in roles)


class QuotaCog(commands.Cog):
    def __init__(self, bot: ImgBot, quotas: QuotaStore) -> None:
        self.bot = bot
        self.quotas = quotas

    @app_commands.command(name="quota", description="How many images you and this server have left")
    @app_commands.guild_only()
    async def quota(self, interaction: discord.Interaction[Any]) -> None:
        assert interaction.guild_id is not None
        now = self.quotas.clock()
        state = await self.quotas.state(
            interaction.guild_id, interaction.user.id, member_role_ids(interaction), now
        )
        await interaction.response.send_message("\n".join(summarize(state, now)), ephemeral=True)
