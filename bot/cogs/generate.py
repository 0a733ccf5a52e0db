"""/img2img: the command users come for, with an optional saved style."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.models import model_autocomplete
from bot.cogs.styles import STRUCTURE_CHOICES, style_autocomplete
from bot.errors import UserError
from bot.models import server_model
from bot.styles import (
    Composed,
    apply_style,
    structure_for,
    structure_skipped,
    unknown_style_text,
)
from bot.ui.modals import STRUCTURE_TAG
from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_STRENGTH,
    MAX_STRUCTURE_WEIGHT,
    MIN_STRENGTH,
    MIN_STRUCTURE_WEIGHT,
    InputError,
    check_prompt,
)

if TYPE_CHECKING:
    from bot.app import ImgBot



SLASH_STRUCTURE_TAG = (
    "`<structure:…>` tags are for the Edit, Refine and Img2img this forms. Here, use the "
    "`structure` option (on /img2img and /series) and remove the tag from the prompt."
)


async def compose(
    bot: ImgBot,
    interaction: discord.Interaction[Any],
    prompt: str,
    negative_prompt: str | None,
    style: str | None,
    strength: float | None,
    model: str | None = None,
) -> Composed:
    """The prompt with its style applied (first, so the job stores, and the embed shows, the
    prompt that actually ran), its `<lora:…>` tags checked against the job's model and kept
    after it (`bot.loras`), and the model chosen: `model` (typed, or a clicked job's), else
    the style's, else the server's, else the catalogue's (`bot.models`).
    Raises `InputError`/`UserError` with the member's message.
    Shared by the commands that take a prompt and a style (/img2img, /inpaint, /imagine,
    /series; the forms compose theirs in `bot.cogs.iterate`, where a structure tag is theirs
    to read)."""
    if STRUCTURE_TAG.search(prompt):  # the forms' syntax; here it would reach the model
        raise UserError(SLASH_STRUCTURE_TAG)
    guild_id = interaction.guild_id or 0  # outside a server: built-ins only (then refused)
    found = None
    if style:
        found = await bot.styles.resolve(guild_id, interaction.user.id, style)
        if found is None:
            raise UserError(unknown_style_text(str(style).strip().replace("`", "")))
    server = await server_model(bot.store.db, guild_id)
    entry = bot.jobs.models.pick(model, found.model if found else None, server)
    text, loras = bot.loras.split(check_prompt(prompt), entry.name)  # tags out first
    negative = negative_prompt.strip() if negative_prompt else None
    composed = replace(apply_style(found, text, negative, strength), model=entry.name)
    return bot.loras.styled(composed, loras)


def served_structures(bot: ImgBot, model: str | None) -> tuple[str, ...] | None:
    """The structure kinds the job's model offers (`JobService.structures_of`); None
    before a worker is ready in a one-model set-up."""
    return bot.jobs.structures_of(model)


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
        strength="0.05 keeps your image, 1.0 ignores it; default: the style's, else 0.5",
        negative_prompt="What to avoid",
        seed="Same seed + same settings = same picture",
        steps="Denoising steps (1–150); more is slower",
        style="A saved look: yours, this server's or a built-in (see /style list)",
        model="Which model draws it (see /models); default: the style's, else the server's",
        structure="Keep the input's structure: edges (photos) or lines (sketches, floor plans)",
        structure_weight="How strictly the structure is kept: 0.1 (a hint) to 2.0; default 1.0",
    )
    @app_commands.autocomplete(style=style_autocomplete, model=model_autocomplete)
    @app_commands.choices(structure=STRUCTURE_CHOICES)
    async def img2img(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        structure: str | None = None,
        structure_weight: app_commands.Range[
            float, MIN_STRUCTURE_WEIGHT, MAX_STRUCTURE_WEIGHT
        ] = 1.0,
    ) -> None:
        try:
            composed = await compose(
                self.bot, interaction, prompt, negative_prompt, style, strength, model
            )
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        served = served_structures(self.bot, composed.model)
        await self.bot.actions.img2img(
            interaction,
            image,
            composed.prompt,
            composed.strength,
            composed.negative_prompt,
            seed,
            steps,
            style=composed.style,
            model=composed.model,
            structure=structure_for(structure, composed, served),
            structure_weight=structure_weight,
            structure_skipped=structure_skipped(structure, composed, served),
        )


async def setup(bot: ImgBot) -> None:
    await bot.add_cog(GenerateCog(bot))
