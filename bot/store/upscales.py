"""Upscales in SQLite: which tile jobs form one upscale, in which order, where it shows.

Written in the transaction that queues its tiles (`create_in`), so an upscale never exists
half; its final job (the safety check of the blended picture) is recorded in the
transaction that queues that job (`finish_in`), so it is queued once however often the
last tile's end is handled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiosqlite

from bot.store.db import Job, Store
from pipeline.tiling import Box


@dataclass(frozen=True)
class Upscale:
    id: int
    guild_id: int
    channel_id: int
    user_id: int
    source_job_id: int | None
    source_path: str  # the picture it enlarges, an input of its own under DATA_DIR
    scale: int
    seed: int
    width: int
    height: int
    boxes: tuple[Box, ...]
    message_id: int | None
    application_id: int | None
    interaction_token: str | None
    token_from: float | None
    final_job_id: int | None
    state: str  # tiles | checking | failed | cancelled | withheld


def _upscale(row: aiosqlite.Row) -> Upscale:
    boxes = tuple(tuple(int(v) for v in box) for box in json.loads(row["boxes"]))
    return Upscale(
        row["id"], row["guild_id"], row["channel_id"], row["user_id"], row["source_job_id"],
        row["source_path"], row["scale"], row["seed"], row["width"], row["height"],
        boxes,  # type: ignore[arg-type]
        row["message_id"], row["application_id"], row["interaction_token"], row["token_from"],
        row["final_job_id"], row["state"],
    )  # fmt: skip


class UpscaleStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create_in(
        self, db: aiosqlite.Connection, up: Upscale, tile_job_ids: list[int]
    ) -> int:
        """Write an upscale (its `id` is ignored) and its tiles, in tile order, inside the
        transaction that queues the tile jobs."""
        cursor = await db.execute(
            "INSERT INTO upscales (guild_id, channel_id, user_id, source_job_id, source_path, "
            "scale, seed, width, height, boxes, application_id, interaction_token, token_from, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                up.guild_id, up.channel_id, up.user_id, up.source_job_id, up.source_path,
                up.scale, up.seed, up.width, up.height, json.dumps(up.boxes),
                up.application_id, up.interaction_token, up.token_from, time.time(),
            ),
        )  # fmt: skip
        upscale_id = cursor.lastrowid
        assert upscale_id is not None
        await db.executemany(
            "INSERT INTO upscale_tiles (upscale_id, position, job_id) VALUES (?, ?, ?)",
            [(upscale_id, i, job_id) for i, job_id in enumerate(tile_job_ids)],
        )
        return upscale_id

    async def finish_in(self, db: aiosqlite.Connection, upscale_id: int, final_job_id: int) -> bool:
        """Record the final job, only while the tiles were still the upscale's state."""
        cursor = await db.execute(
            "UPDATE upscales SET final_job_id=?, state='checking' WHERE id=? AND state='tiles'",
            (final_job_id, upscale_id),
        )
        return cursor.rowcount == 1

    async def end(self, upscale_id: int, state: str) -> bool:
        """The upscale stopped (a tile failed, was cancelled or withheld); False if it had
        already moved on."""
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "UPDATE upscales SET state=? WHERE id=? AND state='tiles'", (state, upscale_id)
            )
            return cursor.rowcount == 1

    async def set_message(self, upscale_id: int, message_id: int) -> None:
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE upscales SET message_id=? WHERE id=?", (message_id, upscale_id)
            )

    async def get(self, upscale_id: int) -> Upscale | None:
        cursor = await self.store.db.execute("SELECT * FROM upscales WHERE id=?", (upscale_id,))
        row = await cursor.fetchone()
        return _upscale(row) if row else None

    async def of_tile(self, job_id: int) -> int | None:
        cursor = await self.store.db.execute(
            "SELECT upscale_id FROM upscale_tiles WHERE job_id=?", (job_id,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else None

    async def of_final(self, job_id: int) -> Upscale | None:
        cursor = await self.store.db.execute(
            "SELECT * FROM upscales WHERE final_job_id=?", (job_id,)
        )
        row = await cursor.fetchone()
        return _upscale(row) if row else None

    async def tiles(self, upscale_id: int) -> list[Job | None]:
        """The upscale's tile jobs in tile order (None: a row /gallery forget-me removed)."""
        cursor = await self.store.db.execute(
            "SELECT job_id FROM upscale_tiles WHERE upscale_id=? ORDER BY position",
            (upscale_id,),
        )
        return [await self.store.get_job(int(r[0])) for r in await cursor.fetchall()]

    async def in_state(self, state: str) -> list[int]:
        cursor = await self.store.db.execute("SELECT id FROM upscales WHERE state=?", (state,))
        return [int(r[0]) for r in await cursor.fetchall()]

    async def refund_tiles(self, upscale_id: int) -> None:
        """Every tile's unit back: the upscale made no picture."""
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE jobs SET counted=0 WHERE id IN "
                "(SELECT job_id FROM upscale_tiles WHERE upscale_id=?)",
                (upscale_id,),
            )
