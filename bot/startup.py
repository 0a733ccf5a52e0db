"""Reaching Discord at start: wait (with backoff) until its host answers, saying why not.

Without this, a bot started while the network, DNS or a proxy is down printed a 40-line
aiohttp traceback and exited, and a bot under Docker or systemd came up only if its
supervisor kept restarting it. Now the bot says once, in one line, which host it cannot
reach and why, tries again with growing pauses, and stops cleanly on Ctrl-C (or SIGTERM)
while it waits. Only the TCP connection is checked here: a rejected token is discord.py's
`LoginFailure`, which `bot.__main__` turns into its own line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

import yarl

from pipeline.request import EngineInfo

log = logging.getLogger("bot.startup")

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
CONNECT_TIMEOUT_S = 10.0


def endpoint(url: str) -> tuple[str, int]:
    """The host and port of an API base URL (`https://discord.com/api/v10` → 443)."""
    parsed = yarl.URL(url)
    return parsed.host or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def cause(exc: BaseException) -> str:
    """Why a connection failed, in the words an operator searches for."""
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "network unreachable"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


async def reachable(host: str, port: int) -> BaseException | None:
    """None if a TCP connection to host:port opens now; else what went wrong."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def wait_for_discord(
    api_base: str,
    stop: asyncio.Event,
    *,
    first_delay: float = FIRST_DELAY_S,
    max_delay: float = MAX_DELAY_S,
) -> bool:
    """Return True once Discord's API host accepts a connection, False if `stop` is set
    first. The first failure is one warning naming the host and the cause (again only when
    the cause changes); each retry is one short line with the next pause."""
    host, port = endpoint(api_base)
    delay, tries, last = first_delay, 0, ""
    while not stop.is_set():
        error = await reachable(host, port)
        if error is None:
            if tries:
                log.info("Discord reachable at %s:%d after %d tries; connecting", host, port, tries)
            return True
        tries += 1
        why = cause(error)
        if why != last:
            log.warning(
                "cannot reach Discord at %s:%d: %s. Retrying with backoff until it answers "
                "(Ctrl-C to stop).", host, port, why,
            )  # fmt: skip
            last = why
        else:
            log.info("Discord still unreachable (try %d: %s); next in %.0f s", tries, why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(max_delay, delay * 2)
    log.info("stopped while waiting for Discord")
    return False


def engine_summary(info: EngineInfo) -> str:
    """What a worker loaded, in one line for the start-up log (not the dataclass repr)."""
    batching = f"step batching, {info.step_slots} rows" if info.step_slots else "call batching"
    return (
        f"{info.model_id} ({info.pipeline_class}) on {info.device}/{info.dtype}, "
        f"{info.resolution} px, safety checker {info.safety_checker}, region masks "
        f"{'on' if info.region_masks else 'off'}, {batching}"
    )
