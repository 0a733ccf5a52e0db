"""The server gallery's data: one row per finished result, browsed newest first.

Galleries never cross servers. Every query here takes the guild id as its first argument and
`_where` puts it first in every WHERE clause, so no code path can ask for "any server". A page
is found from an *anchor* (the job shown now) and a direction rather than from a page number,
so paging stays on the right picture while new results arrive or old ones are removed.

Visibility follows the channel a result was made in: `channel_public` (its channel was
viewable by @everyone and not age-restricted) lets it be seen from anywhere in the server;
any other entry is seen only from its own channel (`GalleryFilter.here`, which for a thread
holds the thread and its parent). Every browse query applies that rule in `_where`.

Rows are kept (flagged `removed`) when a result is deleted: a gallery message showing that
picture can still page past it. Search words are matched against `search_text`, the prompt
case-folded in Python at insert, so non-ASCII prompts match case-insensitively too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from bot.store.db import Job, Store

Direction = Literal["newer", "older"]

MAX_SEARCH_WORDS = 5
MAX_SEARCH_CHARS = 100


def message_url(guild_id: int, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


def fold(text: str) -> str:
    """The form prompts and search words are compared in."""
    return text.casefold()


def search_words(text: str | None) -> list[str]:
    """The distinct words of a search (at most MAX_SEARCH_WORDS); all must be in the prompt."""
    words: list[str] = []
    for word in fold((text or "")[:MAX_SEARCH_CHARS]).split():
        if word not in words:
            words.append(word)
    return words[:MAX_SEARCH_WORDS]


def normalize_search(text: str | None) -> str | None:
    """One spelling per search, so equal searches share one stored id."""
    return " ".join(search_words(text)) or None


@dataclass(frozen=True)
class GalleryFilter:
    """Who made it and which words its prompt holds; empty = the whole server. `here`:
    the viewer's channel ids (a thread and its parent), whose non-public results show too."""

    user_id: int | None = None
    search: str | None = None
    here: tuple[int, ...] = ()
    model: str | None = None
    """Only pictures made with this catalogue model."""


@dataclass
class GalleryEntry:
    """One row of `gallery`. `image_path` is relative to DATA_DIR."""

    job_id: int
    guild_id: int
    user_id: int
    channel_id: int
    message_id: int | None
    prompt: str
    negative_prompt: str | None
    strength: float
    seed: int
    image_path: str
    created_at: float
    pruned: int
    removed: int
    shared_channel_id: int | None
    shared_message_id: int | None
    channel_public: int = 1

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> GalleryEntry:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def key(self) -> tuple[float, int]:
        return (self.created_at, self.job_id)

    @property
    def url(self) -> str | None:
        if not self.message_id:
            return None
        return message_url(self.guild_id, self.channel_id, self.message_id)


@dataclass
class Page:
    """One picture of a (filtered) gallery and where it stands: index 1 is the newest."""

    entry: GalleryEntry
    index: int
    total: int

    @property
    def has_newer(self) -> bool:
        return self.index > 1

    @property
    def has_older(self) -> bool:
        return self.index < self.total


def _where(guild_id: int, filt: GalleryFilter) -> tuple[str, list[Any]]:
    """The WHERE clause of a browse: always this guild, never removed entries, and a
    non-public result only from inside its own channel."""
    clause = ["guild_id=?", "removed=0"]
    params: list[Any] = [guild_id]
    if filt.here:
        marks = ", ".join("?" for _ in filt.here)
        clause.append(f"(channel_public=1 OR channel_id IN ({marks}))")
        params.extend(filt.here)
    else:
        clause.append("channel_public=1")
    if filt.user_id:
        clause.append("user_id=?")
        params.append(filt.user_id)
    for word in search_words(filt.search):
        clause.append("instr(search_text, ?) > 0")
        params.append(word)
    if filt.model:
        clause.append("job_id IN (SELECT id FROM jobs WHERE model=?)")
        params.append(filt.model)
    return " AND ".join(clause), params


_COLUMNS = ", ".join(f.name for f in fields(GalleryEntry))


class GalleryStore:
    """Queries on the `gallery` and `gallery_searches` tables (migration 3)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _one(self, sql: str, params: Iterable[Any]) -> GalleryEntry | None:
        row = await (await self.store.db.execute(sql, list(params))).fetchone()
        return GalleryEntry.from_row(row) if row else None

    async def add(self, job: Job, created_at: float) -> GalleryEntry | None:
        """Put a finished job in its server's gallery (once; a second call changes nothing)."""
        if not job.output_path:
            return None
        async with self.store.transaction() as db:
            await db.execute(
                """
                INSERT OR IGNORE INTO gallery (job_id, guild_id, user_id, channel_id, message_id,
                    prompt, negative_prompt, strength, seed, image_path, search_text, created_at,
                    channel_public)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    job.id, job.guild_id, job.user_id, job.channel_id, job.result_message_id,
                    job.prompt, job.negative_prompt, job.strength, job.seed, job.output_path,
                    fold(job.prompt), created_at,
                    int(bool(job.channel_public) and not job.channel_nsfw),
                ),
            )  # fmt: skip
        return await self.get(job.guild_id, job.id)

    async def get(
        self, guild_id: int, job_id: int, *, include_removed: bool = False
    ) -> GalleryEntry | None:
        sql = f"SELECT {_COLUMNS} FROM gallery WHERE guild_id=? AND job_id=?"
        if not include_removed:
            sql += " AND removed=0"
        return await self._one(sql, (guild_id, job_id))

    async def remove(self, job_id: int) -> GalleryEntry | None:
        """Take a result out of its gallery; returns the entry as it was (None if absent)."""
        async with self.store.transaction() as db:
            cursor = await db.execute(
                f"SELECT {_COLUMNS} FROM gallery WHERE job_id=? AND removed=0", (job_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await db.execute("UPDATE gallery SET removed=1 WHERE job_id=?", (job_id,))
        return GalleryEntry.from_row(row)

    async def set_shared(self, job_id: int, channel_id: int, message_id: int) -> bool:
        """Remember the copy posted to the gallery channel, to delete it with the result.

        False: the entry was removed (or forgotten) while the copy was uploading, so the
        caller must delete the copy itself. `remove` and this run in write transactions one
        at a time: either `remove` sees the copy, or this sees the removal."""
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "UPDATE gallery SET shared_channel_id=?, shared_message_id=? "
                "WHERE job_id=? AND removed=0",
                (channel_id, message_id, job_id),
            )
            return cursor.rowcount > 0

    async def mark_pruned(self, paths: Iterable[str]) -> None:
        """Flag the entries whose image file the storage cap deleted."""
        paths = list(paths)
        async with self.store.transaction() as db:
            for start in range(0, len(paths), 500):
                chunk = paths[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                await db.execute(
                    f"UPDATE gallery SET pruned=1 WHERE image_path IN ({marks})", chunk
                )

    # -- searches: a browse's words live here so the button custom_id stays short ------
    async def search_id(self, guild_id: int, search: str) -> int:
        """The id of a (normalized) search in this guild, stored the first time it is used."""
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO gallery_searches (guild_id, search) VALUES (?, ?)",
                (guild_id, search),
            )
            cursor = await db.execute(
                "SELECT id FROM gallery_searches WHERE guild_id=? AND search=?", (guild_id, search)
            )
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def search_text(self, guild_id: int, search_id: int) -> str | None:
        cursor = await self.store.db.execute(
            "SELECT search FROM gallery_searches WHERE guild_id=? AND id=?", (guild_id, search_id)
        )
        row = await cursor.fetchone()
        return str(row[0]) if row else None

    # -- browsing ---------------------------------------------------------------------
    async def count(self, guild_id: int, filt: GalleryFilter) -> int:
        where, params = _where(guild_id, filt)
        cursor = await self.store.db.execute(f"SELECT count(*) FROM gallery WHERE {where}", params)
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _step(
        self, guild_id: int, filt: GalleryFilter, key: tuple[float, int] | None, direction: str
    ) -> GalleryEntry | None:
        """The next entry from `key` towards `direction` ("newest" when key is None)."""
        where, params = _where(guild_id, filt)
        if key is None:
            order = "DESC"
        elif direction == "older":
            where += " AND (created_at, job_id) < (?, ?)"
            params.extend(key)
            order = "DESC"
        else:
            where += " AND (created_at, job_id) > (?, ?)"
            params.extend(key)
            order = "ASC"
        sql = (
            f"SELECT {_COLUMNS} FROM gallery WHERE {where} "
            f"ORDER BY created_at {order}, job_id {order} LIMIT 1"
        )
        return await self._one(sql, params)

    async def page(
        self,
        guild_id: int,
        filt: GalleryFilter,
        anchor: int | None = None,
        direction: Direction | None = None,
    ) -> Page | None:
        """The picture one step from `anchor` (or the anchor itself, or the newest).

        Where there is nothing further that way (the end, or entries were removed since the
        message was drawn) it stays on the anchor, then tries the other way, then the newest.
        None: nothing in this guild matches.
        """
        entry: GalleryEntry | None = None
        anchored = await self.get(guild_id, anchor, include_removed=True) if anchor else None
        if anchored is not None:
            other: Direction = "newer" if direction == "older" else "older"
            if direction is not None:
                entry = await self._step(guild_id, filt, anchored.key, direction)
            if entry is None and not anchored.removed:
                where, params = _where(guild_id, filt)
                entry = await self._one(
                    f"SELECT {_COLUMNS} FROM gallery WHERE {where} AND job_id=?",
                    [*params, anchored.job_id],
                )
            if entry is None:
                entry = await self._step(guild_id, filt, anchored.key, other)
        if entry is None:
            entry = await self._step(guild_id, filt, None, "older")
        if entry is None:
            return None
        where, params = _where(guild_id, filt)
        cursor = await self.store.db.execute(
            f"SELECT count(*), sum((created_at, job_id) > (?, ?)) FROM gallery WHERE {where}",
            [*entry.key, *params],
        )
        row = await cursor.fetchone()
        assert row is not None
        return Page(entry, index=int(row[1] or 0) + 1, total=int(row[0]))
