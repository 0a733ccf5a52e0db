"""Quota arithmetic over a rolling 24 h window, as plain functions of values.

Kept free of SQL and Discord so every rule (window edges, refunds, resets, role limits) is
tested with tables of numbers; `bot.store.quotas` feeds it rows and `bot.cogs` words it.

A unit is used by a counted job (`jobs.counted = 1`) created inside the window. Cancelled,
failed and refused jobs are counted 0 (refunded) and so never appear here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

WINDOW_S = 24 * 60 * 60


@dataclass(frozen=True)
class RoleLimit:
    """A server's rule for one role: its own per-user limit, or no per-user limit at all."""

    role_id: int
    user_daily: int | None
    exempt: bool = False


def window_cutoff(now: float, reset_at: float | None = None, window: float = WINDOW_S) -> float:
    """Jobs created at or before this time do not count: older than the window, or from
    before an admin reset the member's usage."""
    cutoff = now - window
    return max(cutoff, reset_at) if reset_at is not None else cutoff


def counted_times(rows: Iterable[tuple[float, int]], cutoff: float) -> tuple[float, ...]:
    """Creation times (oldest first) of the jobs that use a unit: counted and after cutoff.

    `rows` are (created_at, counted) pairs; the SQL in `quota_store` applies the same rule.
    """
    return tuple(sorted(at for at, counted in rows if counted and at > cutoff))


def effective_user_limit(
    base: int, role_limits: Iterable[RoleLimit], member_roles: Iterable[int]
) -> int | None:
    """The per-user limit for a member; None means no per-user limit (an exempt role).

    A role limit replaces the server's limit for members with that role (so it may be lower,
    e.g. for new members); a member with several such roles gets the most generous one.
    """
    roles = set(member_roles)
    matching = [r for r in role_limits if r.role_id in roles]
    if any(r.exempt for r in matching):
        return None
    limits = [r.user_daily for r in matching if r.user_daily is not None]
    return max(limits) if limits else base


@dataclass(frozen=True)
class Usage:
    """Units used inside the window against one limit (None = unlimited)."""

    limit: int | None
    times: tuple[float, ...] = ()  # creation times of counted jobs in the window, oldest first
    window: float = WINDOW_S

    @property
    def used(self) -> int:
        return len(self.times)

    @property
    def remaining(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - self.used)

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.used >= self.limit

    def next_unit_at(self) -> float | None:
        """When `remaining` next grows by one, assuming no new jobs; None if it never will
        (nothing used, no limit, or a limit of 0).

        Above the limit (it was lowered), the first `used - limit` expiries free nothing.
        """
        if self.limit is None or self.limit <= 0 or not self.times:
            return None
        return self.times[max(0, self.used - self.limit)] + self.window


@dataclass(frozen=True)
class QuotaState:
    """A member's standing in one server: their own usage and the server's."""

    user: Usage
    guild: Usage

    @property
    def allowed(self) -> bool:
        return not (self.user.exhausted or self.guild.exhausted)

    @property
    def blocked_by(self) -> str | None:
        """Which limit refuses the next image ("user", "guild", "both") or None."""
        user, guild = self.user.exhausted, self.guild.exhausted
        if user and guild:
            return "both"
        return "user" if user else "guild" if guild else None

    def available_at(self) -> float | None:
        """When the next image will be allowed if it is refused now: the later of the
        blocking limits' next free units. None if allowed now or never (a limit of 0)."""
        times: list[float] = []
        for usage in (self.user, self.guild):
            if usage.exhausted:
                at = usage.next_unit_at()
                if at is None:
                    return None
                times.append(at)
        return max(times) if times else None


def plain_duration(seconds: float) -> str:
    """ "3 h 12 min", "45 min": the plain-text twin of `<t:…:R>`, rounded up so it never
    promises too early."""
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return "less than a minute"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def when_text(at: float, now: float) -> str:
    """A time both as a Discord timestamp and as plain text (for clients without markup)."""
    clock = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M UTC")
    return f"<t:{math.ceil(at)}:R> (in {plain_duration(at - now)}, at {clock})"


def refusal_text(state: QuotaState, now: float) -> str:
    """Why an image is refused, and when the next one frees up."""
    blocked = state.blocked_by
    if blocked in ("user", "both"):
        mine = plural(state.user.limit or 0, "image")
        head = f"You have used your {mine} for the last 24 hours in this server."
        if blocked == "both":
            head += f" The server has also used its {state.guild.limit}."
    else:
        theirs = plural(state.guild.limit or 0, "image")
        head = f"This server has used its {theirs} for the last 24 hours."
    at = state.available_at()
    if at is None:
        return f"{head} Image-making is switched off here (limit 0); ask a server admin."
    return f"{head} The next image frees up {when_text(at, now)}. Nothing was queued."


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def usage_line(usage: Usage) -> str:
    """'7 of 20 images left' or 'no limit (5 used)'."""
    if usage.remaining is None:
        return f"no limit ({plural(usage.used, 'image')} used)"
    return f"{usage.remaining} of {plural(usage.limit or 0, 'image')} left"


def summarize(state: QuotaState, now: float) -> Sequence[str]:
    """The lines of `/quota`."""
    lines = [
        f"🖼️ You: {usage_line(state.user)} (rolling 24 hours).",
        f"🏠 This server: {usage_line(state.guild)}.",
    ]
    if not state.allowed:
        at = state.available_at()
        if at is None:
            lines.append("⛔ Image-making is switched off here (limit 0).")
        else:
            lines.append(f"⏳ Your next image frees up {when_text(at, now)}.")
    else:
        at = state.user.next_unit_at()
        if at is not None:
            lines.append(f"⏳ One more of your images frees up {when_text(at, now)}.")
    return lines
