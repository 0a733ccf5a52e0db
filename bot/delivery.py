"""Where a job's status and result appear on Discord.

While the interaction token lives (15 min), the job's status message is edited through the
interaction webhook. A result for a variant or reroll is posted as a reply to the message it
came from. Once the token has expired, the result goes to the channel as a normal message
that mentions the requester.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord

from bot.buttons import cancel_view, result_view
from bot.render import job_summary, result_embed
from bot.store import Job, Store

log = logging.getLogger(__name__)


class DiscordDelivery:
    def __init__(self, client: discord.Client, store: Store, data_dir: Any) -> None:
        self.client = client
        self.store = store
        self.data_dir = data_dir

    def _webhook(self, job: Job) -> discord.Webhook:
        assert job.application_id and job.interaction_token
        return discord.Webhook.partial(
            job.application_id, job.interaction_token, client=self.client
        )

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def _mention(self, job: Job) -> discord.AllowedMentions:
        return discord.AllowedMentions(
            users=[discord.Object(job.user_id)], roles=False, everyone=False
        )

    async def show_status(self, job: Job, text: str, cancellable: bool) -> None:
        if not job.status_message_id or not job.token_valid(time.time()):
            return
        view = cancel_view(job.id) if cancellable else None
        await self._webhook(job).edit_message(
            job.status_message_id, content=f"{job_summary(job)}\n{text}", view=view
        )

    async def deliver_result(self, job: Job) -> None:
        path = self.data_dir / (job.output_path or "")

        payload: dict[str, Any] = {
            "embed": result_embed(job),
            "view": result_view(job.id, job.strength),
            "allowed_mentions": self._mention(job),
        }

        message_id: int | None = None
        token_ok = job.token_valid(time.time()) and job.status_message_id
        if token_ok and not job.reply_to_message_id:
            try:
                msg = await self._webhook(job).edit_message(
                    job.status_message_id,  # type: ignore[arg-type]
                    content=f"<@{job.user_id}>",
                    attachments=[discord.File(path, filename=f"img2img-{job.id}.png")],
                    **payload,
                )
                message_id = msg.id
            except discord.HTTPException as exc:
                log.warning("editing job %d's message failed (%s); posting to channel", job.id, exc)
        if message_id is None:
            reference = None
            if job.reply_to_message_id:
                reference = discord.MessageReference(
                    message_id=job.reply_to_message_id,
                    channel_id=job.channel_id,
                    fail_if_not_exists=False,
                )
            content = f"<@{job.user_id}>" if reference else f"<@{job.user_id}> your image is ready."
            msg = await self._channel(job).send(
                content=content,
                file=discord.File(path, filename=f"img2img-{job.id}.png"),
                reference=reference,  # type: ignore[arg-type]
                **payload,
            )
            message_id = msg.id
            if token_ok:
                await self._delete_status(job)
        await self.store.update_job(job.id, result_message_id=message_id)

    async def _delete_status(self, job: Job) -> None:
        try:
            await self._webhook(job).delete_message(job.status_message_id)  # type: ignore[arg-type]
        except discord.HTTPException:
            log.info("could not delete status message of job %d", job.id)

    async def _final_text(self, job: Job, text: str) -> None:
        if job.status_message_id and job.token_valid(time.time()):
            try:
                await self._webhook(job).edit_message(
                    job.status_message_id, content=f"{job_summary(job)}\n{text}", view=None
                )
                return
            except discord.HTTPException:
                log.info("editing job %d's status failed; posting to channel", job.id)
        await self._channel(job).send(
            content=f"<@{job.user_id}> {job_summary(job)}\n{text}",
            allowed_mentions=self._mention(job),
        )

    async def deliver_failure(self, job: Job, message: str) -> None:
        await self._final_text(job, f"❌ {message}")

    async def deliver_cancelled(self, job: Job) -> None:
        await self._final_text(job, "✖️ Cancelled.")
