"""Upscale ×2: `/upscale`, the button under every result, and Apps → Upscale ×2.

The picture is enlarged (Lanczos), cut into overlapping tiles at the model's working size
(`pipeline.tiling`), and each tile becomes one ordinary img2img job (kind `tile`) of the
owner: the tiles take places in the fair queue like separate jobs of theirs, share UNet
calls with each other and with other members' jobs, and are one entry against
MAX_JOBS_PER_USER (one group, like a series). They post nothing; an `UpscaleDelivery`
redraws the upscale's message (`tile 3 of 6`) as each one ends. When the last tile is done
the tiles are blended (`tiling.blend`, the same function `python -m pipeline upscale`
uses) and one more job of mode `UPSCALE` is queued: the worker only runs the safety
checker on the whole picture and stores it, and that job is posted as the result (its
buttons re-run the upscale). A failed or cancelled tile stops the upscale, refunded; a
withheld tile withholds it.

Quota: an upscale counts one image per four tiles (`tiling.upscale_units`): that many of
its tile jobs are counted rows, reserved in the transaction that queues them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot.actions import INPUT_GONE_TEXT, _role_ids
from bot.cogs.compare import GONE_TEXT
from bot.cogs.iterate import copy_output, images_of
from bot.errors import UserError
from bot.jobs.events import Delivery, KindDelivery
from bot.jobs.scheduler import QueueFull
from bot.jobs.service import TOKEN_LIFETIME_S, NewJob
from bot.locks import KeyedLocks
from bot.store.db import ACTIVE_STATES, Job
from bot.store.quotas import QuotaStore
from bot.store.upscales import Upscale, UpscaleStore
from bot.ui.buttons import CancelUpscale
from bot.upscale import (
    DEFAULT_SCALE,
    DEFAULT_STRENGTH,
    ENDED_TEXT,
    FINAL_KIND,
    TILE_KIND,
    UpscalePlan,
    head_text,
    plan_upscale,
    progress_text,
    queued_text,
    quota_refusal,
)
from bot.visibility import channel_flags
from pipeline.prepare import check_declared_size
from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_STRENGTH,
    UPSCALE,
    InputError,
    check_prompt,
    check_seed,
    check_strength,
)
from pipeline.tiling import blend, cut, enlarge, tile_seed

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


class _AlreadyFinished(Exception):
    """The last tile's end was handled twice: the final job is queued once."""


def picture_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


class UpscaleCog(commands.Cog):
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

    @property
    def data_dir(self) -> Path:
        return self.bot.settings.data_dir

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
        scale="How many times larger (2 doubles each side)",
        strength="How much each tile is repainted: 0.1–0.2 sharpens detail (default 0.2)",
        prompt="What the picture shows (helps the detail fit)",
        negative_prompt="What to avoid",
        seed="Same seed + same settings = same picture",
    )
    async def upscale_command(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        scale: app_commands.Range[int, 2, 4] = DEFAULT_SCALE,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] = DEFAULT_STRENGTH,
        prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
    ) -> None:
        await self._upload(interaction, image, scale, strength, prompt, negative_prompt, seed)

    async def _upload(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        scale: int,
        strength: float,
        prompt: str | None,
        negative_prompt: str | None,
        seed: int | None,
    ) -> None:
        """An uploaded picture: cheap refusals first (the cap on its declared size among
        them), then download and store it, then `_start`."""
        settings = self.bot.settings
        try:
            words = check_prompt(prompt, required=False)
            negative = check_prompt(negative_prompt, field="negative prompt", required=False)
            check_strength(strength)
            check_seed(seed)
            check_declared_size(image.size, max_bytes=settings.max_input_bytes)
            if image.width and image.height:  # refused before any download
                self._plan(image.width, image.height, scale)
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
            settings.default_steps,
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
            self._plan(width, height, DEFAULT_SCALE)
            await actions.precheck(interaction)
        except (InputError, UserError) as exc:
            await actions.say(interaction, f"❌ {exc}")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        copied, width, height = await asyncio.to_thread(copy_output, self.data_dir, parent)
        ask = Ask(
            copied, width, height, DEFAULT_SCALE, DEFAULT_STRENGTH, parent.prompt,
            parent.negative_prompt, parent.seed, parent.steps, parent.id, parent.style,
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
        ask = Ask(
            up.source_path, width, height, up.scale,
            final.strength if strength is None else strength, final.prompt,
            final.negative_prompt, seed, final.steps, up.source_job_id, final.style,
            fresh_source=False,
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

    def _plan(self, width: int, height: int, scale: int) -> UpscalePlan:
        """Raises `InputError` naming UPSCALE_MAX_SIDE when the result would pass it."""
        return plan_upscale(
            width, height, scale, self.bot.settings.upscale_max_side, self.bot.jobs.resolution
        )

    # -- queueing -----------------------------------------------------------------------
    async def _start(self, interaction: Interaction, ask: Ask) -> None:
        """Plan, check room, cut the tiles and queue them (all or none); the private
        answer says what it counts, then the public message shows its progress. The
        interaction is already acknowledged privately."""
        paths: list[str] = []
        try:
            plan = self._plan(ask.width, ask.height, ask.scale)
            await self._check_room(interaction, plan)
            seed = ask.seed if ask.seed is not None else secrets.randbelow(MAX_SEED + 1)
            paths = await asyncio.to_thread(self._cut, ask.source_path, plan)
            news = self._tile_jobs(interaction, ask, plan, seed, paths)
            async with self._intake:
                upscale_id = await self._submit(interaction, news, ask, plan, seed)
                await interaction.edit_original_response(content=queued_text(plan, seed))
                head = head_text(upscale_id, plan.width, plan.height, ask.strength, ask.prompt)
                try:
                    message = await interaction.followup.send(
                        content=progress_text(head, 0, plan.tiles),
                        view=self._cancel_view(upscale_id),
                        wait=True,
                    )
                    await self.store.set_message(upscale_id, message.id)
                except discord.HTTPException as exc:  # the result is posted all the same
                    log.warning("upscale %d: no progress message (%s)", upscale_id, exc.status)
        except (InputError, UserError) as exc:
            await asyncio.to_thread(self._remove, paths)
            if ask.fresh_source:
                await self.bot.actions.discard_unused(ask.source_path)
            await interaction.edit_original_response(content=f"❌ {exc}")
            return
        await self.refresh(upscale_id)

    async def _check_room(self, interaction: Interaction, plan: UpscalePlan) -> None:
        """The whole upscale must fit the queue caps (as one entry) and both quotas."""
        assert interaction.guild_id is not None
        guild, user = interaction.guild_id, interaction.user.id
        try:
            self.bot.jobs.queue.check_caps(guild, user, size=plan.tiles, group="\0new")
        except QueueFull as exc:
            raise UserError(str(exc)) from None
        state = await self.quotas.state(guild, user, _role_ids(interaction), time.time())
        refusal = quota_refusal(plan, state.user.remaining, state.guild.remaining)
        if refusal:
            raise UserError(refusal)

    def _cut(self, source_path: str, plan: UpscalePlan) -> list[str]:
        """Enlarge the picture and store each tile as an input (blocking: in a thread)."""
        with Image.open(self.data_dir / source_path) as image:
            big = enlarge(image.convert("RGB"), (plan.width, plan.height))
        folder = self.data_dir / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        paths: list[str] = []
        try:
            for i, tile in enumerate(cut(big, list(plan.boxes))):
                rel = f"inputs/{name}-tile{i}.png"
                tmp = folder / f".{name}-tile{i}.png.tmp"
                tile.save(tmp, format="PNG")
                tmp.replace(self.data_dir / rel)
                paths.append(rel)
        except BaseException:
            self._remove(paths)
            raise
        return paths

    def _tile_jobs(
        self, interaction: Interaction, ask: Ask, plan: UpscalePlan, seed: int, paths: list[str]
    ) -> list[NewJob]:
        """One ordinary img2img job per tile; the first `plan.units` use a unit of quota."""
        assert interaction.guild_id is not None
        public, nsfw = channel_flags(interaction.channel)
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
                guidance=self.bot.settings.default_guidance,
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

    # -- as tiles end -------------------------------------------------------------------
    async def refresh_of(self, job: Job) -> None:
        """A tile ended (`UpscaleDelivery`)."""
        async with self._intake:  # the upscale's message is set once this is free
            upscale_id = await self.store.of_tile(job.id)
        if upscale_id is not None:
            await self.refresh(upscale_id)

    async def refresh(self, upscale_id: int) -> None:
        """Move the upscale on from its tiles' states: idempotent, one at a time."""
        async with self._locks.hold(upscale_id):
            up = await self.store.get(upscale_id)
            if up is None or up.state != "tiles":
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
                await self._edit(up, text, self._cancel_view(up.id))

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
        await asyncio.to_thread(self._remove_tiles, tiles)
        await self._edit(up, f"{self._head(up, tiles)}\n{ENDED_TEXT[state]}", None)

    async def _finish(self, up: Upscale, tiles: list[Job | None]) -> None:
        """Every tile is done: blend them and queue the safety check of the whole picture,
        which is posted as the result (in the upscale's message)."""
        done = [job for job in tiles if job is not None]
        head = done[0]
        blended = await asyncio.to_thread(self._blend, up, done)
        final = NewJob(
            guild_id=up.guild_id, channel_id=up.channel_id, user_id=up.user_id,
            prompt=head.prompt, negative_prompt=head.negative_prompt, strength=head.strength,
            steps=head.steps, guidance=head.guidance, input_path=blended,
            input_width=up.width, input_height=up.height, seed=up.seed, kind=FINAL_KIND,
            mode=UPSCALE, parent_id=up.source_job_id, application_id=up.application_id,
            interaction_token=up.interaction_token, interaction_created_at=up.token_from,
            channel_public=bool(head.channel_public), channel_nsfw=bool(head.channel_nsfw),
            style=head.style, counted=False,
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
        await asyncio.to_thread(self._remove_tiles, tiles)
        await self.bot.jobs.attach_status_message(job.id, up.message_id)

    def _blend(self, up: Upscale, tiles: list[Job]) -> str:
        """The tiles' pictures blended into the upscale's (blocking: in a thread). A tile
        the model rendered at another size (a picture smaller than a tile on both sides)
        is brought back to its box first."""
        pictures = []
        for job, (left, top, right, bottom) in zip(tiles, up.boxes, strict=True):
            with Image.open(self.data_dir / str(job.output_path)) as image:
                picture = image.convert("RGB")
            box = (right - left, bottom - top)
            if picture.size != box:
                picture = picture.resize(box, Image.Resampling.LANCZOS)
            pictures.append(picture)
        result = blend(pictures, list(up.boxes), (up.width, up.height))
        name = uuid.uuid4().hex
        folder = self.data_dir / "inputs"
        tmp = folder / f".{name}.png.tmp"
        try:
            result.save(tmp, format="PNG")
            tmp.replace(folder / f"{name}.png")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return f"inputs/{name}.png"

    def _remove_tiles(self, tiles: list[Job | None]) -> None:
        """A tile's input and picture are only the upscale's: gone once it moved on."""
        self._remove([p for job in tiles if job for p in (job.input_path, job.output_path)])

    def _remove(self, paths: list[str | None]) -> None:
        for rel in paths:
            if rel:
                (self.data_dir / rel).unlink(missing_ok=True)

    # -- the message --------------------------------------------------------------------
    def _cancel_view(self, upscale_id: int) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(CancelUpscale(upscale_id))
        return view

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

    def __init__(self, inner: Delivery, cog: UpscaleCog) -> None:
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


async def setup_upscale(bot: ImgBot) -> None:
    """Add /upscale, the message command, and the delivery wrapper for tiles."""
    quotas = QuotaStore(bot.store, bot.settings, clock=bot.jobs.clock)
    cog = UpscaleCog(bot, quotas, UpscaleStore(bot.store))
    await bot.add_cog(cog)
    bot.jobs.delivery = UpscaleDelivery(bot.jobs.delivery, cog)
