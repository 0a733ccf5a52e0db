"""What the bot does for a command or a click: validate, queue, answer.

Visibility rule: a private error can only come before a public acknowledgement, so
`/img2img` checks the image before it answers: usually within `ACK_DEADLINE_S`, and the answer
is then the public status message that later becomes the result (one request); a slow upload
is acknowledged privately first (three requests). Requests per job: docs/operators.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.errors import UserError
from bot.inpaint_masks import MASK_GONE_TEXT, copy_mask, mask_path_for
from bot.jobs.service import NewJob
from bot.store.db import Job
from bot.ui.buttons import cancel_view
from bot.ui.render import job_summary, queue_text
from bot.uploads import DECODE_WAIT_S, Uploads
from bot.variants import variant_strength
from bot.visibility import channel_flags
from pipeline.prepare import check_declared_size
from pipeline.request import (
    UPSCALE,
    ControlRef,
    InputError,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
    check_structure,
    structure_missing,
)

if TYPE_CHECKING:
    from bot.app import ImgBot
    from bot.cogs.upscale import UpscaleCog

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]

ACK_DEADLINE_S = 1.5
"""An upload read and queued within this is answered once, in its final form: the public
status message, or a private refusal (one request). A slower one is acknowledged privately
first, since Discord wants an answer within 3 s, which costs two requests more."""
INPUT_GONE_TEXT = (
    "The original image of this picture is no longer stored (old uploads are removed to "
    "save space), so it cannot be re-run. Use /img2img with the image again."
)


OnStored = Callable[[bytes, str, int, int], Awaitable[dict[str, Any]]]
"""Runs once the upload is stored, before its job is queued: gets the upload's own bytes and
the stored input (path, width, height) and returns more `NewJob` fields (/inpaint: its
mask). May raise `InputError`/`UserError`: then nothing is queued and the input is removed."""


def _message_id(callback: Any) -> int | None:
    """The message an interaction response created (discord.py's callback response)."""
    message_id = getattr(callback, "message_id", None)
    return int(message_id) if message_id is not None else None


def _role_ids(interaction: Interaction) -> tuple[int, ...]:
    roles = getattr(interaction.user, "_roles", None) or getattr(interaction.user, "roles", [])
    return tuple(int(getattr(r, "id", r)) for r in roles)


class Actions(Uploads):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot
        self._decodes = asyncio.Semaphore(bot.settings.max_decodes)
        self.decode_wait_s = DECODE_WAIT_S
        self.ack_deadline_s = ACK_DEADLINE_S

    async def say(self, interaction: Interaction, text: str) -> None:
        """An ephemeral answer, whether or not the interaction was acknowledged."""
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    def check_structure_served(self, control: ControlRef | None, model: str | None) -> None:
        """Refuse a structure kind the job's model has no ControlNet for
        (`JobService.structures_of`), naming what is available; not known yet (one model,
        no worker ready): the job is taken (a worker without it fails it plainly, refunded)."""
        served = self.bot.jobs.structures_of(model)
        if control is not None and served is not None and control.kind not in served:
            raise UserError(structure_missing(control.kind, served))

    async def precheck(self, interaction: Interaction) -> None:
        """Refusals that need no download: where it is used, queue caps, quotas."""
        if interaction.guild_id is None:
            raise UserError("Use this command in a server, not in direct messages.")
        for check in self.bot.prechecks:
            await check(interaction)
        self.bot.jobs.check_caps(interaction.guild_id, interaction.user.id)
        if self.bot.jobs.fatal:
            raise UserError("The image model failed to load, so no images can be made right now.")

    # -- /img2img ---------------------------------------------------------------------
    async def img2img(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        prompt: str,
        strength: float,
        negative_prompt: str | None,
        seed: int | None,
        steps: int | None,
        style: str | None = None,
        *,
        on_stored: OnStored | None = None,
        model: str | None = None,
        structure: str | None = None,
        structure_weight: float = 1.0,
        structure_skipped: str | None = None,
    ) -> None:
        """/img2img's intake, shared by every command taking an upload (/inpaint passes
        `on_stored`): check, store, queue, answer with the status message; acknowledged
        privately first only when storing takes longer than `ACK_DEADLINE_S`. `model`:
        the catalogue name chosen by `compose` (None: the default); its steps and guidance
        are the job's defaults. A structure the worker has no ControlNet for is refused
        here, before anything is stored."""
        models = self.bot.jobs.models
        entry = models.catalogue.model(model)
        try:
            prompt = check_prompt(prompt)
            negative = (
                check_prompt(negative_prompt, field="negative prompt", required=False) or None
            )
            check_strength(strength)
            check_seed(seed)
            check_steps(steps)
            check_declared_size(image.size, max_bytes=self.settings.max_input_bytes)
            control = check_structure(structure, structure_weight)
            self.check_structure_served(control, entry.name)
            await self.precheck(interaction)
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        assert interaction.guild_id is not None
        public, nsfw = channel_flags(interaction.channel)
        stored: list[str] = []  # the stored input, once there is one

        async def intake() -> Job:
            data, path, width, height = await self._read_and_store(image)
            stored.append(path)
            extra = await on_stored(data, path, width, height) if on_stored else {}
            del data
            return await self.bot.jobs.submit(
                NewJob(
                    guild_id=interaction.guild_id or 0,
                    channel_id=interaction.channel_id or 0,
                    user_id=interaction.user.id,
                    prompt=prompt,
                    negative_prompt=negative,
                    strength=strength,
                    seed=seed,
                    steps=steps or models.steps(entry),
                    guidance=models.guidance(entry),
                    input_path=path,
                    input_width=width,
                    input_height=height,
                    application_id=interaction.application_id,
                    interaction_token=interaction.token,
                    role_ids=_role_ids(interaction),
                    style=style,
                    channel_public=public,
                    channel_nsfw=nsfw,
                    interaction_created_at=interaction.created_at.timestamp(),
                    model=entry.name,
                    structure=control.kind if control else None,
                    structure_weight=control.weight if control else 1.0,
                    structure_skipped=structure_skipped,
                    **extra,
                )
            )

        task = asyncio.ensure_future(intake())
        try:
            await asyncio.wait({task}, timeout=self._ack_time_left(interaction))
            if not task.done():  # Discord wants an answer within 3 s: a private one
                await interaction.response.defer(ephemeral=True, thinking=True)
            job = await task
        except (InputError, UserError) as exc:
            self.discard(stored[0] if stored else None)
            await self._refuse(interaction, f"❌ {exc}")
            return
        except discord.HTTPException as exc:
            self.discard(stored[0] if stored else None)
            await self._refuse(
                interaction,
                f"❌ Could not download the attachment ({exc.status}). Upload it again.",
            )
            return
        except BaseException:
            task.cancel()
            self.discard(stored[0] if stored else None)  # nothing was queued: no orphan
            raise
        await self.announce(interaction, job)

    def _ack_time_left(self, interaction: Interaction) -> float:
        """Seconds left of `ack_deadline_s`, counted from the interaction's creation: in a
        burst, a handler may start a while after Discord sent the interaction."""
        waited = dt.datetime.now(dt.UTC).timestamp() - interaction.created_at.timestamp()
        return max(0.0, self.ack_deadline_s - max(0.0, waited))

    async def _refuse(self, interaction: Interaction, text: str) -> None:
        """A private refusal: the answer itself, or the private acknowledgement's text."""
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    async def announce(self, interaction: Interaction, job: Job) -> None:
        """Post the job's public status message (which later becomes the result). Not yet
        acknowledged: it is the answer itself (one request). After a private
        acknowledgement: say privately that it was queued, then post it (two)."""
        content = f"{job_summary(job)}\n{self._place(job)}"
        message_id: int | None = None
        try:
            if not interaction.response.is_done():
                callback = await interaction.response.send_message(
                    content=content, view=cancel_view(job.id)
                )
                message_id = _message_id(callback)
                return
            await interaction.edit_original_response(
                content=f"✅ Queued as job #{job.id}. Your picture will appear in this channel."
            )
            message = await interaction.followup.send(
                content=content, view=cancel_view(job.id), wait=True
            )
            message_id = message.id
        finally:
            await self.bot.jobs.attach_status_message(job.id, message_id)

    def _place(self, job: Job) -> str:
        """The first status line: its place in the queue, or that it already started."""
        eta = self.bot.jobs.eta(job.id)
        if eta is not None:
            return queue_text(*eta)
        if any(q.job_id == str(job.id) for q in self.bot.jobs.queue.running):
            return "🎨 Starting…"
        return "⏳ Waiting for the worker…"

    # -- buttons ----------------------------------------------------------------------
    async def job_here(
        self, interaction: Interaction, job_id: int, *, deleted_ok: bool = True
    ) -> Job:
        """The job a button or modal names, if it belongs to this server (and, unless
        `deleted_ok`, is not deleted); else a `UserError` in plain words."""
        job = await self.bot.store.get_job(job_id)
        if (
            job is None
            or job.guild_id != interaction.guild_id
            or (job.state == "deleted" and not deleted_ok)
        ):
            raise UserError("This image is no longer known to the bot.")
        return job

    def stored(self, rel: str | None) -> bool:
        """A file under DATA_DIR (an input or a result) is still there."""
        return bool(rel) and (self.settings.data_dir / str(rel)).is_file()

    async def variant(self, interaction: Interaction, job_id: int, delta: float) -> None:
        try:
            parent = await self.job_here(interaction, job_id)
            strength = variant_strength(parent.strength, delta)
            if strength is None:
                raise UserError(
                    f"Strength is already at {parent.strength:.2f}; it cannot move further."
                )
            if parent.mode == UPSCALE:  # the upscale again, at the new strength
                await self._upscale().again(interaction, parent, strength=strength, seed=None)
                return
            await self.requeue(
                interaction, parent, strength=strength, seed=parent.seed, kind="variant"
            )
        except (InputError, UserError) as exc:
            await self.say(interaction, f"❌ {exc}")

    async def reroll(self, interaction: Interaction, job_id: int) -> None:
        try:
            parent = await self.job_here(interaction, job_id)
            if parent.mode == UPSCALE:  # the upscale again, with a new seed
                await self._upscale().again(interaction, parent, strength=None, seed=None)
                return
            await self.requeue(
                interaction, parent, strength=parent.strength, seed=None, kind="reroll"
            )
        except (InputError, UserError) as exc:
            await self.say(interaction, f"❌ {exc}")

    def _upscale(self) -> UpscaleCog:
        return cast("UpscaleCog", self.bot.get_cog("UpscaleCog"))

    async def requeue(
        self, interaction: Interaction, parent: Job, *, strength: float, seed: int | None, kind: str
    ) -> None:
        """Queue a new job for the clicker from a stored job's input; the result replies to
        the message that was clicked. Refine and Edit pass a copy of `parent` with the
        modal's prompt (and, for Refine, the result as its input)."""
        await self.precheck(interaction)
        if not (self.settings.data_dir / parent.input_path).exists():
            raise UserError(INPUT_GONE_TEXT)
        parent, new_mask = await self._mask_beside_input(parent)
        try:
            job = await self.bot.jobs.submit(
                self.child_job(interaction, parent, strength=strength, seed=seed, kind=kind)
            )
        except BaseException:
            if new_mask is not None:
                (self.settings.data_dir / new_mask).unlink(missing_ok=True)
            raise
        message_id: int | None = None
        try:
            callback = await interaction.response.send_message(
                content=f"{job_summary(job)}\n{self._place(job)}", view=cancel_view(job.id)
            )
            message_id = _message_id(callback)
            if message_id is None:
                message_id = (await interaction.original_response()).id
        finally:
            await self.bot.jobs.attach_status_message(job.id, message_id)

    async def _mask_beside_input(self, parent: Job) -> tuple[Job, str | None]:
        """An inpaint job's mask must still be stored and sit beside its input: Refine gives
        the child a new input (the result), so the mask is copied next to it (scaled to its
        size). Returns the job to copy from and the mask made here, if any."""
        if not parent.mask_path:
            return parent, None
        data_dir = self.settings.data_dir
        if not (data_dir / parent.mask_path).is_file():
            raise UserError(MASK_GONE_TEXT)
        if parent.mask_path == mask_path_for(parent.input_path):
            return parent, None
        size = (parent.input_width, parent.input_height)
        made = await asyncio.to_thread(
            copy_mask, data_dir, parent.mask_path, parent.input_path, size
        )
        return replace(parent, mask_path=made), made

    def child_job(
        self, interaction: Interaction, parent: Job, *, strength: float, seed: int | None, kind: str
    ) -> NewJob:
        """A job for the clicker made from a stored one (prompt, input, steps, style)."""
        assert interaction.guild_id is not None
        public, nsfw = channel_flags(interaction.channel)
        return NewJob(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or parent.channel_id,
            user_id=interaction.user.id,
            prompt=parent.prompt,
            negative_prompt=parent.negative_prompt,
            strength=strength,
            seed=seed,
            steps=parent.steps,
            guidance=parent.guidance,
            input_path=parent.input_path,
            input_width=parent.input_width,
            input_height=parent.input_height,
            kind=kind,
            parent_id=parent.id,
            application_id=interaction.application_id,
            interaction_token=interaction.token,
            reply_to_message_id=interaction.message.id if interaction.message else None,
            role_ids=_role_ids(interaction),
            style=parent.style,
            channel_public=public,
            channel_nsfw=nsfw,
            interaction_created_at=interaction.created_at.timestamp(),
            mode=parent.mode,
            mask_path=parent.mask_path,
            mask_source=parent.mask_source,
            region=parent.region,
            crop=parent.crop,
            model=self.bot.jobs.models.kept(parent.model),
            # structure holds an img2img job's input; an inpaint child repaints without it
            structure=parent.structure if parent.mode == "img2img" else None,
            structure_weight=parent.structure_weight,
            structure_skipped=parent.structure_skipped if parent.mode == "img2img" else None,
        )

    async def delete(self, interaction: Interaction, job_id: int) -> None:
        try:
            job = await self.job_here(interaction, job_id)
            if job.user_id != interaction.user.id and not interaction.permissions.manage_messages:
                raise UserError(
                    "Only the person who made this image, or someone with Manage "
                    "Messages, can delete it."
                )
        except UserError as exc:
            await self.say(interaction, f"❌ {exc}")
            return
        await interaction.response.send_message("🗑️ Deleted.", ephemeral=True)
        if interaction.message is not None:
            try:
                await interaction.message.delete()
            except discord.HTTPException:
                log.warning("could not delete message of job %d", job.id)
        await self.bot.jobs.mark_deleted(job)

    async def cancel(self, interaction: Interaction, job_id: int) -> None:
        try:
            text = await self.bot.jobs.cancel(
                job_id, interaction.user.id, interaction.permissions.manage_messages
            )
        except UserError as exc:
            text = f"❌ {exc}"
        await self.say(interaction, text)
