"""`python -m bot`: read the settings, connect to Discord, run until stopped.

The imports of discord and the bot live inside the functions: the worker process is started
with multiprocessing's spawn, which re-imports this main module, and the worker needs none
of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger("bot")


async def run(bot: ImgBot, token: str) -> None:
    """Wait until Discord answers (bot.startup), then run until SIGTERM/SIGINT, which stop
    the wait or the bot cleanly."""
    from bot.startup import wait_for_discord

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    closing: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        stop.set()
        closing.append(loop.create_task(bot.close()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with bot:
        if await wait_for_discord(bot.settings.discord_api_base, stop):
            await bot.start(token)


def main() -> int:
    import aiohttp
    import discord

    from bot import event_loop
    from bot.app import ImgBot, configure_endpoints
    from bot.startup import cause, endpoint
    from bot.store.db import StoreError
    from config import load_settings
    from config.settings import SettingsError
    from pipeline.quiet import quiet_library_noise

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_library_noise()  # discord.py's voice warnings: the bot has no voice
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level)
    token = settings.discord_token.get_secret_value()
    if not token:
        print(
            "error: DISCORD_TOKEN is not set. Put your bot's token in the environment or in .env "
            "(Discord Developer Portal → your application → Bot → Reset Token).",
            file=sys.stderr,
        )
        return 2
    configure_endpoints(settings)
    bot = ImgBot(settings)
    event_loop.tune_gc()
    try:
        event_loop.run(run(bot, token))
    except discord.LoginFailure:
        print(
            "error: Discord rejected DISCORD_TOKEN; check that it is the bot's current token.",
            file=sys.stderr,
        )
        return 1
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientConnectionError as exc:  # lost again during login (a race)
        host, port = endpoint(settings.discord_api_base)
        why = cause(getattr(exc, "os_error", None) or exc)
        print(
            f"error: lost the connection to Discord at {host}:{port} while logging in ({why}); "
            "start the bot again once the network is back.",
            file=sys.stderr,
        )
        return 1
    if bot.fatal_error:
        print(f"error: {bot.fatal_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
