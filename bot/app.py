"""The bot: resources opened in `setup_hook`, one cog per feature, one error handler."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.actions import Actions
from bot.buttons import DYNAMIC_ITEMS
from bot.cogs.gallery import setup_gallery
from bot.cogs.generate import GenerateCog
from bot.cogs.help import HelpCog
from bot.cogs.queue import QueueCog
from bot.cogs.settings import setup_quotas
from bot.cogs.styles import setup_styles
from bot.delivery import DiscordDelivery
from bot.errors import UserError
from bot.jobs import JobService
from bot.store import Store
from bot.style_store import StyleStore
from config import Settings
from pipeline.worker import WorkerClient, WorkerConfig

log = logging.getLogger(__name__)

Precheck = Callable[[discord.Interaction[Any]], Awaitable[None]]


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at Discord, or at a REST/gateway proxy (or a test stand-in)."""
    discord.http.Route.BASE = settings.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class ImgBot(commands.Bot):
    """Holds the settings and the long-lived resources the cogs share."""

    store: Store
    jobs: JobService
    actions: Actions
    styles: StyleStore

    def __init__(self, settings: Settings, **options: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options
        )
        self.settings = settings
        self.prechecks: list[Precheck] = []
        self.fatal_error: str | None = None

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
        )

    async def setup_hook(self) -> None:
        settings = self.settings
        self.store = await Store.open(settings.db_path)
        worker = WorkerClient(self.worker_config(), start_timeout=settings.worker_start_timeout_s)
        delivery = DiscordDelivery(self, self.store, settings.data_dir.resolve())
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

    async def sync_commands(self) -> None:
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d commands", len(synced))

    def _on_fatal(self, message: str) -> None:
        """The model could not load at start: say so once and stop with an error."""
        self.fatal_error = message
        self.loop.create_task(self.close())

    async def close(self) -> None:
        if hasattr(self, "jobs"):
            await self.jobs.stop()
        if hasattr(self, "store"):
            await self.store.close()
        await super().close()

    async def on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, UserError):
            text = f"❌ {original}"
        elif isinstance(error, app_commands.CheckFailure):
            text = f"❌ {error}"
        else:
            log.error("command failed", exc_info=original)
            text = "❌ Something went wrong on our side. Please try again."
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
