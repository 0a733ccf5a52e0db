"""SQLite (WAL, aiosqlite) holding everything that must survive a restart.

One connection per bot; writes happen in explicit transactions. A database that cannot be
read is an error at start: it is never re-created, because that would wipe usage history.
A database locked by another process is waited on (`busy_timeout`), and if the lock stays,
reported as held by that process, never as damaged.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.store.group_commit import GroupCommit, GroupRead
from bot.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "running")
T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0  # how long a statement waits on another process's lock


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" / "database table is locked" (SQLITE_BUSY/LOCKED)."""
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


class StoreError(RuntimeError):
    """The database cannot be used; the message says which file and what to do."""


@dataclass
class Job:
    """One row of `jobs`. Paths are relative to DATA_DIR."""

    id: int
    guild_id: int
    channel_id: int
    user_id: int
    kind: str
    parent_id: int | None
    prompt: str
    negative_prompt: str | None
    strength: float
    seed: int
    steps: int
    guidance: float
    input_path: str
    input_width: int
    input_height: int
    output_path: str | None
    state: str
    counted: int
    error: str | None
    steps_run: int | None
    steps_total: int | None
    seconds: float | None
    model: str | None
    application_id: int | None
    interaction_token: str | None
    token_expires_at: float | None
    status_message_id: int | None
    result_message_id: int | None
    reply_to_message_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    channel_public: int = 1
    channel_nsfw: int = 0
    nsfw: int = 0
    style: str | None = None  # the saved style's name, when one was applied
    mode: str = "img2img"  # or "inpaint": only the masked region is regenerated
    mask_path: str | None = None  # inpaint: the stored mask, next to the input
    mask_source: str | None = None  # inpaint: "mask", "transparent area" or region words
    region: str | None = None  # inpaint: words the worker turns into the mask
    crop: str = "auto"  # inpaint: auto | on | off (generate a box around a small mask)
    delivery_tries: int = 0  # starts that tried to deliver its final message again
    filtered: int | None = None
    """1: a safety checker looked at the picture; 0: none was loaded (not filtered); None:
    the job made no picture or ended before this was recorded."""
    structure: str | None = None  # edges | lines: a ControlNet holds the input's structure
    structure_weight: float = 1.0  # how strongly (0.1–2.0)
    structure_skipped: str | None = None
    """The kind its style asked for that its model has no ControlNet for (it ran without,
    and the result says so)."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """By position: `sqlite3.Row` finds a name by comparing it with every column, so
        reading 45 fields by name cost about 0.1 ms a row (a job's row is read several
        times on its way); the positions are worked out once per column list."""
        keys = tuple(row.keys())
        places = _FIELD_PLACES.get(keys)
        if places is None:
            places = _FIELD_PLACES[keys] = tuple(keys.index(f.name) for f in fields(cls))
        return cls(*[row[i] for i in places])

    def token_valid(self, now: float) -> bool:
        return bool(self.interaction_token) and (self.token_expires_at or 0) > now


_FIELD_PLACES: dict[tuple[str, ...], tuple[int, ...]] = {}
"""A `SELECT *` column list → where each `Job` field is in it (see `Job.from_row`)."""

JOB_INSERT_FIELDS = (
    "guild_id", "channel_id", "user_id", "kind", "parent_id", "prompt", "negative_prompt",
    "strength", "seed", "steps", "guidance", "input_path", "input_width", "input_height",
    "application_id", "interaction_token", "token_expires_at", "reply_to_message_id",
    "created_at", "channel_public", "channel_nsfw", "style", "mode", "mask_path",
    "mask_source", "region", "crop", "counted", "model", "structure", "structure_weight",
    "structure_skipped",
)  # fmt: skip


class Store:
    """The bot's database. Use `Store.open(path)`; close with `close()`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self._write_lock = asyncio.Lock()
        self.transactions = 0  # write transactions begun (the fleet bench counts them)
        self._group = GroupCommit(db, self._write_lock, self._begun)
        self._reads = GroupRead(db)

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Store:
        """Open (and migrate) the database. Waits up to `busy_timeout_s` on a lock that
        another process holds: `busy_timeout` is set before the first read, so a lock is
        never mistaken for a damaged file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_s)
        db.row_factory = sqlite3.Row
        store = cls(db, path)
        try:
            await db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            await store._check_readable()
            await db.execute("PRAGMA journal_mode=WAL")
            # WAL's recommended durability: a commit survives any crash or restart of the
            # bot (only a power cut or OS crash may roll back the newest commits, never
            # corrupting); FULL's fsync per commit cost 0.1 ms of CPU each, ~5 a job.
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await store._migrate()
        except sqlite3.OperationalError as exc:
            await db.close()
            if not is_locked(exc):
                raise StoreError(f"The database {path} cannot be used ({exc}).") from None
            raise StoreError(
                f"The database {path} is locked by another process: it stayed locked for "
                f"{busy_timeout_s:g} s. Another program holds it, for example a second bot "
                "using the same DATA_DIR. Stop that process (or give this bot its own "
                "DATA_DIR), then start again; the file itself is fine."
            ) from None
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise StoreError(
                f"The database {path} cannot be read ({exc}). It was left untouched; restore it "
                "from a backup or move it away to start with an empty one."
            ) from None
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self.db.close()

    async def _check_readable(self) -> None:
        result = await (await self.db.execute("PRAGMA quick_check")).fetchone()
        if result is None or result[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result[0] if result else '?'}")

    async def schema_version(self) -> int:
        row = await (await self.db.execute("PRAGMA user_version")).fetchone()
        return int(row[0])

    async def _migrate(self) -> None:
        current = await self.schema_version()
        if current > len(MIGRATIONS):
            raise StoreError(
                f"The database {self.path} has schema version {current}, newer than this bot "
                f"knows ({len(MIGRATIONS)}). Upgrade the bot."
            )
        latest = len(MIGRATIONS)
        if current == latest:
            log.info("database %s (schema version %d)", self.path, latest)
        else:  # one line at start, however many steps (each step at debug level)
            what = "creating" if current == 0 else f"upgrading from version {current}"
            log.info("database %s: %s to schema version %d", self.path, what, latest)
        for version, (name, statements) in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            log.debug("migrating database to version %d: %s", version, name)
            async with self.transaction() as db:
                for sql in statements:
                    await db.execute(sql)
                await db.execute(f"PRAGMA user_version={version}")

    async def run_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in a write transaction run whole in the database thread:
        one round trip instead of one per statement (BEGIN, each statement, COMMIT). For
        the writes every job makes, on the one write lock; those that wait meanwhile share
        the next transaction (`bot.store.group_commit`). `work` is plain sqlite3 code (it
        cannot await); an exception rolls back its writes and reaches its caller."""
        return await self._group.run(work)

    def _begun(self) -> None:
        self.transactions += 1

    async def in_thread(
        self, work: Callable[[sqlite3.Connection], T], db: aiosqlite.Connection | None = None
    ) -> T:
        """`work(connection)` (plain sqlite3 code) in the database thread, one round trip:
        with `db`, inside that caller's open transaction; without, among the reads that
        wait meanwhile (`GroupRead`), so `work` only reads then."""
        if db is None:
            return await self._reads.run(work)
        return await db._execute(work, db._conn)  # type: ignore[no-any-return]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction at a time (BEGIN IMMEDIATE), committed or rolled back.
        A task cancelled while its BEGIN waits in the database thread (a stop cancels
        tasks wherever they are) rolls back what that BEGIN opened: an open transaction
        left behind would make every later one fail."""
        async with self._write_lock:
            self.transactions += 1
            try:
                await self.db.execute("BEGIN IMMEDIATE")
            except asyncio.CancelledError:
                await self.db._execute(_rollback_if_open, self.db._conn)
                raise
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            else:
                await self.db.execute("COMMIT")

    # -- meta (small key/value facts about this installation) -----------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await (await self.db.execute("SELECT value FROM meta WHERE key=?", (key,))).fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    # -- jobs -------------------------------------------------------------------------
    async def insert_job(self, db: aiosqlite.Connection, **values: Any) -> int:
        """Insert a job inside a caller's transaction; returns its id."""
        return await self.in_thread(lambda conn: insert_job_in(conn, **values).id, db)

    async def get_job(self, job_id: int) -> Job | None:
        """One round trip to the database thread (execute and fetch together), shared with
        the reads that wait meanwhile (`GroupRead`)."""

        def read(conn: sqlite3.Connection) -> sqlite3.Row | None:
            return conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()  # type: ignore[no-any-return]

        row = await self.in_thread(read)
        return None if row is None else Job.from_row(row)

    async def jobs_in_states(self, states: Iterable[str]) -> list[Job]:
        states = list(states)
        sql = f"SELECT * FROM jobs WHERE state IN ({', '.join('?' for _ in states)}) ORDER BY id"
        rows = await (await self.db.execute(sql, states)).fetchall()
        return [Job.from_row(r) for r in rows]

    async def update_job(self, job_id: int, **values: Any) -> None:
        """One job's row in a transaction of its own, run whole in the database thread: one
        round trip instead of three (a job's path updates its row a few times)."""
        sql, params = _update_sql(job_id, values)
        await self.run_transaction(lambda conn: conn.execute(sql, params))

    async def update_job_in(self, db: aiosqlite.Connection, job_id: int, **values: Any) -> None:
        await db.execute(*_update_sql(job_id, values))

    async def end_job(
        self, job_id: int, states: tuple[str, ...], **values: Any
    ) -> sqlite3.Row | None:
        """`move_job_in` in a transaction of its own, and the row as it is then: run whole
        in the database thread (one round trip, not four: every job ends once, and the
        write lock waits on each). None: the job was not in `states`, nothing changed."""
        sql, params = _move_sql(job_id, states, values)

        def move_and_read(conn: sqlite3.Connection) -> sqlite3.Row | None:
            if conn.execute(sql, params).rowcount != 1:
                return None
            return conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()  # type: ignore[no-any-return]

        return await self.run_transaction(move_and_read)

    async def start_jobs(
        self, job_ids: list[int], started_at: float
    ) -> tuple[list[Job], dict[int, tuple[str, str]]]:
        """Move each of `job_ids` that is still queued to running, in one transaction run
        whole in the database thread (a hundred free workers start a few batches a pass:
        one round trip instead of four a job). Returns the started jobs' rows, in order,
        and each of their servers' (nsfw_channels, previews) settings where it has any."""
        values = {"state": "running", "started_at": started_at}
        move = [_move_sql(i, ("queued",), values) for i in job_ids]

        def start(conn: sqlite3.Connection) -> tuple[list[Job], dict[int, tuple[str, str]]]:
            jobs = [
                Job.from_row(conn.execute("SELECT * FROM jobs WHERE id=?", (i,)).fetchone())
                for i, (sql, params) in zip(job_ids, move, strict=True)
                if conn.execute(sql, params).rowcount == 1
            ]
            guilds = sorted({job.guild_id for job in jobs})
            marks = ", ".join("?" for _ in guilds)
            settings = conn.execute(
                "SELECT guild_id, nsfw_channels, previews FROM guild_settings "
                f"WHERE guild_id IN ({marks})",
                guilds,
            ).fetchall()
            return jobs, {row[0]: (row[1], row[2]) for row in settings}

        return await self.run_transaction(start)

    async def move_job_in(
        self, db: aiosqlite.Connection, job_id: int, states: tuple[str, ...], **values: Any
    ) -> bool:
        """Change a job's row only while its state is one of `states` (the guard that keeps
        a state from going back); False: it was not, and nothing changed."""
        cursor = await db.execute(*_move_sql(job_id, states, values))
        return cursor.rowcount == 1


def insert_job_in(conn: sqlite3.Connection, **values: Any) -> Job:
    """Insert a job in the open transaction of `conn` (in the database thread); its row as
    stored (defaults filled in), read by the insert itself."""
    values.setdefault("created_at", time.time())
    cols = [c for c in JOB_INSERT_FIELDS if c in values]
    sql = f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    rows = conn.execute(f"{sql} RETURNING *", [values[c] for c in cols]).fetchall()
    return Job.from_row(rows[0])


def _update_sql(job_id: int, values: dict[str, Any]) -> tuple[str, list[Any]]:
    sets = ", ".join(f"{k}=?" for k in values)
    return f"UPDATE jobs SET {sets} WHERE id=?", [*values.values(), job_id]


def _move_sql(
    job_id: int, states: tuple[str, ...], values: dict[str, Any]
) -> tuple[str, list[Any]]:
    sets = ", ".join(f"{k}=?" for k in values)
    marks = ", ".join("?" for _ in states)
    sql = f"UPDATE jobs SET {sets} WHERE id=? AND state IN ({marks})"
    return sql, [*values.values(), job_id, *states]


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
