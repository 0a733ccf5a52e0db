"""Series in SQLite (migration v6): which jobs form an album, in which order, where it is."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiosqlite

from bot.series import Item
from bot.store.db import Job, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Series:
    id: int
    guild_id: int
    channel_id: int
    user_id: int
    size: int
    seed: int
    message_id: int | None


class SeriesStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create_in(
        self,
        db: aiosqlite.Connection,
        guild_id: int,
        channel_id: int,
        user_id: int,
        seed: int,
        items: list[tuple[int, int, str]],
    ) -> int:
        """Write a series and its items `(position, job_id, label)` inside the caller's
        transaction: the one that queues its jobs, so a series never exists half."""
        cursor = await db.execute(
            "INSERT INTO series (guild_id, channel_id, user_id, size, seed, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (guild_id, channel_id, user_id, len(items), seed, time.time()),
        )
        series_id = cursor.lastrowid
        assert series_id is not None
        await db.executemany(
            "INSERT INTO series_items (series_id, position, job_id, label) VALUES (?, ?, ?, ?)",
            [(series_id, position, job_id, label) for position, job_id, label in items],
        )
        return series_id

    async def set_message(self, series_id: int, message_id: int) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE series SET message_id=? WHERE id=?", (message_id, series_id))

    async def get(self, series_id: int) -> Series | None:
        cursor = await self.store.db.execute("SELECT * FROM series WHERE id=?", (series_id,))
        row = await cursor.fetchone()
        if row is None:
            return None
        return Series(
            row["id"], row["guild_id"], row["channel_id"], row["user_id"], row["size"],
            row["seed"], row["message_id"],
        )  # fmt: skip

    async def of_message(self, message_id: int) -> int | None:
        """The series whose album is `message_id`."""
        cursor = await self.store.db.execute(
            "SELECT id FROM series WHERE message_id=?", (message_id,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else None

    async def of_job(self, job_id: int) -> int | None:
        cursor = await self.store.db.execute(
            "SELECT series_id FROM series_items WHERE job_id=?", (job_id,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else None

    async def active_jobs(self) -> list[tuple[int, int]]:
        """(job id, series id) of series jobs still waiting or running."""
        cursor = await self.store.db.execute(
            "SELECT si.job_id, si.series_id FROM series_items si JOIN jobs j ON j.id = si.job_id "
            "WHERE j.state IN ('queued', 'running')"
        )
        return [(int(r[0]), int(r[1])) for r in await cursor.fetchall()]

    async def items(self, series_id: int) -> list[tuple[Item, Job | None]]:
        """The series' images in input order, each with its job (None once forgotten)."""
        cursor = await self.store.db.execute(
            "SELECT position, job_id, label FROM series_items WHERE series_id=? ORDER BY position",
            (series_id,),
        )
        out: list[tuple[Item, Job | None]] = []
        for position, job_id, label in await cursor.fetchall():
            job = await self.store.get_job(job_id)
            state = job.state if job else "deleted"
            has_image = bool(job and job.state == "done" and job.output_path)
            out.append((Item(position, label, job_id, state, has_image), job))
        return out
