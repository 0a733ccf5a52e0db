"""Working on a picture: Refine and Edit on a result, and "Apps → Img2img this" on any message.

All three open the settings modal (`bot.ui.modals`); its submit is routed here by custom_id
(`on_interaction`), so a modal or button from before a restart still works.

- Refine: the result becomes the new input (copied into `inputs/`, so the new job owns its
  input and deleting the parent breaks nothing), prefilled at strength 0.30.
- Edit: the job's original input with its own settings, to change the prompt and run again.
- Structure rides in each form's prompt as `<structure:KIND:WEIGHT>` (`bot.ui.modals`):
  Edit and Refine show the job's, and the submitted tag (or a style's structure, or none)
  is what the new job holds.
- Img2img this: an image of any message (attachment, else an image embed; a choice in the
  modal when there are several). What the
  modal needs to find it again is stored in `meta` under the modal's key, because a message
  fetched later may come without its attachments (no Message Content intent); the submit then
  goes through `/img2img`'s own intake (`Actions.img2img`): same download, checks and status.

A modal must be the first answer to an interaction, so only cheap refusals come before it
(job known, picture still stored, caps and quotas); everything else is checked on submit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot.actions import INPUT_GONE_TEXT
from bot.cogs.generate import served_structures
from bot.errors import UserError
from bot.models import server_model
from bot.store.db import Job
from bot.styles import Composed, structure_for, structure_skipped, unknown_style_text
from bot.ui import modals
from pipeline.request import TEXT_TO_IMAGE, InputError, check_structure

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TARGET_KEY = "img2img-this:{}"
TARGET_TTL_S = 24 * 3600  # a modal left open longer than this is forgotten
RETRY = {
    "refine": "Nothing was queued. Click **Refine** under the picture to try again.",
    "edit": "Nothing was queued. Click **Edit** under the picture to try again.",
    "this": "Nothing was queued. Use **Apps → Img2img this** on the message again.",
}
OUTPUT_GONE_TEXT = (
    "This picture is no longer stored (old results are removed to save space), so it "
    "cannot be refined. Save it and use /img2img with it instead."
)
NO_IMAGE_TEXT = (
    "This message has no picture. Use **Apps → Img2img this** on a message with a PNG, "
    "JPEG or WebP image (an attachment or an image embed), or use /img2img."
)
NO_STRUCTURE_TEXT = (
    "Structure holds an input picture's lines, so it works on /img2img pictures (and "
    "Refine); remove the `<structure:…>` tag from the prompt."
)
TARGET_GONE_TEXT = (
    "The bot no longer knows which picture this was. Use **Apps → Img2img this** on the "
    "message again."
)


def images_of(message: discord.Message) -> list[dict[str, Any]]:
    """A message's images as attachment payloads: its image attachments, else its image
    embeds (size unknown: the intake checks the bytes once downloaded)."""
    found: list[dict[str, Any]] = []
    for att in message.attachments:
        kind = (att.content_type or "").split(";")[0].strip().lower()
        if kind in IMAGE_TYPES or att.filename.lower().endswith(IMAGE_SUFFIXES):
            found.append(dict(att.to_dict()))
    if found:
        return found[: modals.MAX_PICTURES]
    for embed in message.embeds:
        for media in (embed.image, embed.thumbnail):
            url = media.proxy_url or media.url
            if url:
                found.append(
                    {
                        "id": 0,
                        "filename": "embed-image",
                        "size": 0,
                        "url": url,
                        "proxy_url": url,
                        "width": media.width,
                        "height": media.height,
                    }
                )
                break
    return found[: modals.MAX_PICTURES]


def copy_output(data_dir: Path, job: Job) -> tuple[str, int, int]:
    """A job's result as a new input of its own, (path, width, height); blocking, run it in
    a thread. Refine and Inpaint start from a result this way, so deleting the parent
    breaks nothing."""
    name = uuid.uuid4().hex
    folder = data_dir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.png.tmp"
    try:
        shutil.copyfile(data_dir / str(job.output_path), tmp)
        with Image.open(tmp) as image:
            width, height = image.size
        tmp.replace(folder / f"{name}.png")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"inputs/{name}.png", width, height


class IterateCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Img2img this", callback=self.img2img_this)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)
        await self._forget_old_targets()

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @property
    def data_dir(self) -> Any:
        return self.bot.settings.data_dir

    # -- opening the modal --------------------------------------------------------------
    async def open_modal(self, interaction: Interaction, kind: str, job_id: int) -> None:
        """Refine or Edit: refuse cheaply, else show the prefilled modal."""
        try:
            job = await self.bot.actions.job_here(interaction, job_id, deleted_ok=False)
            if kind == "refine" and not self.bot.actions.stored(job.output_path):
                raise UserError(OUTPUT_GONE_TEXT)
            has_input = job.mode != TEXT_TO_IMAGE  # /imagine's job has none to lose
            if kind == "edit" and has_input and not (self.data_dir / job.input_path).is_file():
                raise UserError(INPUT_GONE_TEXT)
            await self.bot.actions.precheck(interaction)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        strength = modals.REFINE_STRENGTH if kind == "refine" else job.strength
        await interaction.response.send_modal(
            modals.build(
                kind,
                job.id,
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                strength=strength,
                seed=job.seed,
                structure=job.structure,
                structure_weight=job.structure_weight,
                takes_structure=takes_structure(kind, job.mode),
            )
        )

    async def img2img_this(self, interaction: Interaction, message: discord.Message) -> None:
        """Apps → Img2img this: remember the message's images, then show the modal (with a
        choice of picture when there are several)."""
        images = images_of(message)
        try:
            if not images:
                raise UserError(NO_IMAGE_TEXT)
            await self.bot.actions.precheck(interaction)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        key = interaction.id
        target = {"images": images, "message_id": message.id, "created": time.time()}
        await self.bot.store.set_meta(TARGET_KEY.format(key), json.dumps(target))
        names = [str(i.get("filename") or "picture") for i in images]
        await interaction.response.send_modal(
            modals.build(
                "this", key, strength=modals.THIS_STRENGTH, pictures=names, takes_structure=True
            )
        )

    # -- the submit ---------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_interaction(self, interaction: Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        route = modals.parse_custom_id(str((interaction.data or {}).get("custom_id", "")))
        if route is None:
            return
        kind, ref = route
        try:
            await self._submit(interaction, kind, ref)
        except Exception:
            log.exception("handling the %s modal failed", kind)
            queued = await self._queued_by(interaction)
            text = (  # a failed answer after queueing must not invite a second job
                f"✅ Queued as job #{queued}; its picture will be posted in this channel."
                if queued is not None
                else "❌ Something went wrong on our side. Please try again."
            )
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)

    async def _submit(self, interaction: Interaction, kind: str, ref: int) -> None:
        target = await self._pop_target(ref) if kind == "this" else None
        values = modals.submitted_values(interaction.data)
        try:
            form = modals.read_form(values)
        except InputError as exc:
            await interaction.response.send_message(f"❌ {exc}\n{RETRY[kind]}", ephemeral=True)
            return
        parent: Job | None = None  # Edit and Refine: the job worked on, read once
        try:
            if kind != "this":
                parent = await self.bot.actions.job_here(interaction, ref, deleted_ok=False)
            model = await self._form_model(interaction, parent)
            tagged = form.structure not in (None, "off")
            if parent is not None and tagged and not takes_structure(kind, parent.mode):
                raise UserError(NO_STRUCTURE_TEXT)
            styled = await self._styled(interaction, form, model)
            control = check_structure(styled.structure, styled.structure_weight)
            self.bot.actions.check_structure_served(control, model)
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}\n{RETRY[kind]}", ephemeral=True)
            return
        if parent is None:  # Img2img this
            await self._submit_this(
                interaction, target, styled, values.get(modals.PICTURE, "0"), model
            )
            return
        copied: str | None = None
        try:
            prompt_kept = form.prompt == parent.prompt and form.style is None
            changed = replace(
                parent,
                prompt=styled.prompt,
                negative_prompt=styled.negative_prompt,
                style=styled.style or (parent.style if prompt_kept else None),
                structure=control.kind if control else None,
                structure_weight=control.weight if control else 1.0,
                structure_skipped=styled.structure_skipped,
            )
            if kind == "refine":
                if not self.bot.actions.stored(parent.output_path):
                    raise UserError(OUTPUT_GONE_TEXT)
                copied, width, height = await asyncio.to_thread(self._copy_output, parent)
                changed = replace(
                    changed, input_path=copied, input_width=width, input_height=height
                )
                if parent.mode == TEXT_TO_IMAGE:  # the base picture is now an input
                    changed = replace(changed, mode="img2img")
            strength = styled.strength
            if changed.mode == TEXT_TO_IMAGE:  # Edit of /imagine: a new one, from noise
                strength = 1.0
            await self.bot.actions.requeue(
                interaction, changed, strength=strength, seed=styled.seed, kind=kind
            )
        except (InputError, UserError) as exc:
            await self.bot.actions.discard_unused(copied)
            await self.bot.actions.say(interaction, f"❌ {exc}")
        except BaseException:
            # The reply may fail after the job was queued: its copy stays then.
            await self.bot.actions.discard_unused(copied)
            raise

    async def _submit_this(
        self,
        interaction: Interaction,
        target: dict[str, Any] | None,
        form: modals.Form,
        picture: str,
        model: str,
    ) -> None:
        images = (target or {}).get("images") or []
        index = int(picture) if picture.isdigit() else 0
        if not images or index >= len(images):
            await interaction.response.send_message(f"❌ {TARGET_GONE_TEXT}", ephemeral=True)
            return
        image = discord.Attachment(data=images[index], state=self.bot._connection)
        await self.bot.actions.img2img(
            interaction,
            image,
            form.prompt,
            form.strength,
            form.negative_prompt,
            form.seed,
            None,
            style=form.style,
            model=model,
            structure=form.structure,
            structure_weight=form.structure_weight,
            structure_skipped=form.structure_skipped,
        )

    async def _form_model(self, interaction: Interaction, parent: Job | None) -> str:
        """The model a form's job runs on: Edit and Refine keep their job's (`parent`);
        Img2img this (a form cannot grow a model field) uses the server's default, else the
        catalogue's."""
        models = self.bot.jobs.models
        if parent is not None:
            return models.kept(parent.model)
        server = await server_model(self.bot.store.db, interaction.guild_id or 0)
        return models.pick(None, None, server).name

    async def _styled(
        self, interaction: Interaction, form: modals.Form, model: str
    ) -> modals.Form:
        """The form with its Style applied to the prompt (the name as stored) and its
        `<lora:…>` tags checked and kept after it; its structure: the tag's, else the
        style's where the worker serves it (as `/img2img` decides). Raises `UserError` for
        an unknown style, a tag that cannot be used, or a too long result."""
        text, loras = self.bot.loras.split(form.prompt, model)
        if form.style is None:
            plain = Composed(text, None, 0.0, None, model=model)
            tagged = self.bot.loras.styled(plain, loras).prompt
            return replace(form, prompt=tagged if loras else form.prompt)
        composed = await self.bot.styles.apply(
            interaction.guild_id or 0,
            interaction.user.id,
            form.style,
            text,
            form.negative_prompt,
            form.strength,
        )
        if composed is None:
            raise UserError(unknown_style_text(form.style.replace("`", "")))
        composed = self.bot.loras.styled(replace(composed, model=model), loras)
        served = served_structures(self.bot, model)
        return replace(
            form,
            prompt=composed.prompt,
            negative_prompt=composed.negative_prompt,
            strength=composed.strength,
            style=composed.style,
            structure=structure_for(form.structure, composed, served),
            structure_skipped=structure_skipped(form.structure, composed, served),
        )

    # -- helpers ------------------------------------------------------------------------
    async def _queued_by(self, interaction: Interaction) -> int | None:
        """The job this interaction queued, if it got that far."""
        cursor = await self.bot.store.db.execute(
            "SELECT id FROM jobs WHERE interaction_token=? LIMIT 1", (interaction.token,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else None

    def _copy_output(self, job: Job) -> tuple[str, int, int]:
        return copy_output(self.data_dir, job)

    async def _pop_target(self, key: int) -> dict[str, Any] | None:
        """The picture an Img2img this modal was opened on; read once, then forgotten."""
        name = TARGET_KEY.format(key)
        raw = await self.bot.store.get_meta(name)
        async with self.bot.store.transaction() as db:
            await db.execute("DELETE FROM meta WHERE key=?", (name,))
        if raw is None:
            return None
        target: dict[str, Any] = json.loads(raw)
        if time.time() - float(target.get("created", 0)) > TARGET_TTL_S:
            return None
        return target

    async def _forget_old_targets(self) -> None:
        """Modals opened and never submitted leave their row; drop the old ones at start."""
        cursor = await self.bot.store.db.execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (TARGET_KEY.format("%"),)
        )
        stale = []
        for key, value in await cursor.fetchall():
            try:
                created = float(json.loads(value).get("created", 0))
            except (ValueError, AttributeError):
                created = 0.0
            if time.time() - created > TARGET_TTL_S:
                stale.append((key,))
        if stale:
            async with self.bot.store.transaction() as db:
                await db.executemany("DELETE FROM meta WHERE key=?", stale)


def takes_structure(kind: str, mode: str) -> bool:
    """Whether the form's new job has an input whose structure can be held: an /img2img
    job's Edit or Refine, and Refine of an /imagine picture (its result becomes the input);
    an inpaint job repaints its mask without one."""
    return mode == "img2img" or (kind == "refine" and mode == TEXT_TO_IMAGE)


async def setup_iterate(bot: ImgBot) -> None:
    await bot.add_cog(IterateCog(bot))
