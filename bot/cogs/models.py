"""/models: the catalogue as members see it — the models with their label, family, default
steps and whether a GPU serving them is online, and the LoRAs with their trigger words and
the models they fit (`<lora:NAME>` in a prompt uses one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.limits import fit_lines
from config.catalogue import Catalogue, ModelEntry
from pipeline.request import EngineInfo

if TYPE_CHECKING:
    from bot.app import ImgBot


def family(info: EngineInfo | None) -> str:
    """The model family a worker reports (by its pipeline class), in members' words."""
    if info is None:
        return "family known once a GPU loads it"
    name = info.pipeline_class
    if "XL" in name:
        return "SDXL"
    if name.startswith("StableDiffusion"):
        return "SD 1.x/2.x"
    return name


def family_of(model: ModelEntry, info: EngineInfo | None) -> str:
    """A model's family where a worker reported it (its default model), in members' words."""
    return family(info if info is not None and info.model_id == model.source else None)


def models_text(
    catalogue: Catalogue,
    info: EngineInfo | None,
    online: frozenset[str],
    default_steps: int,
    default_guidance: float,
) -> str:
    """The /models answer. `info`: what a GPU reported loading (None: none yet); `online`:
    the models some online GPU serves."""
    lines = ["**Models**"]
    for model in catalogue.models.values():
        steps = model.steps or default_steps
        guidance = default_guidance if model.guidance is None else model.guidance
        marks = [f"`{model.name}`", family_of(model, info), f"{steps} steps"]
        marks.append(f"guidance {guidance:g}")
        if model.name == catalogue.default:
            marks.append("default")
        on = model.name in online
        marks.append("🟢 a GPU is online" if on else "⚪ no GPU serves it right now")
        lines.append(f"• **{discord.utils.escape_markdown(model.title)}** · " + " · ".join(marks))
    if catalogue.loras:
        lines += ["", "**LoRAs** (put `<lora:NAME>` or `<lora:NAME:WEIGHT>`, 0–2, in a prompt)"]
        for lora in catalogue.loras.values():
            fits = ", ".join(f"`{m}`" for m in lora.models) if lora.models else "every model"
            trigger = f" · adds “{lora.trigger}”" if lora.trigger else ""
            lines.append(f"• `{lora.name}` ×{lora.weight:g}{trigger} · fits {fits}")
    else:
        lines += ["", "No LoRAs are offered here."]
    return fit_lines(lines, noun="lines")


class ModelsCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    @app_commands.command(name="models", description="The models and LoRAs you can use")
    async def models(self, interaction: discord.Interaction[Any]) -> None:
        settings = self.bot.settings
        text = models_text(
            settings.catalogue,
            self.bot.jobs.engine_info if self.bot.jobs.ready.is_set() else None,
            self.bot.jobs.models_online(),
            settings.default_steps,
            settings.default_guidance,
        )
        await interaction.response.send_message(text, ephemeral=True)


async def model_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    """`model:` choices: each model's label, name, family where known, and whether a GPU
    serving it is online (a job for one that is not waits until one is)."""
    bot: ImgBot = interaction.client  # type: ignore[assignment]
    jobs = bot.jobs
    online = jobs.models_online()
    info = jobs.engine_info if jobs.ready.is_set() else None
    typed = current.strip().lower()
    choices = []
    for model in bot.settings.catalogue.models.values():
        if typed and typed not in model.name and typed not in model.title.lower():
            continue
        fam = family_of(model, info)
        parts = [model.title, model.name] if model.title != model.name else [model.name]
        if not fam.startswith("family known"):
            parts.append(fam)
        parts.append("online" if model.name in online else "no GPU online now")
        choices.append(app_commands.Choice(name=" · ".join(parts)[:100], value=model.name))
    return choices[:25]


async def setup_models(bot: ImgBot) -> None:
    await bot.add_cog(ModelsCog(bot))
