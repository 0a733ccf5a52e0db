"""/series: up to ten images with one prompt, strength, steps and seed, as one album.

All or nothing at the door: every image is checked (bad ones named by position) and the
whole series must fit the member's and the server's quota and the queue caps before any
job is queued. Each image is its own job (gallery, quota); the jobs are marked as one
series in the fair queue, so they are one entry against MAX_JOBS_PER_USER and the member's
turns interleave with other members'. A `KindDelivery` wraps the bot's delivery: results of
series jobs fill the album message instead of each posting a message of its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import aiosqlite
import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.generate import STRUCTURE_CHOICES, compose, served_structures
from bot.cogs.models import model_autocomplete
from bot.cogs.quota import member_role_ids
from bot.cogs.styles import style_autocomplete
from bot.copies import deleted_among, record_copy
from bot.errors import UserError
from bot.jobs.events import KindDelivery
from bot.jobs.scheduler import QueueFull
from bot.jobs.service import NewJob
from bot.locks import KeyedLocks
from bot.series import (
    MAX_IMAGES,
    Item,
    album_text,
    attachment_name,
    bad_images_text,
    quota_refusal,
    reading_text,
)
from bot.store.db import Job
from bot.store.picture_messages import Kind, PictureMessages
from bot.store.quotas import QuotaStore
from bot.store.series import SeriesStore
from bot.styles import structure_for, structure_skipped
from bot.ui.buttons import result_view
from bot.ui.pictures import picture_file, upload_limit
from bot.ui.render import result_embed
from bot.ui.series import CancelSeries, OpenSelect
from pipeline.prepare import check_declared_size
from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_STRENGTH,
    MAX_STRUCTURE_WEIGHT,
    MIN_STRENGTH,
    MIN_STRUCTURE_WEIGHT,
    InputError,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
    check_structure,
    plan_steps,
)

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]
Image = discord.Attachment | None


class SeriesCog(commands.Cog):
    picture_kind: Kind = "album"  # `bot.copies` asks this cog to redraw its albums

    def __init__(self, bot: ImgBot, quotas: QuotaStore, series: SeriesStore) -> None:
        self.bot = bot
        self.quotas = quotas
        self.series = series
        self.shown = PictureMessages(bot.store)
        self._intake = asyncio.Lock()  # a series' rows are written before its album updates
        self._album_locks = KeyedLocks()

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """The queue is rebuilt from SQLite at start without knowing series: mark them
        again, so a restored series stays one entry against the per-user cap."""
        for job_id, series_id in await self.series.active_jobs():
            self.bot.jobs.queue.set_group(str(job_id), f"series:{series_id}")

    @app_commands.command(name="series", description="Up to 10 images in one consistent look")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="One prompt for every image",
        image1="PNG, JPEG or WebP; add image2 … image10 for more",
        strength="0.05 keeps your images, 1.0 ignores them; default: the style's, else 0.5",
        negative_prompt="What to avoid",
        seed="One seed for all; default: one random seed shared by all",
        steps="Denoising steps (1–150)",
        style="A saved look (see /style list)",
        model="Which model draws it (see /models); default: the style's, else the server's",
        structure="Keep each input's structure: edges (photos) or lines (sketches, floor plans)",
        structure_weight="How strictly the structure is kept: 0.1 (a hint) to 2.0; default 1.0",
    )
    @app_commands.autocomplete(style=style_autocomplete, model=model_autocomplete)
    @app_commands.choices(structure=STRUCTURE_CHOICES)
    async def series_command(
        self,
        interaction: Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        image1: discord.Attachment,
        image2: Image = None,
        image3: Image = None,
        image4: Image = None,
        image5: Image = None,
        image6: Image = None,
        image7: Image = None,
        image8: Image = None,
        image9: Image = None,
        image10: Image = None,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        structure: str | None = None,
        structure_weight: app_commands.Range[
            float, MIN_STRUCTURE_WEIGHT, MAX_STRUCTURE_WEIGHT
        ] = 1.0,
    ) -> None:
        given = [image1, image2, image3, image4, image5, image6, image7, image8, image9, image10]
        images = [(pos, a) for pos, a in enumerate(given, start=1) if a is not None]
        assert len(images) <= MAX_IMAGES
        await self._series(
            interaction, prompt, images, strength, negative_prompt, seed, steps, style, model,
            structure=structure, structure_weight=structure_weight,
        )  # fmt: skip

    async def _series(
        self,
        interaction: Interaction,
        prompt: str,
        images: list[tuple[int, discord.Attachment]],
        strength: float | None,
        negative_prompt: str | None,
        seed: int | None,
        steps: int | None,
        style: str | None,
        model: str | None = None,
        *,
        structure: str | None = None,
        structure_weight: float = 1.0,
    ) -> None:
        assert interaction.guild_id is not None
        guild, user = interaction.guild_id, interaction.user.id
        settings = self.bot.settings
        models = self.bot.jobs.models
        try:
            composed = await compose(
                self.bot, interaction, prompt, negative_prompt, style, strength, model
            )
            entry = models.catalogue.model(composed.model)
            check_prompt(composed.negative_prompt, field="negative prompt", required=False)
            check_strength(composed.strength)
            check_seed(seed)
            steps = check_steps(steps) or models.steps(entry)
            plan_steps(steps, composed.strength)
            served = served_structures(self.bot, composed.model)
            chosen = structure_for(structure, composed, served)
            skipped = structure_skipped(structure, composed, served)
            control = check_structure(chosen, structure_weight)
            self.bot.actions.check_structure_served(control, composed.model)
            problems = []
            for pos, att in images:
                try:
                    check_declared_size(att.size, max_bytes=settings.max_input_bytes)
                except InputError as exc:
                    problems.append((pos, str(exc)))
            if problems:
                raise UserError(bad_images_text(problems))
            await self.bot.actions.precheck(interaction)
            await self._check_room(interaction, len(images))
        except (InputError, UserError) as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        stored: list[tuple[int, str, str, int, int]] = []  # position, label, path, w, h
        try:
            await interaction.edit_original_response(content=reading_text(len(images)))
            problems = []
            for pos, att in images:
                try:  # through the bounded decode slots, waiting for one when all are busy
                    rel, width, height = await self.bot.actions.decode_and_store(att, wait=True)
                    stored.append((pos, att.filename, rel, width, height))
                except InputError as exc:
                    problems.append((pos, str(exc)))
                except discord.HTTPException as exc:
                    problems.append(
                        (pos, f"could not be downloaded ({exc.status}); upload it again")
                    )
            if problems:
                raise UserError(bad_images_text(problems))
            await self._check_room(interaction, len(images))
            shared_seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
            news = [
                NewJob(
                    guild_id=guild,
                    channel_id=interaction.channel_id or 0,
                    user_id=user,
                    prompt=composed.prompt,
                    negative_prompt=composed.negative_prompt,
                    strength=composed.strength,
                    seed=shared_seed,
                    steps=steps,
                    guidance=models.guidance(entry),
                    input_path=rel,
                    input_width=width,
                    input_height=height,
                    kind="series",
                    role_ids=member_role_ids(interaction),
                    style=composed.style,
                    model=entry.name,
                    structure=control.kind if control else None,
                    structure_weight=control.weight if control else 1.0,
                    structure_skipped=skipped,
                )
                for _, _, rel, width, height in stored
            ]
            async with self._intake:
                series_id = await self._submit(interaction, news, stored, shared_seed)
                # The private answer first: after a defer, the first follow-up would
                # become the (private) original instead of a public album.
                await interaction.edit_original_response(
                    content=f"✅ Queued a series of {len(news)} images (seed {shared_seed}). "
                    "The album below fills in as they finish."
                )
                message = await interaction.followup.send(
                    content=f"🖼️ Series of {len(news)} queued…", wait=True
                )
                await self.series.set_message(series_id, message.id)
        except UserError as exc:
            for _, _, rel, _, _ in stored:
                await self.bot.actions.discard_unused(rel)
            await interaction.edit_original_response(content=f"❌ {exc}")
            return
        await self.refresh(series_id)

    async def _check_room(self, interaction: Interaction, size: int) -> None:
        """The whole series must fit the queue caps and both quotas."""
        assert interaction.guild_id is not None
        guild, user = interaction.guild_id, interaction.user.id
        try:
            self.bot.jobs.queue.check_caps(guild, user, size=size, group="new")
        except QueueFull as exc:
            raise UserError(str(exc)) from None
        state = await self.quotas.state(guild, user, member_role_ids(interaction), time.time())
        refusal = quota_refusal(size, state.user.remaining, state.guild.remaining)
        if refusal:
            raise UserError(refusal)

    async def _submit(
        self,
        interaction: Interaction,
        news: list[NewJob],
        stored: list[tuple[int, str, str, int, int]],
        seed: int,
    ) -> int:
        """Queue every job and write the series in one transaction: all or none."""
        first = news[0]
        made: list[int] = []

        async def write_series(db: aiosqlite.Connection, jobs: list[Job]) -> str:
            items = [
                (pos, job.id, label) for job, (pos, label, *_) in zip(jobs, stored, strict=True)
            ]
            made.append(
                await self.series.create_in(
                    db, first.guild_id, first.channel_id, first.user_id, seed, items
                )
            )
            return f"series:{made[0]}"

        try:
            await self.bot.jobs.submit_many(news, group=write_series)
        except InputError as exc:
            raise UserError(str(exc)) from None
        return made[0]

    # -- the album ----------------------------------------------------------------------
    async def refresh_of(self, job: Job) -> None:
        async with self._intake:  # the series' rows are complete once this is free
            series_id = await self.series.of_job(job.id)
        if series_id is not None:
            await self.refresh(series_id)

    async def rerender(self, message_id: int) -> None:
        """Draw the album posted as `message_id` again (one of its pictures was deleted)."""
        series_id = await self.series.of_message(message_id)
        if series_id is not None:
            await self.refresh(series_id)

    async def refresh(self, series_id: int) -> None:
        """Re-render the album from the database: idempotent, one edit at a time."""
        async with self._album_locks.hold(series_id):
            while shown := await self._draw(series_id):
                if not await deleted_among(self.bot, shown):
                    break  # else a picture was deleted while it uploaded: again without it

    async def _draw(self, series_id: int) -> list[int]:
        """Render the album once; the jobs whose pictures it shows ([]: not drawn)."""
        series = await self.series.get(series_id)
        if series is None or series.message_id is None:
            return []
        rows = await self.series.items(series_id)
        items = [item for item, _ in rows]
        jobs = [job for _, job in rows if job is not None]
        head = jobs[0] if jobs else None
        text = album_text(
            series.user_id, head.prompt if head else "", head.strength if head else 0.0,
            series.seed, head.style if head else None, items,
        )  # fmt: skip
        files, shown = [], []
        data_dir = self.bot.settings.data_dir
        for item, job in rows:
            if item.has_image and job is not None:
                path = data_dir / (job.output_path or "")
                if path.is_file():
                    limit = upload_limit(guild=self.bot.get_guild(series.guild_id))
                    name = attachment_name(item)
                    files.append((await picture_file(path, name, job, limit=limit))[0])
                    shown.append(job.id)
        view = self._album_view(series_id, rows)
        channel = self.bot.get_partial_messageable(series.channel_id, guild_id=series.guild_id)
        try:
            await channel.get_partial_message(series.message_id).edit(
                content=text, attachments=files, view=view
            )
        except discord.HTTPException as exc:
            log.warning("series %d: album edit failed (%s)", series_id, exc.status)
            return []
        await self.shown.record(
            series.guild_id, series.channel_id, series.message_id, shown, "album"
        )
        for item, job in rows:
            if job is not None and item.state == "done" and job.result_message_id is None:
                await self.bot.store.update_job(job.id, result_message_id=series.message_id)
        return shown

    def _album_view(self, series_id: int, rows: list[tuple[Item, Job | None]]) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        done = [item for item, _ in rows if item.has_image]
        if done:
            options = [
                discord.SelectOption(label=f"{i.position}. {i.label}"[:100], value=str(i.job_id))
                for i in done
            ]
            view.add_item(OpenSelect(series_id, options))
        if any(item.state == "queued" for item, _ in rows):
            view.add_item(CancelSeries(series_id))
        return view

    async def open(self, interaction: Interaction, series_id: int, job_id: int) -> None:
        """Post one image of the album as a normal result, with the full set of buttons."""
        if await self.series.of_job(job_id) != series_id:
            await interaction.response.send_message(
                "❌ That image is not in this series.", ephemeral=True
            )
            return
        job = await self.bot.store.get_job(job_id)
        path = self.bot.settings.data_dir / (job.output_path or "") if job else None
        if (
            job is None
            or job.guild_id != interaction.guild_id
            or path is None
            or not path.is_file()
        ):
            await interaction.response.send_message(
                "❌ This image is no longer stored.", ephemeral=True
            )
            return
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

    async def cancel(self, interaction: Interaction, series_id: int) -> None:
        rows = await self.series.items(series_id)
        waiting = [job for item, job in rows if job is not None and item.state == "queued"]
        try:
            texts = [
                await self.bot.jobs.cancel(
                    job.id, interaction.user.id, interaction.permissions.manage_messages
                )
                for job in waiting
            ]
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        n = sum(1 for t in texts if t.startswith("Cancelled"))
        await interaction.response.send_message(
            f"✖️ Cancelled {n} image{'s' if n != 1 else ''} that had not started; they did not "
            "count against your quota.",
            ephemeral=True,
        )


async def setup_series(bot: ImgBot) -> None:
    """Add /series, its album components, and the delivery wrapper for series jobs."""
    quotas = QuotaStore(bot.store, bot.settings, clock=bot.jobs.clock)
    cog = SeriesCog(bot, quotas, SeriesStore(bot.store))
    await bot.add_cog(cog)
    bot.add_dynamic_items(OpenSelect, CancelSeries)
    bot.jobs.delivery = KindDelivery(bot.jobs.delivery, "series", cog.refresh_of)
