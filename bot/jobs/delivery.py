"""Where a job's status and result appear on Discord.

While the interaction token lives (15 min from the interaction's creation), the job's status
message is edited through the interaction webhook. A result for a variant or reroll is
posted as a reply to the message it came from. Once the token has expired (by the clock, or
because Discord answered 401), the bot's own status message is edited or deleted through the
channel endpoints, and a result or failure goes to the channel as a new message: the only
message that pings anyone, and it pings exactly the requester.

When the bot may not post in the channel (403 Missing Permissions), a result goes out as an
interaction follow-up while the token lives (naming the message it would have replied to),
else the requester learns by DM which permission the bot lacks there; a failure notice goes
to them privately. Neither is retried. A result delivered again after a restart first looks
for the message an interrupted post may have left (its Reroll button names the job), so it
is edited, never posted twice.

Nothing here shows a server path or exception text: failure texts pass `plain_text`
(`bot.jobs.notices`, with the other words of final messages).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path
from typing import Any

import discord

from bot.errors import Undeliverable
from bot.inpaint_masks import thumbnail_png
from bot.jobs.notices import (
    CANCELLED_TEXT,
    POST_PERMISSIONS,
    WITHHELD_PUBLIC,
    ping,
    plain_text,
    withheld_notice,
)
from bot.store.db import Job, Store
from bot.ui.button_rows import result_rows
from bot.ui.buttons import cancel_view
from bot.ui.pictures import Picture, spoilered, upload_limit
from bot.ui.render import job_summary, result_embed
from bot.upscale import fits_again
from config.catalogue import Catalogue
from pipeline.request import structure_map_path

log = logging.getLogger(__name__)

TOKEN_GONE = {(401, 50027), (404, 10015)}  # Invalid Webhook Token, Unknown Webhook
MISSING_PERMISSIONS = 50013
HISTORY_SCAN = 50
"""Recent channel messages searched for a result an interrupted post left behind."""


def preview_files(job_id: int, preview: bytes) -> list[discord.File]:
    """A status edit's attachments for a live preview: the JPEG, or none (hidden)."""
    if not preview:
        return []
    return [discord.File(io.BytesIO(preview), filename=f"preview-{job_id}.jpg")]


class DiscordDelivery:
    def __init__(
        self,
        client: discord.Client,
        store: Store,
        data_dir: Path,
        *,
        upscale_max_side: int = 2048,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.data_dir = data_dir
        self.upscale_max_side = upscale_max_side  # Upscale ×2 is offered only under it
        self.catalogue = catalogue  # names the job's model on results

    # -- where messages go --------------------------------------------------------------
    def _webhook(self, job: Job) -> discord.Webhook:
        """The interaction's webhook; an application webhook, so it may send ephemerals."""
        assert job.application_id and job.interaction_token
        hook = discord.Webhook.partial(
            job.application_id, job.interaction_token, client=self.client
        )
        hook.type = discord.WebhookType.application
        return hook

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def _status(self, job: Job) -> discord.PartialMessage | None:
        """The bot's own status message, reachable through the channel endpoints."""
        if not job.status_message_id:
            return None
        return self._channel(job).get_partial_message(job.status_message_id)

    def _token_alive(self, job: Job) -> bool:
        return job.token_valid(time.time())

    async def _token_failed(self, job: Job, exc: discord.HTTPException) -> bool:
        """True if Discord says the token is gone; remembered so later calls skip it."""
        if (exc.status, exc.code) not in TOKEN_GONE:
            return False
        log.info("job %d: the interaction token is no longer valid", job.id)
        job.token_expires_at = 0.0
        await self.store.update_job(job.id, token_expires_at=0.0)
        return True

    # -- while the job waits or runs ----------------------------------------------------
    async def show_status(
        self, job: Job, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None:
        """Edit the status message; a live `preview` (JPEG; b"": hidden) replaces the
        picture it shows, in the same edit, and is never stored."""
        if not job.status_message_id:
            return
        content = f"{job_summary(job)}\n{text}"
        view = cancel_view(job.id) if cancellable else None
        extra: dict[str, Any] = {}
        if preview is not None:
            extra["attachments"] = preview_files(job.id, preview)
        if self._token_alive(job):
            try:
                await self._webhook(job).edit_message(
                    job.status_message_id, content=content, view=view, **extra
                )
                return
            except discord.HTTPException as exc:
                if not await self._token_failed(job, exc):
                    raise
                if preview is not None:  # rebuilt: a File is read once
                    extra["attachments"] = preview_files(job.id, preview)
        status = self._status(job)
        assert status is not None
        await status.edit(content=content, view=view, **extra)

    # -- the end of a job ---------------------------------------------------------------
    async def deliver_result(self, job: Job) -> int | None:
        """Post the picture; the id of its message (`JobEvents._deliver` records it)."""
        path = self.data_dir / (job.output_path or "")
        # The one rule for every posted picture (bot.ui.pictures): spoiler, format.
        limit = upload_limit(guild=self.client.get_guild(job.guild_id))
        picture = await Picture.prepare(
            path, f"img2img-{job.id}.png", spoiler=spoilered(job), limit=limit
        )
        thumb = None
        if job.mode == "inpaint" and job.mask_path:  # no thread hop for the other jobs
            thumb = await asyncio.to_thread(self._mask_thumbnail, job)
        thumb_name = f"mask-{job.id}.png"
        if job.structure and job.output_path:  # the map that held the picture
            thumb = await asyncio.to_thread(self._structure_thumbnail, job)
            thumb_name = f"structure-{job.id}.png"
        # Upscale ×2 is offered only where twice the picture fits UPSCALE_MAX_SIDE.
        upscale = picture.size is None or fits_again(*picture.size, self.upscale_max_side)
        payload: dict[str, Any] = {
            "embed": result_embed(
                job,
                mask_thumbnail=thumb_name if thumb and not job.structure else None,
                structure_thumbnail=thumb_name if thumb and job.structure else None,
                file_format=picture.format,
                catalogue=self.catalogue,
            ),
            "view": result_rows(job.id, job.strength, mode=job.mode, upscale=upscale),
        }

        def files() -> list[discord.File]:
            out = [picture.file()]
            if thumb:
                out.append(discord.File(io.BytesIO(thumb), filename=thumb_name))
            return out

        message_id: int | None = None
        via_token = bool(
            job.status_message_id and not job.reply_to_message_id and self._token_alive(job)
        )
        if job.delivery_tries and not via_token:  # a channel post a restart may have cut off
            message_id = await self._edit_posted(job, payload)
        if message_id is None and via_token:
            try:
                msg = await self._webhook(job).edit_message(
                    job.status_message_id,
                    content=f"<@{job.user_id}>",
                    attachments=files(),
                    **payload,
                )
                message_id = msg.id
            except discord.HTTPException as exc:
                await self._token_failed(job, exc)
                log.warning("editing job %d's message failed (%s); posting to channel", job.id, exc)
        if message_id is None:
            try:
                message_id = await self._post_result(job, files(), payload)
            except discord.Forbidden as exc:
                if exc.code != MISSING_PERMISSIONS:
                    raise
                try:
                    message_id = await self._result_elsewhere(job, files(), payload)
                except Undeliverable:
                    await self._remove_status(job)  # no "Generating…" with a live Cancel
                    raise
            await self._remove_status(job)
        return message_id

    async def _edit_posted(self, job: Job, payload: dict[str, Any]) -> int | None:
        """The result message an interrupted delivery already posted, brought up to date;
        None if there is none (or the channel cannot be read)."""
        me = self.client.user
        reroll = f"i2i:r:{job.id}"
        try:
            async for msg in self._channel(job).history(limit=HISTORY_SCAN):
                if me is None or msg.author.id != me.id or not msg.attachments:
                    continue
                ids = {
                    getattr(c, "custom_id", None) for row in msg.components for c in row.children
                }
                if reroll in ids:
                    await msg.edit(**payload)
                    log.info(
                        "job %d: found its result message %d; not posting again", job.id, msg.id
                    )
                    return msg.id
        except discord.HTTPException as exc:
            log.info("job %d: could not look for an earlier result message (%s)", job.id, exc)
        return None

    async def _result_elsewhere(
        self, job: Job, files: list[discord.File], payload: dict[str, Any]
    ) -> int:
        """The channel refused the post: a follow-up through the interaction token (no reply
        possible there, so it names the message it is for), else a DM saying what the bot
        lacks; raises `Undeliverable` then (the picture stays in /gallery)."""
        missing = self._missing_permissions(job)
        if self._token_alive(job):
            parent = (
                f" (from https://discord.com/channels/{job.guild_id}/{job.channel_id}/"
                f"{job.reply_to_message_id})"
                if job.reply_to_message_id
                else ""
            )
            try:
                msg = await self._webhook(job).send(
                    content=f"<@{job.user_id}>{parent}",
                    files=files,
                    wait=True,
                    allowed_mentions=discord.AllowedMentions.none(),
                    **payload,
                )
                log.warning("job %d: no %s in its channel; sent as a follow-up", job.id, missing)
                return msg.id
            except discord.HTTPException as exc:
                await self._token_failed(job, exc)
                log.info("job %d: the follow-up failed too (%s)", job.id, exc)
        several = " and " in missing
        await self._tell_dm(
            job,
            f"I couldn't post your picture for job #{job.id} in <#{job.channel_id}>: I'm "
            f"missing the {missing} permission{'s' if several else ''} there. A server "
            f"admin can give {'them' if several else 'it'} to me. Your picture is kept in "
            "/gallery, and it did not count against your quota.",
        )
        raise Undeliverable(f"the bot lacks {missing} in channel {job.channel_id}")

    def _missing_permissions(self, job: Job) -> str:
        """Which of the permissions a result post needs the bot lacks in the job's channel,
        as cached; all of them when the cache cannot tell."""
        channel = self.client.get_channel(job.channel_id)
        guild = getattr(channel, "guild", None)
        names: list[str] = []
        if isinstance(channel, discord.abc.GuildChannel) and guild is not None and guild.me:
            perms = channel.permissions_for(guild.me)
            names = [name for flag, name in POST_PERMISSIONS if not getattr(perms, flag)]
            if job.reply_to_message_id and not perms.read_message_history:
                names.append("Read Message History")
        if not names:
            names = [name for _, name in POST_PERMISSIONS[1:]]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def _mask_thumbnail(self, job: Job) -> bytes | None:
        """A small PNG of an inpaint job's stored mask, or None (region words: the mask was
        made in the worker; a mask pruned meanwhile)."""
        if job.mode != "inpaint" or not job.mask_path:
            return None
        try:
            return thumbnail_png(self.data_dir / job.mask_path)
        except OSError:
            log.info("job %d: its mask is no longer readable; no thumbnail", job.id)
            return None

    def _structure_thumbnail(self, job: Job) -> bytes | None:
        """The thumbnail of a structure job's map the worker wrote beside its result, or
        None (pruned meanwhile)."""
        try:
            return (self.data_dir / structure_map_path(job.output_path or "")).read_bytes()
        except OSError:
            log.info("job %d: its structure map is no longer readable; no thumbnail", job.id)
            return None

    async def _post_result(
        self, job: Job, files: list[discord.File], payload: dict[str, Any]
    ) -> int:
        """The result as a new channel message: a reply to the clicked message for a
        variant, and with the requester's ping once the token is gone."""
        reference = None
        if job.reply_to_message_id:
            reference = discord.MessageReference(
                message_id=job.reply_to_message_id,
                channel_id=job.channel_id,
                fail_if_not_exists=False,
            )
        alive = self._token_alive(job)
        content = (
            f"<@{job.user_id}>" if reference or alive else f"<@{job.user_id}> your image is ready."
        )
        msg = await self._channel(job).send(
            content=content,
            files=files,
            reference=reference,  # type: ignore[arg-type]
            allowed_mentions=discord.AllowedMentions.none() if alive else ping(job.user_id),
            **payload,
        )
        return msg.id

    async def _remove_status(self, job: Job) -> None:
        """Delete the status message once its result was posted elsewhere, so no stale
        "Starting…" with a live Cancel button stays behind."""
        if not job.status_message_id:
            return
        if self._token_alive(job):
            try:
                await self._webhook(job).delete_message(job.status_message_id)
                return
            except discord.HTTPException as exc:
                await self._token_failed(job, exc)
        status = self._status(job)
        assert status is not None
        try:
            await status.delete()
        except discord.HTTPException as exc:
            log.warning("could not delete the status message of job %d (%s)", job.id, exc)

    async def _edit_via_token(self, job: Job, content: str) -> bool:
        if not (job.status_message_id and self._token_alive(job)):
            return False
        try:
            await self._webhook(job).edit_message(
                job.status_message_id, content=content, view=None, attachments=[]
            )  # a live preview goes with the status
            return True
        except discord.HTTPException as exc:
            await self._token_failed(job, exc)
            log.info("editing job %d's status through its token failed (%s)", job.id, exc)
            return False

    async def _edit_status(self, job: Job, content: str) -> bool:
        """Put final text on the status message, Cancel button gone; False if impossible."""
        if await self._edit_via_token(job, content):
            return True
        status = self._status(job)
        if status is None:
            return False
        try:
            await status.edit(content=content, view=None, attachments=[])  # and its preview
            return True
        except discord.HTTPException as exc:
            log.info("editing job %d's status in its channel failed (%s)", job.id, exc)
            return False

    async def _final_text(self, job: Job, text: str, *, notify: bool) -> None:
        """The job's last word on its status message. A text the requester must see
        (`notify`) that can no longer go through the token becomes a new channel message,
        pinging them if the token is gone, and the stale status message is deleted."""
        content = f"{job_summary(job)}\n{text}"
        try:
            if not notify:
                if not await self._edit_status(job, content):
                    await self._channel(job).send(content=content)
                return
            if await self._edit_via_token(job, content):
                return
            alive = self._token_alive(job)
            await self._channel(job).send(
                content=content if alive else f"<@{job.user_id}> {content}",
                allowed_mentions=discord.AllowedMentions.none() if alive else ping(job.user_id),
            )
        except discord.Forbidden as exc:
            if exc.code != MISSING_PERMISSIONS:
                raise
            if notify:  # told privately instead; not retried
                await self._tell_privately(job, content)
            return
        await self._remove_status(job)

    async def deliver_failure(self, job: Job, message: str) -> None:
        await self._final_text(job, f"❌ {plain_text(message)}", notify=True)

    async def deliver_cancelled(self, job: Job) -> None:
        await self._final_text(job, CANCELLED_TEXT, notify=False)

    async def deliver_withheld(self, job: Job) -> None:
        """No image anywhere: the public status says it was withheld; the requester alone
        learns what happened and what to try (ephemeral while the token lives, then a DM)."""
        await self._final_text(job, WITHHELD_PUBLIC, notify=False)
        if await self._tell_privately(job, withheld_notice(job)):
            return
        # Neither ephemeral nor DM reached them: a public note that pings them, no details.
        await self._channel(job).send(
            content=f"<@{job.user_id}> {job_summary(job)}\n{WITHHELD_PUBLIC}",
            allowed_mentions=ping(job.user_id),
        )

    async def _tell_privately(self, job: Job, text: str) -> bool:
        if self._token_alive(job):
            try:
                await self._webhook(job).send(text, ephemeral=True)
                return True
            except discord.HTTPException as exc:
                await self._token_failed(job, exc)
                log.info("ephemeral notice for job %d failed (%s); trying a DM", job.id, exc)
        return await self._tell_dm(job, text)

    async def _tell_dm(self, job: Job, text: str) -> bool:
        try:
            dm = await self.client.create_dm(discord.Object(job.user_id))
            await dm.send(text)
            return True
        except discord.HTTPException as exc:
            log.info("could not DM the requester of job %d (%s)", job.id, exc)
            return False
