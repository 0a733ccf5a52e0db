"""/models: the catalogue as members see it — the models with their label, family, default
steps and whether a GPU serving them is online, and the LoRAs with their trigger words and
the models they fit (`<lora:NAME>` in a prompt uses one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.limits import fit_lines
from config.catalogue import Catalogue
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


def models_text(
    catalogue: Catalogue, served: EngineInfo | None, default_steps: int, default_guidance: float
) -> str:
    """The /models answer. `served`: what the online GPUs loaded (None: none online)."""
    lines = ["**Models**"]
    for model in catalogue.models.values():
        online = served is not None and served.model_id == model.source
        steps = model.steps or default_steps
        guidance = default_guidance if model.guidance is None else model.guidance
        marks = [f"`{model.name}`", family(served if online else None), f"{steps} steps"]
        marks.append(f"guidance {guidance:g}")
        if model.name == catalogue.default:
            marks.append("default")
        marks.append("🟢 a GPU is online" if online else "⚪ no GPU serves it right now")
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
            settings.default_steps,
            settings.default_guidance,
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup_models(bot: ImgBot) -> None:
    await bot.add_cog(ModelsCog(bot))
