"""Every public message showing a deleted picture is deleted, or edited to drop it.

A picture is shown by its result message (`jobs.result_message_id`), by its gallery-channel
copy (the gallery cog), and by the messages in `picture_messages`: "Use" and "Open…" copies,
albums and comparisons. When the picture's job is deleted (Delete, `/gallery remove`) or
forgotten (forget-me), a message showing that picture alone is deleted, and an album or a
comparison is re-rendered by the cog that owns it, so its other pictures stay.

A copy posted while its picture is being deleted checks, once recorded, whether the
deletion came first (`record_copy`, `deleted_among`), so no copy outlives its picture.

Ephemeral messages cannot be reached: Discord lets a bot edit them only through their
interaction token, for 15 minutes, so they are not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import discord

from bot.forget import Forgotten
from bot.inpaint_masks import mask_path_for
from bot.store.db import Job
from bot.store.picture_messages import Kind, PictureMessages
from pipeline.request import structure_map_path

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

RESULT_KIND: dict[str, Kind] = {"series": "album", "compare": "comparison", "vary": "comparison"}
"""What a job's `result_message_id` is, by job kind: an album, a comparison (Vary's three
variations are drawn as one), else its own."""


@runtime_checkable
class Rerenders(Protocol):
    """A cog that owns messages of one shared kind and can draw one again from SQLite."""

    picture_kind: Kind

    async def rerender(self, message_id: int) -> None: ...


async def delete_message(bot: ImgBot, guild_id: int, channel_id: int, message_id: int) -> bool:
    """True if this call deleted it; gone already or undeletable: False."""
    channel = bot.get_partial_messageable(channel_id, guild_id=guild_id)
    try:
        await channel.get_partial_message(message_id).delete()
    except discord.NotFound:
        return False
    except discord.HTTPException as exc:
        log.warning("could not delete message %d: %s", message_id, exc)
        return False
    return True


async def rerender(bot: ImgBot, kind: Kind, message_id: int) -> None:
    """Draw an album or a comparison again (the cog reads who is still there)."""
    for cog in bot.cogs.values():
        if isinstance(cog, Rerenders) and cog.picture_kind == kind:
            await cog.rerender(message_id)
            return
    log.warning("no cog draws %s messages; message %d left as it is", kind, message_id)


async def deleted_among(bot: ImgBot, job_ids: list[int]) -> bool:
    """True if one of these jobs was deleted (or forgotten) meanwhile. A message is
    recorded before this is asked, and a deletion marks its job before it reads the
    records, so either the deletion finds the message or this finds the deletion."""
    for job_id in job_ids:
        job = await bot.store.get_job(job_id)
        if job is None or job.state == "deleted":
            return True
    return False


async def record_copy(
    bot: ImgBot, guild_id: int, channel_id: int, message_id: int, job_id: int
) -> None:
    """Record a "Use" or "Open…" copy just posted; if its picture was deleted while it
    uploaded, delete the copy here."""
    shown = PictureMessages(bot.store)
    await shown.record(guild_id, channel_id, message_id, [job_id], "single")
    if await deleted_among(bot, [job_id]):
        log.info("job %d was deleted while its copy uploaded; deleting the copy", job_id)
        await delete_message(bot, guild_id, channel_id, message_id)
        await shown.forget_message(message_id)


async def remove_copies(bot: ImgBot, job: Job) -> None:
    """The `deleted` hook: every public message showing `job`'s picture goes or is edited."""
    shown = PictureMessages(bot.store)
    targets: dict[tuple[int, int], Kind] = {
        (m.channel_id, m.message_id): m.kind for m in await shown.of_job(job.id)
    }
    if job.result_message_id:
        kind = RESULT_KIND.get(job.kind, "single")
        targets.setdefault((job.channel_id, job.result_message_id), kind)
    for (channel_id, message_id), kind in targets.items():
        if kind == "single":
            await delete_message(bot, job.guild_id, channel_id, message_id)
            await shown.forget_message(message_id)
        else:
            await rerender(bot, kind, message_id)


def _unlink(data_dir: Path, paths: list[str]) -> list[str]:
    """Remove files under DATA_DIR (blocking); returns those this call removed."""
    removed = []
    for rel in paths:
        try:
            (data_dir / rel).unlink()
            removed.append(rel)
            # a structure result's map thumbnail goes with it (made from the member's input)
            (data_dir / structure_map_path(rel)).unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete %s: %s", rel, exc)
    return removed


async def remove_forgotten(bot: ImgBot, guild_id: int, gone: Forgotten) -> None:
    """After forget-me's commit: the member's files and messages go, and other members'
    albums and comparisons are drawn without their pictures; the lists shrink to what
    existed."""
    data_dir = bot.settings.data_dir
    gone.pictures = await asyncio.to_thread(_unlink, data_dir, gone.pictures)
    masks = [mask_path_for(rel) for rel in gone.inputs]  # inpaint masks beside inputs
    gone.inputs = await asyncio.to_thread(_unlink, data_dir, gone.inputs)
    await asyncio.to_thread(_unlink, data_dir, masks)
    gone.messages = [m for m in gone.messages if await delete_message(bot, guild_id, *m)]
    gone.copies = [m for m in gone.copies if await delete_message(bot, guild_id, *m)]
    for kind, message_id in gone.redraw:  # their rows are gone: drawn without them
        await rerender(bot, kind, message_id)
