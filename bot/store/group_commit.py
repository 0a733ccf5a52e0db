"""Group commit: the writes that wait for the database go in together, in one transaction.

Every job writes its row a few times on its way (its status message attached, ended,
delivered), so a bot in front of a hundred GPUs runs hundreds of small transactions a
second. Each was a round trip to the database thread (with the thread wake-ups and the GIL
handed back and forth that come with it) and a commit writing the same pages to the WAL
again. So while one transaction runs, the writes that arrive wait, and the next transaction
takes all of them, in order, each in a savepoint of its own: a write that fails is rolled
back alone and its caller gets its exception, the others commit. A caller's await still
returns once its own write is committed; a write with nothing else waiting is one
transaction on its own, as before, without any added delay.

Reads group the same way (`GroupRead`, no transaction): the status board starts the edits
due at one tick together, and each reads its job's row first.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (True, its result) or (False, its exception)


class GroupRead:
    """`run(work)`: `work(connection)` in the database thread, with the other works that
    wait meanwhile in the same round trip. Works only read."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._waiting: list[tuple[Work, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((work, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_waiting(), name="store-group")
        return await future

    async def _run_waiting(self) -> None:
        try:
            while self._waiting:
                group = [(w, f) for w, f in self._waiting if not f.cancelled()]
                self._waiting = []
                if group:
                    await self._run_group(group)
        finally:
            self._runner = None

    async def _run(self, works: list[Work]) -> list[Outcome]:
        return await self._db._execute(_each, self._db._conn, works)  # type: ignore[no-any-return]

    async def _run_group(self, group: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._run([work for work, _ in group])
        except asyncio.CancelledError:  # a stop: nobody waits for these any more
            for _, future in group:
                future.cancel()
            raise
        except Exception as exc:  # the round trip failed (a write alone, BEGIN, COMMIT)
            outcomes = [(False, exc)] * len(group)
        for (_, future), (ok, value) in zip(group, outcomes, strict=True):
            if not future.done():
                future.set_result(value) if ok else future.set_exception(value)


class GroupCommit(GroupRead):
    """`run(work)` for `Store.run_transaction`; `lock` is the store's one write lock."""

    def __init__(
        self, db: aiosqlite.Connection, lock: asyncio.Lock, begun: Callable[[], None]
    ) -> None:
        super().__init__(db)
        self._lock = lock
        self._begun = begun  # counts a transaction (the fleet bench reports them)

    async def _run(self, works: list[Work]) -> list[Outcome]:
        async with self._lock:
            self._begun()
            return await self._db._execute(_in_savepoints, self._db._conn, works)  # type: ignore[no-any-return]


def _each(conn: sqlite3.Connection, works: list[Work]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for work in works:
        try:
            outcomes.append((True, work(conn)))
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes


def _in_savepoints(conn: sqlite3.Connection, works: list[Work]) -> list[Outcome]:
    """The works in one write transaction, in the database thread; each in a savepoint
    when there are several, so that one failing leaves the others' writes in."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[Outcome] = []
    try:
        if len(works) == 1:  # alone: its failure rolls back the transaction, no savepoint
            outcomes.append((True, works[0](conn)))
        else:
            for work in works:
                conn.execute("SAVEPOINT work")
                try:
                    outcomes.append((True, work(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO work")
                    outcomes.append((False, exc))
                conn.execute("RELEASE work")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes
