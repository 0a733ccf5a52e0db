"""The bot: resources opened in `setup_hook`, one cog per feature, one error handler.

Messages ping nobody unless they say so (`AllowedMentions.none()` is the client default).
Commands are synced only when the command tree changed, so a crash loop cannot burn
Discord's sync rate limit. Shutdown runs in order: stop taking interactions, let the job
service finish or persist what is in flight, close the database, then the gateway and HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.actions import Actions
from bot.cogs.compare import setup_compare
from bot.cogs.gallery import setup_gallery
from bot.cogs.generate import GenerateCog
from bot.cogs.help import HelpCog
from bot.cogs.imagine import setup_imagine
from bot.cogs.inpaint import setup_inpaint
from bot.cogs.iterate import setup_iterate
from bot.cogs.models import setup_models
from bot.cogs.queue import QueueCog
from bot.cogs.series import setup_series
from bot.cogs.settings import setup_quotas
from bot.cogs.styles import setup_styles
from bot.cogs.upscale import setup_upscale
from bot.errors import UserError
from bot.jobs.data_dir_lock import DataDirLock
from bot.jobs.delivery import DiscordDelivery
from bot.jobs.events import Delivery
from bot.jobs.service import JobService
from bot.loras import LoraTags
from bot.metrics import BotMetrics, MeteredDelivery, MetricsServer
from bot.store.db import Store, is_locked
from bot.store.styles import StyleStore
from bot.ui.buttons import DYNAMIC_ITEMS
from config import Settings
from pipeline.served_models import served_specs
from pipeline.worker import WorkerClient, WorkerConfig
from pipeline.worker_backend import WorkerBackend

log = logging.getLogger(__name__)

Precheck = Callable[[discord.Interaction[Any]], Awaitable[None]]

# The least the bot needs in a channel (the README quotes these names and the number):
# interaction replies need none of them; they cover the results and notices posted as
# channel messages once an interaction's 15-minute token is gone, and the gallery channel.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)
INVITE_SCOPES = ("bot", "applications.commands")
COMMANDS_HASH_KEY = "commands_hash"
JOBS_STOP_BUDGET_S = 7.0  # Docker sends SIGKILL 10 s after SIGTERM: leave room for the rest
RESTARTING_TEXT = "🔄 The bot is restarting. Please try again in a moment."


def invite_url(application_id: int) -> str:
    """The link a server admin opens to add the bot with exactly the permissions it needs."""
    return discord.utils.oauth_url(
        application_id, permissions=INVITE_PERMISSIONS, scopes=INVITE_SCOPES
    )


def commands_hash(payload: list[dict[str, Any]], scope: int | None, application_id: int) -> str:
    """What a sync would send, and where to: equal hashes mean Discord already has it."""
    text = json.dumps(
        {"app": application_id, "guild": scope, "commands": payload}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at Discord, or at a REST/gateway proxy (or a test stand-in)."""
    discord.http.Route.BASE = settings.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class ImgBot(commands.AutoShardedBot):
    """Holds the settings and the long-lived resources the cogs share.

    Auto-sharded: Discord requires shards past 2,500 servers, and one process holds many;
    SHARD_COUNT fixes their number, else Discord's recommendation (`GET /gateway/bot`)."""

    store: Store
    jobs: JobService
    actions: Actions
    styles: StyleStore

    def __init__(self, settings: Settings, **options: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        if settings.shard_count is not None:
            options.setdefault("shard_count", settings.shard_count)
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options
        )
        self.settings = settings
        self.loras = LoraTags(settings.catalogue, settings.max_loras_per_job)
        self.prechecks: list[Precheck] = []
        self.metrics_server: MetricsServer | None = None  # METRICS_PORT
        self.data_lock = DataDirLock(settings.data_dir)  # one bot (scheduler) per DATA_DIR
        self.fatal_error: str | None = None
        self.accepting = True  # False once shutdown began: interactions are turned away
        self._shutdown: asyncio.Future[None] | None = None
        self._refusals: set[asyncio.Task[None]] = set()
        self._gate_interactions()

    def worker_config(self) -> WorkerConfig:
        s = self.settings
        return WorkerConfig(
            model_id=s.model_id,
            device=s.device,
            dtype=s.dtype,
            resolution=s.resolution,
            compile=s.compile,
            channels_last=s.channels_last,
            safety_checker=s.safety_checker,
            safety_checker_id=s.safety_checker_id,
            mask_model_id=s.mask_model_id or None,
            inpaint_model_id=s.inpaint_model_id or None,
            mask_threshold=s.mask_threshold,
            mask_dilate=s.mask_dilate,
            batching=s.batching,
            max_batch=s.max_batch,
            max_loras_loaded=s.max_loras_loaded,
            preview=s.preview,
            preview_interval_s=s.preview_interval_s,
            preview_model_id=s.preview_model_id,
            preview_every_steps=s.preview_every_steps,
            single_file_config=s.single_file_config,
            models=served_specs(s),
            resident_models=s.resident_models,
            controlnet_edges=s.controlnet_edges,
            controlnet_lines=s.controlnet_lines,
            structure_edges_low=s.structure_edges_low,
            structure_edges_high=s.structure_edges_high,
            structure_lines_contrast=s.structure_lines_contrast,
        )

    def worker_backend(self) -> WorkerBackend:
        """WORKER_BACKEND: the spawned local worker, or remote workers through REDIS_URL."""
        s = self.settings
        if s.worker_backend == "redis":
            from bot.jobs.backends.redis import RedisBackend

            return RedisBackend(
                s.redis_url.get_secret_value(),
                model_id=s.model_id,
                models={name: m.source for name, m in s.catalogue.models.items()},
                resolution=s.resolution,
                safety_checker=s.safety_checker,
                batching=s.batching,
                heartbeat_s=s.worker_heartbeat_s,
                silence_s=s.worker_silence_s,
                default_model=s.catalogue.default,
                model_resolutions={  # as the workers size them (`served_specs`)
                    m.name: size
                    for m in s.catalogue.models.values()
                    if (size := m.resolution or s.resolution_setting)
                },
            )
        return WorkerClient(
            self.worker_config(), start_timeout=s.worker_start_timeout_s, max_batch=s.max_batch
        )

    async def setup_hook(self) -> None:
        settings = self.settings
        self.data_lock.acquire()  # a second bot on this DATA_DIR stops here, naming the first
        self.store = await Store.open(settings.db_path)
        log.info("data in %s (database %s)", settings.data_dir.resolve(), settings.db_path)
        if self.application_id:
            log.info("invite URL: %s", invite_url(self.application_id))
        worker = self.worker_backend()
        delivery: Delivery = DiscordDelivery(
            self, self.store, settings.data_dir.resolve(),
            upscale_max_side=settings.upscale_max_side, catalogue=settings.catalogue,
        )  # fmt: skip
        if settings.metrics_port:
            metrics = BotMetrics()
            delivery = MeteredDelivery(delivery, metrics)
            self.metrics_server = MetricsServer(self, metrics, settings.metrics_port)
            await self.metrics_server.start()
        self.jobs = JobService(settings, self.store, worker, delivery)
        self.jobs.on_fatal = self._on_fatal
        self.actions = Actions(self)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        for cog in (GenerateCog(self), QueueCog(self), HelpCog(self)):
            await self.add_cog(cog)
        await self.add_feature_cogs()
        self.tree.on_error = self.on_app_command_error
        await self.jobs.start()
        await self.sync_commands()

    async def add_feature_cogs(self) -> None:
        """Cogs of features that build on the job service (quotas, gallery)."""
        await setup_quotas(self)
        await setup_gallery(self)
        self.styles = await setup_styles(self)
        await setup_series(self)
        await setup_iterate(self)
        await setup_compare(self)
        await setup_imagine(self)
        await setup_inpaint(self)
        await setup_upscale(self)
        await setup_models(self)

    async def sync_commands(self) -> None:
        """Sync the command tree, unless Discord already has this very tree (same payload,
        same DEV_GUILD_ID, same application): the hash of the last sync is kept in `meta`."""
        assert self.application_id is not None
        scope = self.settings.dev_guild_id
        guild = discord.Object(scope) if scope else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        payload = [c.to_dict(self.tree) for c in self.tree.get_commands(guild=guild)]
        digest = commands_hash(payload, scope, self.application_id)
        if await self.store.get_meta(COMMANDS_HASH_KEY) == digest:
            log.info("commands unchanged since the last sync; not syncing")
            return
        synced = await self.tree.sync(guild=guild)
        await self.store.set_meta(COMMANDS_HASH_KEY, digest)
        log.info("synced %d commands%s", len(synced), f" to guild {scope}" if scope else "")

    def _on_fatal(self, message: str) -> None:
        """The model could not load at start: say so once and stop with an error."""
        self.fatal_error = message
        self.loop.create_task(self.close())

    # -- shutdown -----------------------------------------------------------------------
    def _gate_interactions(self) -> None:
        """Route every INTERACTION_CREATE through `accepting`: commands, buttons and modals
        all arrive through this one gateway event, so this is the one place to stop them."""
        parsers = self._connection.parsers
        handle = parsers["INTERACTION_CREATE"]

        def gated(data: Any) -> None:
            if self.accepting:
                handle(data)
                return
            task = asyncio.get_running_loop().create_task(self._refuse(data))
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)

        parsers["INTERACTION_CREATE"] = gated

    async def _refuse(self, data: Any) -> None:
        """A short private "restarting" answer to an interaction that came during shutdown."""
        interaction: discord.Interaction[Any] = discord.Interaction(
            data=data, state=self._connection
        )
        if interaction.type is discord.InteractionType.autocomplete:
            return  # autocomplete cannot show text; leaving it unanswered is harmless
        try:
            await interaction.response.send_message(RESTARTING_TEXT, ephemeral=True)
        except discord.HTTPException:
            log.info("could not answer an interaction during shutdown")

    async def close(self) -> None:
        """Stop in order (see the module docstring); a second call waits for the first."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._close_in_order())
        await self._shutdown

    async def _close_in_order(self) -> None:
        self.accepting = False
        if hasattr(self, "jobs"):
            try:
                await asyncio.wait_for(self.jobs.stop(), JOBS_STOP_BUDGET_S)
            except TimeoutError:
                log.warning("the job service did not stop within %.0f s", JOBS_STOP_BUDGET_S)
        if self._refusals:
            await asyncio.wait(set(self._refusals), timeout=1.0)
        if hasattr(self, "store"):
            await self.store.close()
        self.data_lock.release()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await super().close()

    async def on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, UserError):
            text = f"❌ {original}"
        elif is_locked(original):
            log.error("the database is locked by another process", exc_info=original)
            text = "❌ The bot's database is busy right now. Please try again in a moment."
        elif isinstance(error, app_commands.CheckFailure):
            text = f"❌ {error}"
        else:
            log.error("command failed", exc_info=original)
            text = "❌ Something went wrong on our side. Please try again."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
