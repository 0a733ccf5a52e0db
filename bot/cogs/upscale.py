"""Upscale ×2: `/upscale`, the button under every result, and Apps → Upscale ×2.

The picture is enlarged (Lanczos), cut into overlapping tiles at the model's working size
(`pipeline.tiling`, `bot.upscale_files`), and each tile becomes one ordinary img2img job
(kind `tile`) of the owner: the tiles take places in the fair queue like separate jobs of
theirs, share UNet calls with each other and with other members' jobs, and are one entry
against MAX_JOBS_PER_USER (one group, like a series). What happens as they end (progress,
the stop, the blend and the final safety check posted as the result) is
`bot.cogs.upscale_progress`. The result's Reroll and −/+ come back here (`again`).

Quota: an upscale counts one image per four tiles (`tiling.upscale_units`): that many of
its tile jobs are counted rows, reserved in the transaction that queues them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite
import discord
from discord import app_commands
from discord.ext import commands

from bot.actions import INPUT_GONE_TEXT, _role_ids
from bot.cogs.compare import GONE_TEXT
from bot.cogs.iterate import copy_output, images_of
from bot.cogs.models import model_autocomplete
from bot.cogs.upscale_progress import UpscaleDelivery, UpscaleProgress, cancel_view
from bot.errors import UserError
from bot.jobs.scheduler import QueueFull
from bot.jobs.service import NEW_GROUP, NewJob
from bot.locks import KeyedLocks
from bot.models import server_model
from bot.store.db import ACTIVE_STATES, Job
from bot.store.quotas import QuotaStore
from bot.store.upscales import Upscale, UpscaleStore
from bot.styles import Composed
from bot.upscale import (
    DEFAULT_SCALE,
    DEFAULT_STRENGTH,
    TILE_KIND,
    UpscalePlan,
    head_text,
    plan_upscale,
    progress_text,
    queued_text,
    quota_refusal,
)
from bot.upscale_files import cut_tiles, picture_size, remove
from bot.visibility import channel_flags
from pipeline.prepare import check_declared_size
from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_STRENGTH,
    InputError,
    check_prompt,
    check_seed,
    check_strength,
)
from pipeline.tiling import tile_seed

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]

NO_PICTURE_TEXT = (
    "This message has no picture. Use **Apps → Upscale ×2** on a message with a PNG, JPEG "
    "or WebP image, or use /upscale."
)
RESULT_REROLL = re.compile(r"i2i:r:(\d+)")  # a result message names its job in Reroll


@dataclass(frozen=True)
class Ask:
    """What a member asked to upscale, and how."""

    source_path: str  # the picture, stored under DATA_DIR as an input of its own
    width: int
    height: int
    scale: int
    strength: float
    prompt: str
    negative_prompt: str | None
    seed: int | None
    steps: int
    source_job_id: int | None = None
    style: str | None = None
    fresh_source: bool = True  # stored for this upscale: removed again if it is refused
    model: str = ""  # the catalogue model the tiles run on ("" : the default)
    structure: str | None = None  # each tile keeps its own edges/lines (the source's kind)
    structure_weight: float = 1.0


class UpscaleCog(UpscaleProgress, commands.Cog):
    def __init__(self, bot: ImgBot, quotas: QuotaStore, store: UpscaleStore) -> None:
        self.bot = bot
        self.quotas = quotas
        self.store = store
        self._intake = asyncio.Lock()  # an upscale's message is set before it is redrawn
        self._locks = KeyedLocks()
        self.menu = app_commands.ContextMenu(name="Upscale ×2", callback=self.upscale_this)
        self.menu.guild_only = True

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """The queue is rebuilt from SQLite without knowing upscales: mark their tiles
        again (one entry against the per-user cap), and go on with any upscale whose
        tiles all ended while the bot was away."""
        for upscale_id in await self.store.in_state("tiles"):
            for job in await self.store.tiles(upscale_id):
                if job is not None and job.state in ACTIVE_STATES:
                    self.bot.jobs.queue.set_group(str(job.id), f"upscale:{upscale_id}")
            await self.refresh(upscale_id)

    # -- asking -------------------------------------------------------------------------
    @app_commands.command(name="upscale", description="A picture at twice the size, detailed")
    @app_commands.guild_only()
    @app_commands.describe(
        image="PNG, JPEG or WebP",
        scale="How many times larger: ×2 doubles each side (the only scale for now)",
        strength="How much each tile is repainted: 0.1–0.2 sharpens detail (default 0.2)",
        prompt="What the picture shows (helps the detail fit)",
        negative_prompt="What to avoid",
        seed="Same seed + same settings = same picture",
        model="Which model draws the detail (see /models); default: the server's",
    )
    @app_commands.choices(scale=[app_commands.Choice(name="×2", value=2)])
    @app_commands.autocomplete(model=model_autocomplete)
    async def upscale_command(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        scale: int = DEFAULT_SCALE,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] = DEFAULT_STRENGTH,
        prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        await self._upload(
            interaction, image, scale, strength, prompt, negative_prompt, seed, model
        )

    async def _upload(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        scale: int,
        strength: float,
        prompt: str | None,
        negative_prompt: str | None,
        seed: int | None,
        model: str | None = None,
    ) -> None:
        """An uploaded picture: cheap refusals first (the cap on its declared size among
        them), then download and store it, then `_start`. The model: `model`, else the
        server's, else the catalogue's."""
        models = self.bot.jobs.models
        try:
            server = await server_model(self.bot.store.db, interaction.guild_id or 0)
            entry = models.pick(model, None, server)
            text, loras = self.bot.loras.split(check_prompt(prompt, required=False), entry.name)
            plain = Composed(text, None, strength, None, model=entry.name)
            words = self.bot.loras.styled(plain, loras).prompt
            negative = check_prompt(negative_prompt, field="negative prompt", required=False)
            check_strength(strength)
            check_seed(seed)
            check_declared_size(image.size, max_bytes=self.bot.settings.max_input_bytes)
            if image.width and image.height:  # refused before any download
                self._plan(image.width, image.height, scale, entry.name)
            await self.bot.actions.precheck(interaction)
        except (InputError, UserError) as exc:
            await self.bot.actions.say(interaction, f"❌ {exc}")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            rel, width, height = await self.bot.actions.decode_and_store(image)
        except (InputError, UserError) as exc:
            await interaction.edit_original_response(content=f"❌ {exc}")
            return
        except discord.HTTPException as exc:
            await interaction.edit_original_response(
                content=f"❌ Could not download the attachment ({exc.status}). Upload it again."
            )
            return
        ask = Ask(
            rel, width, height, scale, strength, words, negative or None, seed,
            models.steps(entry), model=entry.name,
        )  # fmt: skip
        await self._start(interaction, ask)

    async def upscale_job(self, interaction: Interaction, job_id: int) -> None:
        """The Upscale ×2 button: this result at twice its size, with its prompt and seed."""
        actions = self.bot.actions
        try:
            parent = await actions.job_here(interaction, job_id, deleted_ok=False)
            if parent.state != "done" or not actions.stored(parent.output_path):
                raise UserError(GONE_TEXT)
            path = self.data_dir / str(parent.output_path)
            width, height = await asyncio.to_thread(picture_size, path)
            model = self.bot.jobs.models.kept(parent.model)
            self._plan(width, height, DEFAULT_SCALE, model)
            await actions.precheck(interaction)
        except (InputError, UserError) as exc:
            await actions.say(interaction, f"❌ {exc}")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        copied, width, height = await asyncio.to_thread(copy_output, self.data_dir, parent)
        ask = Ask(
            copied, width, height, DEFAULT_SCALE, DEFAULT_STRENGTH, parent.prompt,
            parent.negative_prompt, parent.seed, parent.steps, parent.id, parent.style,
            model=model, structure=parent.structure, structure_weight=parent.structure_weight,
        )  # fmt: skip
        await self._start(interaction, ask)

    async def again(
        self, interaction: Interaction, final: Job, *, strength: float | None, seed: int | None
    ) -> None:
        """Reroll (`seed` None: a new one) and −/+ (`strength`) under an upscaled result:
        the same picture upscaled again. Raises `UserError` before answering."""
        up = await self.store.of_final(final.id)
        if up is None or not self.bot.actions.stored(up.source_path):
            raise UserError(INPUT_GONE_TEXT)
        width, height = await asyncio.to_thread(picture_size, self.data_dir / up.source_path)
        await self.bot.actions.precheck(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        tile = next((t for t in await self.store.tiles(up.id) if t is not None), None)
        ask = Ask(
            up.source_path, width, height, up.scale,
            final.strength if strength is None else strength, final.prompt,
            final.negative_prompt, seed, final.steps, up.source_job_id, final.style,
            fresh_source=False, model=self.bot.jobs.models.kept(final.model),
            structure=tile.structure if tile else None,
            structure_weight=tile.structure_weight if tile else 1.0,
        )  # fmt: skip
        await self._start(interaction, ask)

    async def upscale_this(self, interaction: Interaction, message: discord.Message) -> None:
        """Apps → Upscale ×2: a result of this bot like its button; any other picture like
        /upscale with the defaults."""
        me = self.bot.user
        if me is not None and message.author.id == me.id:
            for row in message.components:
                for child in getattr(row, "children", []):
                    found = RESULT_REROLL.fullmatch(getattr(child, "custom_id", None) or "")
                    if found:
                        await self.upscale_job(interaction, int(found[1]))
                        return
        images = images_of(message)
        if not images:
            await interaction.response.send_message(f"❌ {NO_PICTURE_TEXT}", ephemeral=True)
            return
        image = discord.Attachment(data=images[0], state=self.bot._connection)  # type: ignore[arg-type]
        await self._upload(interaction, image, DEFAULT_SCALE, DEFAULT_STRENGTH, None, None, None)

    def _plan(self, width: int, height: int, scale: int, model: str) -> UpscalePlan:
        """Tiles at `model`'s working size; raises `InputError` naming UPSCALE_MAX_SIDE
        when the result would pass it."""
        size = self.bot.jobs.resolution_of(model)
        return plan_upscale(width, height, scale, self.bot.settings.upscale_max_side, size)

    # -- queueing -----------------------------------------------------------------------
    async def _start(self, interaction: Interaction, ask: Ask) -> None:
        """Plan, check room, cut the tiles and queue them (all or none); the private
        answer says what it counts, then the public message shows its progress. The
        interaction is already acknowledged privately."""
        paths: list[str] = []
        try:
            plan = self._plan(ask.width, ask.height, ask.scale, ask.model)
            await self._check_room(interaction, plan)
            seed = ask.seed if ask.seed is not None else secrets.randbelow(MAX_SEED + 1)
            paths = await asyncio.to_thread(cut_tiles, self.data_dir, ask.source_path, plan)
            news = self._tile_jobs(interaction, ask, plan, seed, paths)
            async with self._intake:
                upscale_id = await self._submit(interaction, news, ask, plan, seed)
                await interaction.edit_original_response(content=queued_text(plan, seed))
                head = head_text(upscale_id, plan.width, plan.height, ask.strength, ask.prompt)
                try:
                    message = await interaction.followup.send(
                        content=progress_text(head, 0, plan.tiles),
                        view=cancel_view(upscale_id),
                        wait=True,
                    )
                    await self.store.set_message(upscale_id, message.id)
                except discord.HTTPException as exc:  # the result is posted all the same
                    log.warning("upscale %d: no progress message (%s)", upscale_id, exc.status)
        except (InputError, UserError) as exc:
            await asyncio.to_thread(remove, self.data_dir, paths)
            if ask.fresh_source:
                await self.bot.actions.discard_unused(ask.source_path)
            await interaction.edit_original_response(content=f"❌ {exc}")
            return
        await self.refresh(upscale_id, ended_too=True)

    async def _check_room(self, interaction: Interaction, plan: UpscalePlan) -> None:
        """The whole upscale must fit the queue caps (as one entry) and both quotas."""
        assert interaction.guild_id is not None
        guild, user = interaction.guild_id, interaction.user.id
        try:
            self.bot.jobs.queue.check_caps(guild, user, size=plan.tiles, group=NEW_GROUP)
        except QueueFull as exc:
            raise UserError(str(exc)) from None
        state = await self.quotas.state(guild, user, _role_ids(interaction), time.time())
        refusal = quota_refusal(plan, state.user.remaining, state.guild.remaining)
        if refusal:
            raise UserError(refusal)

    def _tile_jobs(
        self, interaction: Interaction, ask: Ask, plan: UpscalePlan, seed: int, paths: list[str]
    ) -> list[NewJob]:
        """One ordinary img2img job per tile; the first `plan.units` use a unit of quota."""
        assert interaction.guild_id is not None
        public, nsfw = channel_flags(interaction.channel)
        models = self.bot.jobs.models
        return [
            NewJob(
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or 0,
                user_id=interaction.user.id,
                prompt=ask.prompt,
                negative_prompt=ask.negative_prompt,
                strength=ask.strength,
                seed=tile_seed(seed, i),
                steps=ask.steps,
                guidance=models.guidance(models.catalogue.model(ask.model)),
                input_path=path,
                input_width=right - left,
                input_height=bottom - top,
                kind=TILE_KIND,
                parent_id=ask.source_job_id,
                role_ids=_role_ids(interaction),
                style=ask.style,
                channel_public=public,
                channel_nsfw=nsfw,
                counted=i < plan.units,
                model=models.catalogue.model(ask.model).name,
                structure=ask.structure,
                structure_weight=ask.structure_weight,
            )
            for i, (path, (left, top, right, bottom)) in enumerate(
                zip(paths, plan.boxes, strict=True)
            )
        ]

    async def _submit(
        self, interaction: Interaction, news: list[NewJob], ask: Ask, plan: UpscalePlan, seed: int
    ) -> int:
        """Queue every tile and write the upscale in one transaction: all or none."""
        assert interaction.guild_id is not None
        made: list[int] = []
        up = Upscale(
            0, interaction.guild_id, interaction.channel_id or 0, interaction.user.id,
            ask.source_job_id, ask.source_path, ask.scale, seed, plan.width, plan.height,
            plan.boxes, None, interaction.application_id, interaction.token,
            interaction.created_at.timestamp(), None, "tiles",
        )  # fmt: skip

        async def write(db: aiosqlite.Connection, jobs: list[Job]) -> str:
            made.append(await self.store.create_in(db, up, [job.id for job in jobs]))
            return f"upscale:{made[0]}"

        await self.bot.jobs.submit_many(news, group=write)
        return made[0]


async def setup_upscale(bot: ImgBot) -> None:
    """Add /upscale, the message command, and the delivery wrapper for tiles."""
    quotas = QuotaStore(bot.store, bot.settings, clock=bot.jobs.clock)
    cog = UpscaleCog(bot, quotas, UpscaleStore(bot.store))
    await bot.add_cog(cog)
    bot.jobs.delivery = UpscaleDelivery(bot.jobs.delivery, cog)
