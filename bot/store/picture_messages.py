"""Which public messages show which job's picture (migration "picture messages").

A picture is shown in more places than its own result message: "Use" under a comparison and
"Open…" under an album post it again, a comparison re-uploads the original it was made from,
an album holds ten. Each such message is recorded here against every job whose picture it
shows, so Delete, `/gallery remove` and forget-me can reach all of them. A job's own result
message stays in `jobs.result_message_id` and its gallery-channel copy in `gallery`.

Kinds say what deleting one picture does to the message:
- `single`: the message shows that picture alone, so it is deleted;
- `album` / `comparison`: it shows others too, so its owner re-renders it without that one;
- `gallery`: a public `/gallery browse` page showing it, which says it was removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import aiosqlite

from bot.store.db import Store

Kind = Literal["single", "album", "comparison", "gallery"]


@dataclass(frozen=True)
class PictureMessage:
    """One public message showing one job's picture."""

    message_id: int
    channel_id: int
    guild_id: int
    job_id: int
    kind: Kind


def _marks(values: list[int]) -> str:
    return ", ".join("?" for _ in values)


class PictureMessages:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(
        self, guild_id: int, channel_id: int, message_id: int, job_ids: Iterable[int], kind: Kind
    ) -> None:
        """Remember that `message_id` shows each of `job_ids` (again: no change)."""
        rows = [(message_id, channel_id, guild_id, job_id, kind) for job_id in job_ids]
        if not rows:
            return
        async with self.store.transaction() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO picture_messages "
                "(message_id, channel_id, guild_id, job_id, kind) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    async def of_job(self, job_id: int) -> list[PictureMessage]:
        """Every recorded message showing this job's picture."""
        return await self.of_jobs_in(self.store.db, [job_id])

    async def of_jobs_in(
        self, db: aiosqlite.Connection, job_ids: list[int]
    ) -> list[PictureMessage]:
        """Every recorded message showing one of `job_ids`, inside the caller's transaction."""
        if not job_ids:
            return []
        cursor = await db.execute(
            "SELECT message_id, channel_id, guild_id, job_id, kind FROM picture_messages "
            f"WHERE job_id IN ({_marks(job_ids)}) ORDER BY message_id",
            job_ids,
        )
        return [PictureMessage(*row) for row in await cursor.fetchall()]

    async def forget_in(self, db: aiosqlite.Connection, job_ids: list[int]) -> None:
        """Drop the records of jobs whose rows go (forget-me), inside its transaction. A
        gallery page's stays until the page is redrawn: it says where the page is."""
        if job_ids:
            await db.execute(
                f"DELETE FROM picture_messages WHERE job_id IN ({_marks(job_ids)}) "
                "AND kind != 'gallery'",
                job_ids,
            )

    async def place(self, message_id: int) -> tuple[int, int] | None:
        """(guild, channel) of a recorded message."""
        cursor = await self.store.db.execute(
            "SELECT guild_id, channel_id FROM picture_messages WHERE message_id=? LIMIT 1",
            (message_id,),
        )
        row = await cursor.fetchone()
        return (int(row[0]), int(row[1])) if row else None

    async def forget_message(self, message_id: int) -> None:
        """The message itself is gone: nothing to remove or edit there any more."""
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM picture_messages WHERE message_id=?", (message_id,))
