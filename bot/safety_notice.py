"""Whether results are filtered right now, in the words /help and /settings show use.

A worker without a safety checker (SAFETY_CHECKER=off, or auto and none could be loaded)
posts pictures nobody checked. Members and managers are told so wherever they look for how
the bot works, with how many of their server's pictures of the last 24 h were not checked
(each job row records the worker's answer, `jobs.filtered`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.quota import WINDOW_S, plural

UNCHECKED = ("off", "missing")  # EngineInfo.safety_checker of a worker that filters nothing


def worker_infos(worker: Any) -> tuple[Any, ...]:
    """The EngineInfo of every worker online: a backend that knows several says so in
    `engine_infos`; else its one `info` (None while no worker is ready)."""
    infos: Iterable[Any] | None = getattr(worker, "engine_infos", None)
    if infos is None:
        info = getattr(worker, "info", None)
        infos = () if info is None else (info,)
    return tuple(infos)


def runs_unfiltered(worker: Any) -> bool:
    """True when some worker online runs without a safety checker."""
    return any(getattr(i, "safety_checker", None) in UNCHECKED for i in worker_infos(worker))


def unfiltered_text(unchecked: int) -> str:
    """The warning, with this server's count of unchecked pictures of the last 24 h."""
    were = "was" if unchecked == 1 else "were"
    return (
        "Results are not filtered: an image worker runs without a safety checker, so no "
        "picture is checked for unsafe content before it is posted. "
        f"{plural(unchecked, 'picture')} of this server in the last 24 h {were} not checked."
    )


async def unfiltered_notice(bot: Any, guild_id: int | None) -> str | None:
    """The warning for this server, or None while every worker online filters."""
    if not hasattr(bot, "jobs") or not runs_unfiltered(bot.jobs.worker):
        return None
    quotas = getattr(bot.get_cog("QuotaCog"), "quotas", None)
    unchecked = 0
    if guild_id is not None and quotas is not None:
        unchecked = await quotas.unfiltered_count(guild_id, quotas.clock() - WINDOW_S)
    return unfiltered_text(unchecked)
