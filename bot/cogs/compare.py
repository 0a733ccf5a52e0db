"""Compare: one result at strength s − 0.15, s and s + 0.15, side by side, then `Use` one.

A click queues the missing strengths as jobs of kind `compare` (same input, prompt, seed;
each counts against quota) and posts one message for the comparison; that message is the
jobs' status message, which is all that ties them together, so a comparison still finishes
after a restart. The s image is the original result's own PNG, reused. A `KindDelivery`
wraps the bot's delivery: a compare job's end re-renders the comparison instead of posting
a result of its own. `Use 0.35` / `Use 0.50` / `Use 0.65` post that image as a normal result
with the full set of buttons, with no new GPU work.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.actions import INPUT_GONE_TEXT
from bot.copies import deleted_among, record_copy
from bot.errors import UserError
from bot.jobs.events import KindDelivery
from bot.locks import KeyedLocks
from bot.store.db import ACTIVE_STATES, Job
from bot.store.picture_messages import Kind, PictureMessages
from bot.ui.buttons import result_view, use_view
from bot.ui.pictures import picture_file, upload_limit
from bot.ui.render import result_embed
from bot.variants import compare_strengths
from pipeline.request import InputError

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]
KIND = "compare"
VARY = "vary"
"""Vary (`bot.cogs.imagine`): a text-to-image result at three new strengths; drawn here
like a comparison, without the picture it was made from (that one is a base, not a peer)."""
GONE_TEXT = "This image is no longer stored, so it cannot be compared or posted again."
ENDED_NOTES = {
    "withheld": "🛡️ withheld by the safety filter",
    "cancelled": "✖️ cancelled",
    "deleted": "🗑️ deleted",
    "done": "no longer stored",
}


def comparison_text(parent: Job, strengths: list[float], notes: dict[float, str]) -> str:
    """The comparison's text: the strengths in order, what is still coming or went wrong."""
    shown = " · ".join(f"{s:.2f}" for s in strengths)
    lines = [f"⚖️ #{parent.id} at strengths {shown} (seed {parent.seed}), left to right."]
    if len(strengths) < 3:
        lines.append(
            f"Strength {parent.strength:.2f} is at the end of the range, so two of the three "
            "strengths coincide: showing two."
        )
    lines += [f"{s:.2f}: {notes[s]}" for s in strengths if s in notes]
    return "\n".join(lines)


def orphan_text(siblings: list[Job], notes: dict[float, str]) -> str:
    """The comparison's text once the picture it was made from is forgotten (forget-me)."""
    strengths = [s.strength for s in siblings]
    shown = " · ".join(f"{s:.2f}" for s in strengths)
    lines = [
        f"⚖️ Strengths {shown} (seed {siblings[0].seed}), left to right. The picture "
        "they were compared with was deleted by its owner."
    ]
    lines += [f"{s:.2f}: {notes[s]}" for s in strengths if s in notes]
    return "\n".join(lines)


def vary_text(siblings: list[Job], notes: dict[float, str]) -> str:
    """Vary's text: the base picture it was made from and the strengths, left to right."""
    shown = " · ".join(f"{s.strength:.2f}" for s in siblings)
    lines = [
        f"🔀 Variations of #{siblings[0].parent_id} at strengths {shown} "
        f"(seed {siblings[0].seed}), left to right. **Use** one to go on from it."
    ]
    lines += [f"{s.strength:.2f}: {notes[s.strength]}" for s in siblings if s.strength in notes]
    return "\n".join(lines)


class CompareCog(commands.Cog):
    picture_kind: Kind = "comparison"  # `bot.copies` asks this cog to redraw comparisons

    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot
        self.shown = PictureMessages(bot.store)
        self._locks = KeyedLocks()

    # -- the click ----------------------------------------------------------------------
    async def compare(self, interaction: Interaction, job_id: int) -> None:
        queued: list[Job] = []
        try:
            parent = await self.bot.actions.job_here(interaction, job_id, deleted_ok=False)
            if not self.bot.actions.stored(parent.output_path):
                raise UserError(GONE_TEXT)
            if not self.bot.actions.stored(parent.input_path):
                raise UserError(INPUT_GONE_TEXT)
            await self.bot.actions.precheck(interaction)
            strengths = compare_strengths(parent.strength)
            for strength in strengths:
                if strength != parent.strength:
                    new = self.bot.actions.child_job(
                        interaction, parent, strength=strength, seed=parent.seed, kind=KIND
                    )
                    queued.append(await self.bot.jobs.submit(new))
        except (InputError, UserError) as exc:
            for job in queued:  # all or nothing: a refused second image cancels the first
                await self.bot.jobs.cancel(job.id, job.user_id, True)
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        message_id: int | None = None
        try:
            await interaction.response.send_message(
                comparison_text(parent, strengths, {s.strength: "⏳ coming…" for s in queued})
            )
            message_id = (await interaction.original_response()).id
        finally:
            for job in queued:
                await self.bot.jobs.attach_status_message(job.id, message_id)

    # -- the comparison message ---------------------------------------------------------
    async def refresh(self, job: Job) -> None:
        """A compare job ended: re-render its comparison once none of its jobs waits."""
        if job.status_message_id:
            await self.rerender(job.status_message_id)

    async def rerender(self, message_id: int) -> None:
        """Draw the comparison `message_id` from the database (after a job ended or one of
        its pictures was deleted): idempotent, one edit at a time per comparison."""
        async with self._locks.hold(message_id):
            while shown := await self._draw(message_id):
                if not await deleted_among(self.bot, shown):
                    break  # else a picture was deleted while it uploaded: again without it

    async def _draw(self, message_id: int) -> list[int]:
        """Render once; the jobs whose pictures it shows ([]: not drawn)."""
        siblings = await self._siblings(message_id)
        if not siblings or any(s.state in ACTIVE_STATES for s in siblings):
            return []
        parent_id = siblings[0].parent_id
        vary = siblings[0].kind == VARY
        parent = await self.bot.store.get_job(parent_id) if parent_id and not vary else None
        return await self._render(parent, siblings, message_id)

    async def _render(self, parent: Job | None, siblings: list[Job], message_id: int) -> list[int]:
        """Each picture still there, in strength order; a note for each one that is not.
        `parent` None: the original was forgotten, so only the new strengths show."""
        by_strength = {s.strength: s for s in siblings}
        if parent is not None:
            by_strength.setdefault(parent.strength, parent)
            strengths = compare_strengths(parent.strength)
        else:
            strengths = sorted(by_strength)
        files, choices, notes, shown = [], [], {}, []
        for strength in strengths:
            job = by_strength.get(strength)
            if job is None:
                continue
            if job.state == "done" and self.bot.actions.stored(job.output_path):
                path = self.bot.settings.data_dir / str(job.output_path)
                name = f"img2img-{job.id}-strength-{strength:.2f}.png"
                limit = upload_limit(guild=self.bot.get_guild(job.guild_id))
                files.append((await picture_file(path, name, job, limit=limit))[0])
                choices.append((job.id, strength))
                shown.append(job.id)
            else:
                notes[strength] = ENDED_NOTES.get(job.state, "❌ could not be made")
        if parent is not None:
            content = comparison_text(parent, strengths, notes)
        elif siblings[0].kind == VARY:
            content = vary_text(siblings, notes)
        else:
            content = orphan_text(siblings, notes)
        view = use_view(choices)
        sent = await self._edit(siblings[0], message_id, content, files, view)
        if not sent:
            return []
        first = siblings[0]
        await self.shown.record(first.guild_id, first.channel_id, message_id, shown, "comparison")
        for sibling in siblings:
            if sibling.state == "done" and sibling.result_message_id is None:
                await self.bot.store.update_job(sibling.id, result_message_id=message_id)
        return shown

    async def _edit(
        self,
        job: Job,
        message_id: int,
        content: str,
        files: list[discord.File],
        view: discord.ui.View,
    ) -> bool:
        """Through the interaction's webhook while its token lives, else the channel."""
        if job.token_valid(time.time()) and job.application_id and job.interaction_token:
            hook = discord.Webhook.partial(
                job.application_id, job.interaction_token, client=self.bot
            )
            hook.type = discord.WebhookType.application
            try:
                await hook.edit_message(message_id, content=content, attachments=files, view=view)
                return True
            except discord.HTTPException as exc:
                log.info("editing comparison %d through its token failed (%s)", message_id, exc)
                for f in files:
                    f.reset()
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            await channel.get_partial_message(message_id).edit(
                content=content, attachments=files, view=view
            )
            return True
        except discord.HTTPException as exc:
            log.warning("could not update comparison %d (%s)", message_id, exc)
            return False

    # -- Use 0.35 / 0.50 / 0.65 ---------------------------------------------------------
    async def use(self, interaction: Interaction, job_id: int) -> None:
        """Post a compared image as a normal result (no new job, no quota)."""
        try:
            job = await self.bot.actions.job_here(interaction, job_id, deleted_ok=False)
            if job.state != "done" or not self.bot.actions.stored(job.output_path):
                raise UserError(GONE_TEXT)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        path = self.bot.settings.data_dir / str(job.output_path)
        file, fmt = await picture_file(
            path, f"img2img-{job.id}.png", job, limit=upload_limit(interaction)
        )
        await interaction.response.send_message(
            embed=result_embed(job, file_format=fmt, catalogue=self.bot.settings.catalogue),
            file=file,
            view=result_view(job.id, job.strength),
        )
        copy = await interaction.original_response()  # recorded: deleted with the picture
        channel_id = interaction.channel_id or job.channel_id
        await record_copy(self.bot, job.guild_id, channel_id, copy.id, job.id)

    # -- helpers ------------------------------------------------------------------------
    async def _siblings(self, message_id: int) -> list[Job]:
        """The compare (or vary) jobs of one comparison: they share its message (their
        status)."""
        cursor = await self.bot.store.db.execute(
            "SELECT * FROM jobs WHERE kind IN (?, ?) AND status_message_id=? ORDER BY strength",
            (KIND, VARY, message_id),
        )
        return [Job.from_row(row) for row in await cursor.fetchall()]


async def setup_compare(bot: ImgBot) -> None:
    """Add Compare and Use, and the delivery wrapper for compare jobs."""
    cog = CompareCog(bot)
    await bot.add_cog(cog)
    bot.jobs.delivery = KindDelivery(bot.jobs.delivery, KIND, cog.refresh)
