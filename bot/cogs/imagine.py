"""/imagine: a base picture from words alone (text-to-image), and Vary under its result.

The guide's first workflow, "generate a good base image with text-to-image, then use
img2img on it to explore variations", without leaving Discord. An /imagine job is a job
row like any other (same queue, fairness, quota, safety checker, gallery and progress) with
mode `txt2img`: no input picture (`input_path` is ""), its size in the input size columns,
so the batch key and the worker's `NoiseStart` come from it (`bot.jobs.dispatch`).

Vary queues the result as the input of three img2img jobs (kind `vary`, strengths 0.35,
0.50, 0.65, the base's seed) and posts one message for them, drawn by Compare's code
(`bot.cogs.compare`: same rendering, same Use buttons, same redraw after a restart or a
deleted picture).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.actions import _role_ids
from bot.cogs.compare import GONE_TEXT, VARY, CompareCog, vary_text
from bot.cogs.generate import compose
from bot.cogs.iterate import copy_output
from bot.cogs.models import model_autocomplete
from bot.cogs.styles import style_autocomplete
from bot.errors import UserError
from bot.jobs.events import KindDelivery
from bot.jobs.service import NewJob
from bot.visibility import channel_flags
from pipeline.request import (
    ASPECTS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    TEXT_TO_IMAGE,
    InputError,
    aspect_size,
    check_seed,
    check_steps,
)

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]

VARY_STRENGTHS = (0.35, 0.50, 0.65)
"""The guide's "varying strength levels" for a base picture: close, balanced, free."""


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Make a picture from a prompt alone")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What the picture should show",
        negative_prompt="What to avoid",
        seed="Same seed + same settings = same picture",
        steps="Denoising steps (1–150); more is slower",
        style="A saved look: yours, this server's or a built-in (see /style list)",
        aspect="Shape, width:height (default 1:1)",
        model="Which model draws it (see /models); default: the style's, else the server's",
    )
    @app_commands.choices(aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS])
    @app_commands.autocomplete(style=style_autocomplete, model=model_autocomplete)
    async def imagine(
        self,
        interaction: Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
        aspect: str = "1:1",
        model: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        actions = self.bot.actions
        try:
            check_seed(seed)
            check_steps(steps)
            composed = await compose(
                self.bot, interaction, prompt, negative_prompt, style, 1.0, model
            )
            entry = self.bot.jobs.models.catalogue.model(composed.model)
            width, height = aspect_size(aspect, self.bot.jobs.resolution_of(entry.name))
            await actions.precheck(interaction)
            assert interaction.guild_id is not None
            public, nsfw = channel_flags(interaction.channel)
            job = await self.bot.jobs.submit(
                NewJob(
                    guild_id=interaction.guild_id,
                    channel_id=interaction.channel_id or 0,
                    user_id=interaction.user.id,
                    prompt=composed.prompt,
                    negative_prompt=composed.negative_prompt,
                    strength=1.0,  # from noise: the whole schedule, whatever the style says
                    seed=seed,
                    steps=steps or self.bot.jobs.models.steps(entry),
                    guidance=self.bot.jobs.models.guidance(entry),
                    input_path="",
                    input_width=width,
                    input_height=height,
                    mode=TEXT_TO_IMAGE,
                    application_id=interaction.application_id,
                    interaction_token=interaction.token,
                    role_ids=_role_ids(interaction),
                    style=composed.style,
                    model=entry.name,
                    channel_public=public,
                    channel_nsfw=nsfw,
                    interaction_created_at=interaction.created_at.timestamp(),
                )
            )
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        await actions.announce(interaction, job)

    # -- Vary ---------------------------------------------------------------------------
    async def vary(self, interaction: Interaction, job_id: int) -> None:
        """Queue the base picture as the input of three img2img jobs and post the message
        their pictures will fill (all three or none: one transaction)."""
        actions = self.bot.actions
        copied: str | None = None
        try:
            parent = await actions.job_here(interaction, job_id, deleted_ok=False)
            if parent.state != "done" or not actions.stored(parent.output_path):
                raise UserError(GONE_TEXT)
            await actions.precheck(interaction)
            data_dir = self.bot.settings.data_dir
            copied, width, height = await asyncio.to_thread(copy_output, data_dir, parent)
            base = replace(
                parent, input_path=copied, input_width=width, input_height=height,
                mode="img2img",
            )  # fmt: skip
            news = [
                actions.child_job(interaction, base, strength=s, seed=parent.seed, kind=VARY)
                for s in VARY_STRENGTHS
            ]
            queued = await self.bot.jobs.submit_many(news)
        except (InputError, UserError) as exc:
            await actions.discard_unused(copied)
            await actions.say(interaction, f"❌ {exc}")
            return
        message_id: int | None = None
        try:
            await interaction.response.send_message(
                vary_text(queued, {job.strength: "⏳ coming…" for job in queued})
            )
            message_id = (await interaction.original_response()).id
        finally:
            for job in queued:
                await self.bot.jobs.attach_status_message(job.id, message_id)


async def setup_imagine(bot: ImgBot) -> None:
    """Add /imagine and Vary; vary jobs end by redrawing their message (Compare's code)."""
    await bot.add_cog(ImagineCog(bot))
    compare = bot.get_cog("CompareCog")
    assert isinstance(compare, CompareCog), "setup_compare must run first"
    bot.jobs.delivery = KindDelivery(bot.jobs.delivery, VARY, compare.refresh)
