"""An upscale as its tiles end: the progress message (`tile 3 of 6 done`), the stop when a
tile fails, is cancelled or withheld, and the final job once every tile is done.

A mixin of `bot.cogs.upscale.UpscaleCog`. `UpscaleDelivery` routes the tile jobs' ends
here (they post nothing of their own); `refresh` reads the tiles' states from SQLite each
time, so it is idempotent and goes on where it stopped after a restart. When the last tile
is done the tiles are blended (`tiling.blend`, the same function the CLI uses) and one more
job of mode `UPSCALE` is queued: the worker runs only the safety checker on the whole
picture and stores it, and that job is posted as the result in the upscale's message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import discord

from bot.errors import UserError
from bot.jobs.events import Delivery, KindDelivery
from bot.jobs.service import TOKEN_LIFETIME_S, NewJob
from bot.locks import KeyedLocks
from bot.store.db import ACTIVE_STATES, Job
from bot.store.upscales import Upscale, UpscaleStore
from bot.ui.buttons import CancelUpscale
from bot.upscale import ENDED_TEXT, FINAL_KIND, TILE_KIND, head_text, progress_text
from bot.upscale_files import blend_tiles, remove
from pipeline.request import UPSCALE, InputError

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]


class _AlreadyFinished(Exception):
    """The last tile's end was handled twice: the final job is queued once."""


def _tile_files(tiles: list[Job | None]) -> list[str | None]:
    """A tile's input and picture are only the upscale's: removed once it moved on."""
    return [p for job in tiles if job for p in (job.input_path, job.output_path)]


def cancel_view(upscale_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelUpscale(upscale_id))
    return view


class UpscaleProgress:
    """Mixin of `UpscaleCog`: what happens as an upscale's tiles end."""

    bot: ImgBot
    store: UpscaleStore
    _intake: asyncio.Lock
    _locks: KeyedLocks

    @property
    def data_dir(self) -> Path:
        return self.bot.settings.data_dir

    async def refresh_of(self, job: Job) -> None:
        """A tile ended (`UpscaleDelivery`)."""
        async with self._intake:  # the upscale's message is set once this is free
            upscale_id = await self.store.of_tile(job.id)
        if upscale_id is not None:
            await self.refresh(upscale_id)

    async def refresh(self, upscale_id: int, *, ended_too: bool = False) -> None:
        """Move the upscale on from its tiles' states: idempotent, one at a time.
        `ended_too`: an upscale that already stopped is drawn again (its message was
        posted after a Cancel clicked at once had stopped it)."""
        async with self._locks.hold(upscale_id):
            up = await self.store.get(upscale_id)
            if up is None or up.state != "tiles":
                if up is not None and ended_too and up.state in ENDED_TEXT:
                    tiles = await self.store.tiles(upscale_id)
                    await self._edit(up, f"{self._head(up, tiles)}\n{ENDED_TEXT[up.state]}", None)
                return
            tiles = await self.store.tiles(upscale_id)
            states = [job.state if job is not None else "deleted" for job in tiles]
            if "withheld" in states:
                await self._stop(up, tiles, "withheld")
            elif "cancelled" in states:
                await self._stop(up, tiles, "cancelled")
            elif any(s not in ACTIVE_STATES and s != "done" for s in states):
                await self._stop(up, tiles, "failed")
            elif all(s == "done" for s in states):
                await self._finish(up, tiles)
            else:
                done = states.count("done")
                text = progress_text(self._head(up, tiles), done, len(tiles))
                await self._edit(up, text, cancel_view(up.id))

    def _head(self, up: Upscale, tiles: list[Job | None]) -> str:
        first = next((job for job in tiles if job is not None), None)
        strength, prompt = (first.strength, first.prompt) if first else (0.0, "")
        return head_text(up.id, up.width, up.height, strength, prompt)

    async def _stop(self, up: Upscale, tiles: list[Job | None], state: str) -> None:
        """A tile failed, was cancelled or withheld: the other tiles are cancelled, the
        units refunded (a withheld picture's stay counted, as for any job), and the
        message says so in plain words."""
        if not await self.store.end(up.id, state):
            return
        for job in tiles:
            if job is not None and job.state in ACTIVE_STATES:
                try:
                    await self.bot.jobs.cancel(job.id, up.user_id, True)
                except UserError:
                    log.exception("upscale %d: cancelling tile job %d failed", up.id, job.id)
        if state != "withheld":
            await self.store.refund_tiles(up.id)
        await asyncio.to_thread(remove, self.data_dir, _tile_files(tiles))
        await self._edit(up, f"{self._head(up, tiles)}\n{ENDED_TEXT[state]}", None)

    async def _finish(self, up: Upscale, tiles: list[Job | None]) -> None:
        """Every tile is done: blend them and queue the safety check of the whole picture,
        which is posted as the result (in the upscale's message)."""
        done = [job for job in tiles if job is not None]
        head = done[0]
        try:
            outputs = [str(job.output_path) for job in done]
            size = (up.width, up.height)
            blended = await asyncio.to_thread(blend_tiles, self.data_dir, outputs, up.boxes, size)
        except (OSError, ValueError) as exc:  # a tile's picture is gone or unreadable
            log.error("upscale %d: blending its tiles failed (%s)", up.id, exc)
            await self._stop(up, tiles, "failed")
            return
        final = NewJob(
            guild_id=up.guild_id, channel_id=up.channel_id, user_id=up.user_id,
            prompt=head.prompt, negative_prompt=head.negative_prompt, strength=head.strength,
            steps=head.steps, guidance=head.guidance, input_path=blended,
            input_width=up.width, input_height=up.height, seed=up.seed, kind=FINAL_KIND,
            mode=UPSCALE, parent_id=up.source_job_id, application_id=up.application_id,
            interaction_token=up.interaction_token, interaction_created_at=up.token_from,
            channel_public=bool(head.channel_public), channel_nsfw=bool(head.channel_nsfw),
            style=head.style, counted=False, model=head.model,
        )  # fmt: skip

        async def write(db: aiosqlite.Connection, jobs: list[Job]) -> str:
            if not await self.store.finish_in(db, up.id, jobs[0].id):
                raise _AlreadyFinished
            return f"upscale:{up.id}"

        try:
            # Admitted with its tiles: the caps do not apply again, and it uses no unit.
            [job] = await self.bot.jobs.submit_many([final], group=write, enforce_caps=False)
        except _AlreadyFinished:
            await self.bot.actions.discard_unused(blended)
            return
        except (InputError, UserError) as exc:  # e.g. a word blocked since it was asked
            log.warning("upscale %d: its final job was refused (%s)", up.id, exc)
            await self.bot.actions.discard_unused(blended)
            await self._stop(up, tiles, "failed")
            return
        await asyncio.to_thread(remove, self.data_dir, _tile_files(tiles))
        await self.bot.jobs.attach_status_message(job.id, up.message_id)

    async def _edit(self, up: Upscale, content: str, view: discord.ui.View | None) -> None:
        """Through the interaction's webhook while its token lives, else the channel."""
        if up.message_id is None:
            return
        alive = (up.token_from or 0) + TOKEN_LIFETIME_S > time.time()
        if up.interaction_token and up.application_id and alive:
            hook = discord.Webhook.partial(up.application_id, up.interaction_token, client=self.bot)
            hook.type = discord.WebhookType.application
            try:
                await hook.edit_message(up.message_id, content=content, view=view)
                return
            except discord.HTTPException as exc:
                log.info("upscale %d: edit through its token failed (%s)", up.id, exc)
        channel = self.bot.get_partial_messageable(up.channel_id, guild_id=up.guild_id)
        try:
            await channel.get_partial_message(up.message_id).edit(content=content, view=view)
        except discord.HTTPException as exc:
            log.warning("upscale %d: could not update its message (%s)", up.id, exc.status)

    async def cancel(self, interaction: Interaction, upscale_id: int) -> None:
        """Cancel under the progress: every tile that has not ended; refunded."""
        up = await self.store.get(upscale_id)
        if up is None or up.guild_id != interaction.guild_id:
            await interaction.response.send_message(
                "❌ This upscale is no longer known to the bot.", ephemeral=True
            )
            return
        if up.user_id != interaction.user.id and not interaction.permissions.manage_messages:
            await interaction.response.send_message(
                "❌ Only the person who asked for this upscale, or someone with Manage "
                "Messages, can cancel it.",
                ephemeral=True,
            )
            return
        if up.state == "checking" and up.final_job_id is not None:
            text = await self.bot.jobs.cancel(up.final_job_id, up.user_id, True)
            await interaction.response.send_message(text, ephemeral=True)
            return
        async with self._locks.hold(upscale_id):
            fresh = await self.store.get(upscale_id)
            if fresh is not None and fresh.state == "tiles":
                await self._stop(fresh, await self.store.tiles(upscale_id), "cancelled")
        await interaction.response.send_message(
            "✖️ Upscale cancelled; it did not count against your quota.", ephemeral=True
        )

    async def refund_final(self, job: Job) -> None:
        """The final job failed or was cancelled: the upscale made no picture, so its
        tiles' units come back."""
        up = await self.store.of_final(job.id)
        if up is not None:
            await self.store.refund_tiles(up.id)


class UpscaleDelivery(KindDelivery):
    """Tiles post nothing (their end redraws the upscale's message); the final job is an
    ordinary result, and one that fails or is cancelled refunds the tiles first."""

    def __init__(self, inner: Delivery, cog: UpscaleProgress) -> None:
        super().__init__(inner, TILE_KIND, cog.refresh_of)
        self.cog = cog

    async def deliver_failure(self, job: Job, message: str) -> None:
        if job.kind == FINAL_KIND:
            await self.cog.refund_final(job)
        await super().deliver_failure(job, message)

    async def deliver_cancelled(self, job: Job) -> None:
        if job.kind == FINAL_KIND:
            await self.cog.refund_final(job)
        await super().deliver_cancelled(job)
