"""Text and embeds the bot shows: queue places, progress bars, results (/help: bot.ui.help).

Pure functions of values, so tests need neither Discord nor a model.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

import discord

from bot.loras import shown
from bot.store.db import Job
from bot.ui.tips import lineage, tip_for
from config.catalogue import Catalogue
from pipeline.request import TEXT_TO_IMAGE, UPSCALE

BAR_WIDTH = 16


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    return f"{minutes} min {sec:02d} s" if minutes < 10 else f"{minutes} min"


def queue_text(guild_place: int, eta_s: float) -> str:
    """E.g. `3rd in this server's queue, about 40 s`."""
    return f"⏳ {ordinal(guild_place)} in this server's queue, about {duration(eta_s)}"


def progress_bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    total = max(1, total)
    step = min(max(0, step), total)
    filled = round(width * step / total)
    return "█" * filled + "░" * (width - filled)


def progress_text(step: int, total: int) -> str:
    """E.g. `🎨 step 3 of 10 `█████░░░…` 30%`."""
    pct = round(100 * min(step, total) / max(1, total))
    return f"🎨 Generating: step {step} of {total}\n`{progress_bar(step, total)}` {pct}%"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user_text(text: str, limit: int) -> str:
    """A member's text (a prompt) for message content: shortened, then escaped, so
    `*stars*` or `__under__` display as typed instead of turning into formatting."""
    return discord.utils.escape_markdown(truncate(text, limit))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def model_field(job: Job, catalogue: Catalogue | None) -> str | None:
    """The result's `Model` field (`Anime (anime)`), where members choose among several
    models; None with one model (its footer names it) or for a job from before names."""
    if catalogue is None or len(catalogue.models) < 2:
        return None
    entry = catalogue.models.get(job.model or "")
    if entry is None:
        return None
    return entry.name if entry.title == entry.name else f"{entry.title} ({entry.name})"


def footer_model(job: Job, catalogue: Catalogue | None) -> str:
    """The footer's model: a catalogue model's label, else its weights (`model_label`); a
    job from before names stored the weights' id itself."""
    entry = catalogue.models.get(job.model or "") if catalogue is not None else None
    if entry is None:
        return model_label(job.model)
    return entry.label or model_label(entry.source)


def model_label(model: str | None) -> str:
    """The model as members may see it: a hub id as is (`org/name`), a local folder by its
    name only (`/srv/models/sd15` → `sd15`), so no server path reaches a public message."""
    if not model:
        return "model"
    if _HUB_ID.fullmatch(model) and not model.startswith("."):
        return model
    for path in (PureWindowsPath(model), PurePosixPath(model)):
        name = path.name
        if name and "/" not in name and "\\" not in name:
            return name
    return "model"


def job_summary(job: Job) -> str:
    """One line naming a job for status messages and /queue."""
    if job.mode == TEXT_TO_IMAGE:  # no input picture, so no strength: its size instead
        size = f"{job.input_width}×{job.input_height}"
        return f"#{job.id} · imagine {size} · “{user_text(job.prompt, 60)}”"
    if job.mode == UPSCALE:  # the whole picture's safety check, after its tiles
        size = f"{job.input_width}×{job.input_height}"
        return f"#{job.id} · upscale {size} · “{user_text(job.prompt, 60)}”"
    mode = "inpaint · " if job.mode == "inpaint" else ""
    return f"#{job.id} · {mode}strength {job.strength:.2f} · “{user_text(job.prompt, 60)}”"


def masked_text(job: Job) -> str:
    """What an inpaint job repainted, as the result says it: `mask`, `transparent area`,
    or the region words."""
    if job.region and not job.mask_path:
        return f"region “{discord.utils.escape_markdown(truncate(job.region, 200))}”"
    return job.mask_source or "mask"


def structure_text(job: Job) -> str:
    """A structure job's kind and weight as the result shows them, e.g. `edges ×1.0`."""
    return f"{job.structure} ×{job.structure_weight:.1f}"


def result_embed(
    job: Job,
    *,
    mask_thumbnail: str | None = None,
    file_format: str = "PNG",
    catalogue: Catalogue | None = None,
    structure_thumbnail: str | None = None,
) -> discord.Embed:
    """The result's embed; field names are part of the contract (tests and users rely on them).
    An inpaint result has an `Inpaint` field naming what was repainted and, given the file
    name of an attached mask thumbnail, shows it as the embed's thumbnail. An upscaled
    result shows its size and the steps each tile ran. The footer names the attachment's
    format (`bot.ui.pictures.picture_file`: PNG, else lossless WebP, else JPEG). Where the
    `catalogue` offers several models, a `Model` field names the job's. A structure job has
    a `Structure` field and, given the file name of its attached map thumbnail, shows the
    map as the embed's thumbnail."""
    embed = discord.Embed(colour=discord.Colour.blurple(), description=lineage(job))
    if job.mode == "inpaint":
        embed.add_field(name="Inpaint", value=masked_text(job), inline=False)
        if mask_thumbnail:
            embed.set_thumbnail(url=f"attachment://{mask_thumbnail}")
    embed.add_field(name="Prompt", value=truncate(job.prompt, 1024), inline=False)
    if (shown_model := model_field(job, catalogue)) is not None:
        embed.add_field(name="Model", value=shown_model, inline=False)
    if job.style:
        embed.add_field(name="Style", value=job.style, inline=False)
    if job.structure:
        embed.add_field(name="Structure", value=structure_text(job))
        if structure_thumbnail:
            embed.set_thumbnail(url=f"attachment://{structure_thumbnail}")
    elif job.structure_skipped:  # the style's kind, not offered on this model
        embed.add_field(name="Structure", value=f"none (no {job.structure_skipped} here)")
    if loras := shown(job.prompt):
        embed.add_field(name="LoRA", value=truncate(loras, 1024), inline=False)
    if job.negative_prompt:
        embed.add_field(
            name="Negative prompt", value=truncate(job.negative_prompt, 1024), inline=False
        )
    if job.mode in (TEXT_TO_IMAGE, UPSCALE):
        embed.add_field(name="Size", value=f"{job.input_width}×{job.input_height}")
    if job.mode != TEXT_TO_IMAGE:
        embed.add_field(name="Strength", value=f"{job.strength:.2f}")
    embed.add_field(name="Seed", value=str(job.seed))
    if job.mode == UPSCALE:  # the tiles ran the steps; the final job only checked
        embed.add_field(name="Steps", value=f"{job.steps} per tile")
    else:
        embed.add_field(name="Steps", value=f"{job.steps_run} of {job.steps_total}")
    if tip := tip_for(job):
        embed.add_field(name="Tip", value=tip, inline=False)
    embed.set_footer(
        text=f"{footer_model(job, catalogue)} · {duration(job.seconds or 0)} · {file_format} · "
        f"job #{job.id}"
    )
    return embed
