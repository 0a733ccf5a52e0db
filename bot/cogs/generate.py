"""/img2img: the command users come for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from pipeline.request import MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MAX_STRENGTH, MIN_STRENGTH

if TYPE_CHECKING:
    from bot.app import ImgBot


class GenerateCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="img2img", description="Turn an image plus a prompt into a new picture"
    )
    @app_commands.guild_only()
    @app_commands.describe(
        image="PNG, JPEG or WebP; at least 512×512 works best",
        prompt="What the new picture should show",
        strength="0.05 keeps your image, 1.0 ignores it; 0.5 is balanced",
        negative_prompt="What to avoid",
        seed="Same seed + same settings = same picture",
        steps="Denoising steps (1–150); more is slower",
    )
    async def img2img(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] = 0.5,
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
    ) -> None:
        await self.bot.actions.img2img(
            interaction, image, prompt, strength, negative_prompt, seed, steps
        )


async def setup(bot: ImgBot) -> None:
    await bot.add_cog(GenerateCog(bot))
