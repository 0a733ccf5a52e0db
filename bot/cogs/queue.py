"""/queue: what runs now in this server, and where your jobs stand.

A running job's prompt shows only where the gallery would show it (`bot.visibility`): a job
from a private or age-restricted channel is "a job in another channel" everywhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.ui.render import job_summary, ordinal, progress_bar
from bot.visibility import shown_from, viewer_channels

if TYPE_CHECKING:
    from bot.app import ImgBot


class QueueCog(commands.Cog):
    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="This server's image queue")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction[Any]) -> None:
        jobs = self.bot.jobs
        guild_id = interaction.guild_id
        lines: list[str] = []
        here = viewer_channels(interaction)
        running = [q for q in jobs.queue.running if q.guild_id == guild_id]
        for queued in running:
            job = await self.bot.store.get_job(int(queued.job_id))
            if job is None:
                continue
            step, total = jobs.progress_of(job.id)
            bar = f"`{progress_bar(step, total, 10)}`"
            if job.user_id == interaction.user.id:
                lines.append(f"🎨 Now: {job_summary(job)} (yours) {bar}")
            elif shown_from(job.channel_id, bool(job.channel_public), bool(job.channel_nsfw), here):
                lines.append(f"🎨 Now: {job_summary(job)} {bar}")
            else:  # a private or age-restricted channel's prompt stays there
                lines.append(f"🎨 Now: a job in another channel {bar}")
        if not running:
            lines.append("🎨 Nothing of this server is running right now.")
        waiting = jobs.queue.guild_waiting(guild_id or 0)
        lines.append(f"⏳ Waiting in this server: {len(waiting)}")
        for place, queued in enumerate(waiting, start=1):
            if queued.user_id == interaction.user.id:
                job = await self.bot.store.get_job(int(queued.job_id))
                if job is not None:
                    lines.append(f"• {ordinal(place)}: {job_summary(job)}")
        online = getattr(jobs.worker, "workers_online", None)
        if online is not None:
            lines.append(f"🖥️ Image workers online: {online}")
        catalogue = jobs.models.catalogue
        if len(catalogue.models) > 1:  # which models can run now
            served = jobs.models_online()
            names = [f"`{m}`" for m in catalogue.models if m in served]
            lines.append(f"🧩 Models online: {', '.join(names) or 'none'}")
        refused = getattr(jobs.worker, "refusals", None)  # settings that differ from the bot's
        if refused:
            why = "; ".join(sorted({short for short, _ in refused.values()}))
            lines.append(f"⚠️ Image workers refused: {len(refused)} ({why})")
        others = len(jobs.queue) - len(waiting)
        if others:
            lines.append(
                f"Other servers have {others} waiting; servers take turns, one image each."
            )
        await interaction.response.send_message("\n".join(lines), ephemeral=True)


async def setup(bot: ImgBot) -> None:
    await bot.add_cog(QueueCog(bot))
