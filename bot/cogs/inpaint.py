"""/inpaint and the Inpaint button: regenerate only a masked region of a picture.

What to repaint, first match wins: a `mask` upload (white repaints, black keeps), the
input's transparent pixels, then `region` words (turned into a mask by CLIPSeg in the
worker). The mask is checked at the door (`bot.inpaint_masks.choose_mask`), so a bad one
queues nothing and spends no quota. /inpaint goes through /img2img's own intake
(`Actions.img2img` with an `on_stored` hook), so validation, queue, progress, quota and the
result are the same.

The Inpaint button under every result opens a modal (region words, the prompt, a mask
upload in a `FileUpload`, strength); the submit is routed here by custom_id alone
(`on_interaction`), so a modal opened before a restart still works. Its input is the
result's picture, copied into `inputs/` like Refine does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.generate import compose
from bot.cogs.iterate import OUTPUT_GONE_TEXT, copy_output
from bot.cogs.models import model_autocomplete
from bot.cogs.styles import style_autocomplete
from bot.errors import UserError
from bot.inpaint_masks import (
    CROP_CHOICES,
    MAX_REGION_CHARS,
    NO_REGION_TEXT,
    MaskChoice,
    check_region,
    choose_mask,
    write_mask,
)
from bot.store.db import Job
from bot.ui import modals
from pipeline.prepare import check_declared_size
from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_STRENGTH,
    MIN_STRENGTH,
    InputError,
    check_prompt,
)

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]

STRENGTH = 0.75
MODAL_ID = re.compile(r"^i2i:inpaint:(?P<job>\d+)$")
REGION, PROMPT, MASK, STRENGTH_FIELD = "region", "prompt", "mask", "strength"
RETRY = "Nothing was queued. Click **Inpaint** under the picture to try again."


def modal_id(job_id: int) -> str:
    return f"i2i:inpaint:{job_id}"


def build_modal(job: Job) -> discord.ui.Modal:
    """`What to repaint` (region words), `Prompt` (prefilled), `Mask` (a file upload) and
    `Strength`, in Label components. Never stored: the submit is routed by custom_id."""
    modal = discord.ui.Modal(title=f"Inpaint #{job.id}", custom_id=modal_id(job.id), timeout=None)
    modal.add_item(
        discord.ui.Label(
            text="What to repaint",
            description="Words such as “the sky”; or leave empty and upload a mask below.",
            component=discord.ui.TextInput(
                custom_id=REGION,
                required=False,
                max_length=MAX_REGION_CHARS,
                placeholder="the background",
            ),
        )
    )
    modal.add_item(
        discord.ui.Label(
            text="Prompt",
            component=discord.ui.TextInput(
                custom_id=PROMPT,
                style=discord.TextStyle.paragraph,
                default=job.prompt[:MAX_PROMPT_CHARS] or None,
                max_length=MAX_PROMPT_CHARS,
                placeholder="What the repainted part should show",
            ),
        )
    )
    modal.add_item(
        discord.ui.Label(
            text="Mask",
            description="Optional: white repaints, black keeps; the picture's proportions.",
            component=discord.ui.FileUpload(custom_id=MASK, required=False, max_values=1),
        )
    )
    modal.add_item(
        discord.ui.Label(
            text="Strength",
            component=discord.ui.TextInput(
                custom_id=STRENGTH_FIELD,
                default=modals.strength_text(STRENGTH),
                max_length=10,
                placeholder=f"{MIN_STRENGTH} (keep) to {MAX_STRENGTH} (repaint freely)",
            ),
        )
    )
    modal.stop()
    return modal


def uploaded_files(data: Any) -> dict[str, list[dict[str, Any]]]:
    """A MODAL_SUBMIT's file uploads (type 19) by custom_id, as attachment payloads from
    `resolved.attachments`."""
    resolved = ((data or {}).get("resolved") or {}).get("attachments") or {}
    found: dict[str, list[dict[str, Any]]] = {}

    def walk(comp: Any) -> None:
        if not isinstance(comp, dict):
            return
        if comp.get("type") == 19 and isinstance(comp.get("custom_id"), str):
            ids = [str(v) for v in comp.get("values") or []]
            found[comp["custom_id"]] = [resolved[i] for i in ids if i in resolved]
        for child in comp.get("components") or []:
            walk(child)
        walk(comp.get("component"))

    for comp in (data or {}).get("components") or []:
        walk(comp)
    return found


class InpaintCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    @property
    def data_dir(self) -> Any:
        return self.bot.settings.data_dir

    def region_unavailable(self) -> bool:
        """True once the worker said it has no mask model (region words cannot work)."""
        info = self.bot.jobs.engine_info
        return info is not None and not getattr(info, "region_masks", False)

    # -- /inpaint -------------------------------------------------------------------------
    @app_commands.command(
        name="inpaint", description="Repaint only part of an image and keep the rest as it is"
    )
    @app_commands.guild_only()
    @app_commands.describe(
        image="PNG, JPEG or WebP; transparent pixels are repainted when there is no mask",
        prompt="What the repainted part should show",
        mask="White repaints, black keeps, grey blends; the image's proportions",
        region="Or say what to repaint in words, e.g. “the sky”, “the background”",
        strength="0.05 keeps the masked part, 1.0 repaints it freely; default 0.75",
        negative_prompt="What to avoid",
        seed="Same seed + same settings = same picture",
        steps="Denoising steps (1–150); more is slower",
        style="A saved look: yours, this server's or a built-in (see /style list)",
        crop="auto: a small mask is generated at full detail in a box around it",
        model="Which model draws it (see /models); default: the style's, else the server's",
    )
    @app_commands.choices(crop=[app_commands.Choice(name=c, value=c) for c in CROP_CHOICES])
    @app_commands.autocomplete(style=style_autocomplete, model=model_autocomplete)
    async def inpaint(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        mask: discord.Attachment | None = None,
        region: app_commands.Range[str, 1, MAX_REGION_CHARS] | None = None,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
        crop: str | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        try:
            words = check_region(region)
            if mask is not None:
                check_declared_size(mask.size, max_bytes=self.bot.settings.max_input_bytes)
            if crop is not None and crop not in CROP_CHOICES:
                raise InputError(f"crop must be one of {', '.join(CROP_CHOICES)}.")
            # A style's strength is tuned for img2img; inpainting repaints a region, so
            # it keeps its own default unless one is given.
            composed = await compose(
                self.bot, interaction, prompt, negative_prompt, style, strength or STRENGTH, model
            )
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
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
            on_stored=partial(self._with_mask, mask=mask, region=words, crop=crop or "auto"),
        )

    async def _with_mask(
        self,
        data: bytes,
        stored: str,
        width: int,
        height: int,
        *,
        mask: discord.Attachment | None,
        region: str | None,
        crop: str,
    ) -> dict[str, Any]:
        """`on_stored` of /inpaint: pick and check the mask, store it beside the input."""
        mask_data: bytes | None = None
        async with self.bot.actions.decode_slot():
            if mask is not None:
                mask_data = await mask.read()
            choice = await asyncio.to_thread(
                choose_mask, data, (width, height), mask_data=mask_data, region=region
            )
        return await self._job_fields(choice, stored, crop)

    async def _job_fields(self, choice: MaskChoice, stored: str, crop: str) -> dict[str, Any]:
        """The inpaint fields of a `NewJob`; the mask (if any) is written beside `stored`."""
        if choice.region is not None and self.region_unavailable():
            raise UserError(NO_REGION_TEXT)
        mask_path = None
        if choice.mask is not None:
            mask_path = await asyncio.to_thread(write_mask, self.data_dir, stored, choice.mask)
        return {
            "mode": "inpaint",
            "mask_path": mask_path,
            "mask_source": choice.source,
            "region": choice.region,
            "crop": crop,
        }

    # -- the Inpaint button -----------------------------------------------------------------
    async def open_modal(self, interaction: Interaction, job_id: int) -> None:
        """Refuse cheaply (a modal must be the first answer), else show the modal."""
        try:
            job = await self.bot.actions.job_here(interaction, job_id, deleted_ok=False)
            if not self.bot.actions.stored(job.output_path):
                raise UserError(OUTPUT_GONE_TEXT)
            await self.bot.actions.precheck(interaction)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        await interaction.response.send_modal(build_modal(job))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        match = MODAL_ID.match(str((interaction.data or {}).get("custom_id", "")))
        if match is None:
            return
        try:
            await self._submit(interaction, int(match["job"]))
        except Exception:
            log.exception("handling the inpaint modal failed")
            await self.bot.actions.say(
                interaction, "❌ Something went wrong on our side. Please try again."
            )

    async def _submit(self, interaction: Interaction, job_id: int) -> None:
        values = modals.submitted_values(interaction.data)
        uploads = uploaded_files(interaction.data).get(MASK) or []
        try:
            prompt = check_prompt(values.get(PROMPT))
            strength = modals.read_strength(values.get(STRENGTH_FIELD, ""))
            region = check_region(values.get(REGION))
            if not uploads and region is None:
                raise InputError(
                    "Say what to repaint: words in **What to repaint** (the `region`), or "
                    "a `mask` image (white = repaint, black = keep) in **Mask**."
                )
            if not uploads and self.region_unavailable():
                raise UserError(NO_REGION_TEXT)
            mask = None
            if uploads:
                mask = discord.Attachment(data=uploads[0], state=self.bot._connection)
                check_declared_size(mask.size, max_bytes=self.bot.settings.max_input_bytes)
            parent = await self.bot.actions.job_here(interaction, job_id, deleted_ok=False)
            if not self.bot.actions.stored(parent.output_path):
                raise UserError(OUTPUT_GONE_TEXT)
            await self.bot.actions.precheck(interaction)
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}\n{RETRY}", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        copied: str | None = None
        try:
            copied, width, height = await asyncio.to_thread(copy_output, self.data_dir, parent)
            mask_data = None
            async with self.bot.actions.decode_slot():
                if mask is not None:
                    mask_data = await mask.read()
                choice = await asyncio.to_thread(
                    choose_mask, None, (width, height), mask_data=mask_data, region=region
                )
            fields = await self._job_fields(choice, copied, "auto")
            source = replace(
                parent,
                prompt=prompt,
                style=parent.style if prompt == parent.prompt else None,
                input_path=copied,
                input_width=width,
                input_height=height,
                **fields,
            )
            new = self.bot.actions.child_job(
                interaction, source, strength=strength, seed=None, kind="inpaint"
            )
            job = await self.bot.jobs.submit(new)
        except (InputError, UserError, discord.HTTPException) as exc:
            self.bot.actions.discard(copied)
            text = (
                str(exc)
                if not isinstance(exc, discord.HTTPException)
                else ("Could not download the mask. Upload it again.")
            )
            await interaction.edit_original_response(content=f"❌ {text}\n{RETRY}")
            return
        except BaseException:
            self.bot.actions.discard(copied)
            raise
        await self.bot.actions.announce(interaction, job)

    # -- helpers --------------------------------------------------------------------------


async def setup_inpaint(bot: ImgBot) -> None:
    await bot.add_cog(InpaintCog(bot))
