"""Quotas and server settings in SQLite: usage in the window, settings, role limits, audit.

The jobs table is the quota ledger (a counted job uses one unit), so there is no separate
counter to drift. `reserve` runs inside the transaction that inserts the job (BEGIN IMMEDIATE,
one writer at a time), so simultaneous requests cannot overdraw: each one sees the rows
inserted by those before it. The precheck before a download only reads and takes nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from bot.errors import UserError
from bot.limits import join_items
from bot.quota import (
    QuotaState,
    RoleLimit,
    Usage,
    effective_user_limit,
    refusal_text,
    window_cutoff,
)
from bot.store.db import Store
from config import Settings

if TYPE_CHECKING:
    from bot.jobs.service import NewJob

log = logging.getLogger(__name__)

REFUSAL_CHANNELS_CHARS = 1500  # the channel refusal's list; its sentence fits the rest

Conn = aiosqlite.Connection


@dataclass(frozen=True)
class GuildSettings:
    """One server's stored settings; None means "the operator's default"."""

    guild_id: int
    user_daily: int | None = None
    guild_daily: int | None = None
    allowed_channels: tuple[int, ...] | None = None  # None: every channel
    gallery_channel_id: int | None = None
    updated_at: float | None = None
    nsfw_channels: str = "filter"  # 'allow': unfiltered results in age-restricted channels
    previews: str = "on"  # 'off': no live previews in this server's status messages


@dataclass(frozen=True)
class AuditEntry:
    guild_id: int
    user_id: int
    at: float
    change: str


def _channels(raw: str | None) -> tuple[int, ...] | None:
    if raw is None:
        return None
    try:
        return tuple(int(c) for c in json.loads(raw))
    except (ValueError, TypeError):
        log.warning("unreadable allowed_channels %r; allowing every channel", raw)
        return None


def guild_settings_in(conn: sqlite3.Connection, guild_id: int) -> GuildSettings:
    row = conn.execute("SELECT * FROM guild_settings WHERE guild_id=?", (guild_id,)).fetchone()
    if row is None:
        return GuildSettings(guild_id)
    return GuildSettings(
        guild_id=guild_id,
        user_daily=row["user_daily"],
        guild_daily=row["guild_daily"],
        allowed_channels=_channels(row["allowed_channels"]),
        gallery_channel_id=row["gallery_channel_id"],
        updated_at=row["updated_at"],
        nsfw_channels=row["nsfw_channels"] or "filter",
        previews=row["previews"] or "on",
    )


def role_limits_in(conn: sqlite3.Connection, guild_id: int) -> list[RoleLimit]:
    rows = conn.execute(
        "SELECT role_id, user_daily, exempt FROM role_limits WHERE guild_id=? ORDER BY role_id",
        (guild_id,),
    ).fetchall()
    return [RoleLimit(r["role_id"], r["user_daily"], bool(r["exempt"])) for r in rows]


def reset_at_in(conn: sqlite3.Connection, guild_id: int, user_id: int) -> float | None:
    row = conn.execute(
        "SELECT at FROM usage_resets WHERE guild_id=? AND user_id=?", (guild_id, user_id)
    ).fetchone()
    return row["at"] if row else None


class QuotaStore:
    """Reads and changes quotas and server settings. Changes are audited in their own
    transaction; reads outside a transaction use the store's connection."""

    def __init__(
        self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    # -- reads ------------------------------------------------------------------------
    # Each read is plain sqlite3 code (`*_in`, run in the database thread: one round trip,
    # inside a caller's transaction when `db` is given) so that `reserve` can run whole
    # inside the transaction that inserts a job.
    async def guild_settings(self, guild_id: int, db: Conn | None = None) -> GuildSettings:
        return await self.store.in_thread(lambda conn: guild_settings_in(conn, guild_id), db)

    async def role_limits(self, guild_id: int, db: Conn | None = None) -> list[RoleLimit]:
        return await self.store.in_thread(lambda conn: role_limits_in(conn, guild_id), db)

    async def reset_at(self, guild_id: int, user_id: int, db: Conn | None = None) -> float | None:
        return await self.store.in_thread(lambda conn: reset_at_in(conn, guild_id, user_id), db)

    def limits(self, gs: GuildSettings) -> tuple[int, int]:
        """(per-user, per-server) limits: the server's own, never above the operator's
        ceilings (which may have been lowered since), else the operator's defaults."""
        s = self.settings
        user = (
            s.quota_user_daily
            if gs.user_daily is None
            else min(gs.user_daily, s.quota_user_ceiling)
        )
        guild = (
            s.quota_guild_daily
            if gs.guild_daily is None
            else min(gs.guild_daily, s.quota_guild_ceiling)
        )
        return user, guild

    async def state(
        self,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        now: float,
        db: Conn | None = None,
    ) -> QuotaState:
        """The member's and the server's usage and limits at `now`."""
        roles = tuple(role_ids)
        return await self.store.in_thread(
            lambda conn: self.state_in(conn, guild_id, user_id, roles, now), db
        )

    def state_in(
        self,
        conn: sqlite3.Connection,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        now: float,
    ) -> QuotaState:
        """`state`, in the database thread."""
        gs = guild_settings_in(conn, guild_id)
        base_user, guild_limit = self.limits(gs)
        ceiling = self.settings.quota_user_ceiling
        role_limits = [
            RoleLimit(
                r.role_id, None if r.user_daily is None else min(r.user_daily, ceiling), r.exempt
            )
            for r in role_limits_in(conn, guild_id)
        ]
        # @everyone's role id is the guild id; Discord does not list it among a member's roles.
        user_limit = effective_user_limit(base_user, role_limits, {*role_ids, guild_id})
        user_cutoff = window_cutoff(now, reset_at_in(conn, guild_id, user_id))
        # usage_kept: units of jobs whose rows /gallery forget-me deleted still count.
        rows = conn.execute(
            "SELECT created_at FROM jobs WHERE guild_id=? AND user_id=? AND counted=1 "
            "AND created_at>? UNION ALL SELECT created_at FROM usage_kept WHERE guild_id=? "
            "AND user_id=? AND counted=1 AND created_at>? ORDER BY created_at",
            (guild_id, user_id, user_cutoff) * 2,
        ).fetchall()
        user_times = tuple(r[0] for r in rows)
        guild_cutoff = window_cutoff(now)
        rows = conn.execute(
            "SELECT created_at FROM jobs WHERE guild_id=? AND counted=1 AND created_at>? "
            "UNION ALL SELECT created_at FROM usage_kept WHERE guild_id=? AND counted=1 "
            "AND created_at>? ORDER BY created_at",
            (guild_id, guild_cutoff) * 2,
        ).fetchall()
        guild_times = tuple(r[0] for r in rows)
        return QuotaState(Usage(user_limit, user_times), Usage(guild_limit, guild_times))

    async def withheld_count(self, guild_id: int, since: float) -> int:
        """Images the safety filter withheld in this server since `since`."""
        cursor = await self.store.db.execute(
            "SELECT count(*) FROM jobs WHERE guild_id=? AND state='withheld' AND created_at>?",
            (guild_id, since),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def unfiltered_count(self, guild_id: int, since: float) -> int:
        """Pictures of this server since `since` that no safety checker looked at (made by
        a worker without one; jobs from before this was recorded are not counted)."""
        cursor = await self.store.db.execute(
            "SELECT count(*) FROM jobs WHERE guild_id=? AND filtered=0 AND created_at>?",
            (guild_id, since),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def audit_log(self, guild_id: int, limit: int = 10) -> list[AuditEntry]:
        """The server's most recent settings changes, newest first."""
        cursor = await self.store.db.execute(
            "SELECT guild_id, user_id, at, change FROM settings_audit WHERE guild_id=? "
            "ORDER BY at DESC, id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [AuditEntry(*tuple(r)) for r in await cursor.fetchall()]

    # -- the guards -------------------------------------------------------------------
    def reserve(self, conn: sqlite3.Connection, new: NewJob, now: float) -> None:
        """`JobService.hooks.reserve` (in the database thread): refuse the job (nothing is
        inserted) if it would go over a limit. The job row the service then inserts is the
        reserved unit; a job that uses none (`counted` False: most of an upscale's tiles)
        is not refused."""
        if not new.counted:
            return
        state = self.state_in(conn, new.guild_id, new.user_id, new.role_ids, now)
        if not state.allowed:
            log.info(
                "quota refused job for user %d in guild %d (%s)",
                new.user_id,
                new.guild_id,
                state.blocked_by,
            )
            raise UserError(refusal_text(state, now))

    async def check(self, guild_id: int, user_id: int, role_ids: Iterable[int]) -> None:
        """The cheap refusal before any download; takes no unit."""
        now = self.clock()
        state = await self.state(guild_id, user_id, role_ids, now)
        if not state.allowed:
            raise UserError(refusal_text(state, now))

    async def check_channel(
        self, guild_id: int, channel_id: int | None, parent_id: int | None = None
    ) -> None:
        """Refuse use outside the server's allowed channels (a thread follows its parent)."""
        allowed = (await self.guild_settings(guild_id)).allowed_channels
        if allowed is None or channel_id in allowed or (parent_id and parent_id in allowed):
            return
        names = join_items([f"<#{c}>" for c in allowed], REFUSAL_CHANNELS_CHARS)
        raise UserError(f"In this server the image bot can only be used in: {names}.")

    # -- changes (each audited in the same transaction) -------------------------------
    async def _upsert(self, db: Conn, guild_id: int, now: float, **values: Any) -> None:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        sets = ", ".join(f"{c}=excluded.{c}" for c in values)
        await db.execute(
            f"INSERT INTO guild_settings (guild_id, {cols}, updated_at) VALUES (?, {marks}, ?) "
            f"ON CONFLICT(guild_id) DO UPDATE SET {sets}, updated_at=excluded.updated_at",
            (guild_id, *values.values(), now),
        )

    async def set_guild_values(self, db: Conn, guild_id: int, **values: Any) -> None:
        """Set columns of the server's settings row inside the caller's transaction (a
        feature's own setting, e.g. `/settings model`); audit it with `record`."""
        await self._upsert(db, guild_id, self.clock(), **values)

    async def record(self, db: Conn, guild_id: int, actor_id: int, change: str) -> None:
        """Audit a change another module made inside the caller's transaction `db`."""
        await self._audit(db, guild_id, actor_id, self.clock(), change)

    async def _audit(self, db: Conn, guild_id: int, user_id: int, now: float, change: str) -> None:
        await db.execute(
            "INSERT INTO settings_audit (guild_id, user_id, at, change) VALUES (?, ?, ?, ?)",
            (guild_id, user_id, now, change),
        )
        log.info("guild %d settings changed by %d: %s", guild_id, user_id, change)

    async def set_limits(
        self, guild_id: int, actor_id: int, user_daily: int | None, guild_daily: int | None
    ) -> str:
        """Set the per-user and/or per-server limit (None leaves one as it is)."""
        s = self.settings
        if user_daily is None and guild_daily is None:
            raise UserError("Give a new `user` limit, a new `guild` limit, or both.")
        for value, ceiling, what in (
            (user_daily, s.quota_user_ceiling, "per member"),
            (guild_daily, s.quota_guild_ceiling, "for the whole server"),
        ):
            if value is not None and not 0 <= value <= ceiling:
                raise UserError(
                    f"{value} images {what} is not allowed: this bot's operator allows from 0 "
                    f"up to {ceiling} images {what} per 24 hours."
                )
        now = self.clock()
        async with self.store.transaction() as db:
            old_user, old_guild = self.limits(await self.guild_settings(guild_id, db))
            values: dict[str, int] = {}
            parts: list[str] = []
            if user_daily is not None:
                values["user_daily"] = user_daily
                parts.append(f"per-member limit {old_user} → {user_daily}")
            if guild_daily is not None:
                values["guild_daily"] = guild_daily
                parts.append(f"server limit {old_guild} → {guild_daily}")
            change = "; ".join(parts)
            await self._upsert(db, guild_id, now, **values)
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def allow_channel(self, guild_id: int, actor_id: int, channel_id: int) -> str:
        now = self.clock()
        async with self.store.transaction() as db:
            current = (await self.guild_settings(guild_id, db)).allowed_channels or ()
            if channel_id in current:
                raise UserError(f"<#{channel_id}> is already allowed.")
            channels = [*current, channel_id]
            change = f"allowed channel <#{channel_id}>"
            await self._upsert(db, guild_id, now, allowed_channels=json.dumps(channels))
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def disallow_channel(self, guild_id: int, actor_id: int, channel_id: int) -> str:
        now = self.clock()
        async with self.store.transaction() as db:
            current = (await self.guild_settings(guild_id, db)).allowed_channels
            if current is None:
                raise UserError(
                    "The bot is allowed in every channel. Choose channels with "
                    "`/settings channel-allow` first; then it works only in those."
                )
            if channel_id not in current:
                raise UserError(f"<#{channel_id}> is not on the list of allowed channels.")
            if len(current) == 1:
                raise UserError(
                    f"<#{channel_id}> is the only allowed channel. Allow another one first, or "
                    "use `/settings channel-all` to allow every channel."
                )
            channels = [c for c in current if c != channel_id]
            change = f"removed channel <#{channel_id}>"
            await self._upsert(db, guild_id, now, allowed_channels=json.dumps(channels))
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def allow_all_channels(self, guild_id: int, actor_id: int) -> str:
        now = self.clock()
        change = "allowed every channel"
        async with self.store.transaction() as db:
            await self._upsert(db, guild_id, now, allowed_channels=None)
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def set_gallery_channel(
        self, guild_id: int, actor_id: int, channel_id: int | None
    ) -> str:
        now = self.clock()
        change = f"gallery channel → <#{channel_id}>" if channel_id else "gallery channel → none"
        async with self.store.transaction() as db:
            await self._upsert(db, guild_id, now, gallery_channel_id=channel_id)
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def set_nsfw_channels(self, guild_id: int, actor_id: int, mode: str) -> str:
        """'allow': results in age-restricted channels are posted unfiltered (as spoilers);
        'filter' (the default): filtered there like everywhere else."""
        if mode not in ("allow", "filter"):
            raise UserError("Choose `allow` or `filter`.")
        now = self.clock()
        change = (
            "age-restricted channels → unfiltered results allowed"
            if mode == "allow"
            else "age-restricted channels → filtered"
        )
        async with self.store.transaction() as db:
            await self._upsert(db, guild_id, now, nsfw_channels=mode)
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def set_previews(self, guild_id: int, actor_id: int, mode: str) -> str:
        """'on' (the default): running jobs show live previews; 'off': the bar alone."""
        if mode not in ("on", "off"):
            raise UserError("Choose `on` or `off`.")
        now = self.clock()
        change = f"live previews → {mode}"
        async with self.store.transaction() as db:
            await self._upsert(db, guild_id, now, previews=mode)
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def set_role_limit(
        self, guild_id: int, actor_id: int, role_id: int, user_daily: int | None, exempt: bool
    ) -> str:
        """Give a role its own per-member limit or an exemption; neither removes the rule."""
        ceiling = self.settings.quota_user_ceiling
        if user_daily is not None and not 0 <= user_daily <= ceiling:
            raise UserError(
                f"{user_daily} images per member is not allowed: this bot's operator allows "
                f"from 0 up to {ceiling} images per member per 24 hours."
            )
        now = self.clock()
        async with self.store.transaction() as db:
            if user_daily is None and not exempt:
                await db.execute(
                    "DELETE FROM role_limits WHERE guild_id=? AND role_id=?", (guild_id, role_id)
                )
                change = f"role <@&{role_id}>: no own limit"
            else:
                await db.execute(
                    "INSERT INTO role_limits (guild_id, role_id, user_daily, exempt) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(guild_id, role_id) DO UPDATE SET "
                    "user_daily=excluded.user_daily, exempt=excluded.exempt",
                    (guild_id, role_id, user_daily, int(exempt)),
                )
                change = (
                    f"role <@&{role_id}>: exempt from the per-member limit"
                    if exempt
                    else f"role <@&{role_id}>: {user_daily} images per member"
                )
            await self._audit(db, guild_id, actor_id, now, change)
        return change

    async def reset_usage(self, guild_id: int, actor_id: int, member_id: int) -> str:
        """The member's jobs made until now stop counting against their own limit. The
        server's total keeps them: the operator's server ceiling cannot be reset around."""
        now = self.clock()
        change = f"reset the usage of <@{member_id}>"
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO usage_resets (guild_id, user_id, at) VALUES (?, ?, ?) "
                "ON CONFLICT(guild_id, user_id) DO UPDATE SET at=excluded.at",
                (guild_id, member_id, now),
            )
            await self._audit(db, guild_id, actor_id, now, change)
        return change
