"""Who holds a remote job, in SQLite: its attempt number and the worker process (id and the
nonce that process drew at start) it was granted to.

Kept in the bot's database, not in memory, so that a bot started after a deploy knows which
(job, attempt) each worker process runs for it: it adopts what a live worker still holds
and recognises any other event as stale (an earlier attempt, or a process that died). The
backend writes a grant here before the grant reaches the server, so a worker can never
answer a grant the ledger does not know.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from bot.store.db import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """The last grant of a job: which attempt, to which worker process."""

    attempt: int
    worker_id: str
    nonce: str


FORGET_BATCH = 64
"""Rows of ended jobs are deleted with the next grant's record, or this many at once."""


class GrantLedger:
    """`job_holders` rows: one per job granted at least once and not ended yet (a row of
    an ended job may stay a while: it is deleted with the next grant's record, and any
    left over is pruned at the next start, so it never names a holder of a live job)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ended: list[str] = []  # jobs whose rows go with the next record

    async def running(self) -> dict[str, Holder]:
        """The holders of jobs still waiting or running; rows of ended jobs are pruned."""
        async with self.store.transaction() as db:
            await db.execute(
                "DELETE FROM job_holders WHERE job_id NOT IN "
                "(SELECT id FROM jobs WHERE state IN ('queued', 'running'))"
            )
        cursor = await self.store.db.execute(
            "SELECT job_id, attempt, worker_id, worker_nonce FROM job_holders"
        )
        return {str(row[0]): Holder(row[1], row[2], row[3]) for row in await cursor.fetchall()}

    async def record(self, grants: list[tuple[str, Holder]]) -> None:
        """Remember these grants (one transaction for a batch, run whole in the database
        thread, which also deletes the rows of jobs that ended since the last one: before,
        so a job granted again keeps its new row)."""
        now = time.time()
        ended, self._ended = self._ended, []
        rows = [(int(j), h.attempt, h.worker_id, h.nonce, now) for j, h in grants]

        def write(conn: sqlite3.Connection) -> None:
            _delete(conn, ended)
            conn.executemany(
                "INSERT INTO job_holders (job_id, attempt, worker_id, worker_nonce, granted_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "attempt=excluded.attempt, worker_id=excluded.worker_id, "
                "worker_nonce=excluded.worker_nonce, granted_at=excluded.granted_at",
                rows,
            )

        await self.store.run_transaction(write)

    async def forget(self, job_ids: list[str]) -> None:
        """The service handled these jobs' final events: nobody holds them any more. Their
        rows go with the next grant's record (a transaction per job saved), or now once
        `FORGET_BATCH` wait."""
        self._ended += job_ids
        if len(self._ended) < FORGET_BATCH:
            return
        ended, self._ended = self._ended, []
        await self.store.run_transaction(lambda conn: _delete(conn, ended))


def _delete(conn: sqlite3.Connection, job_ids: list[str]) -> None:
    if job_ids:
        conn.executemany("DELETE FROM job_holders WHERE job_id=?", [(int(j),) for j in job_ids])
