"""The grant ledger in SQLite: rows of ended jobs go with the next grant's record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.jobs.backends.redis_ledger import FORGET_BATCH, GrantLedger, Holder
from bot.store.db import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


async def holders(store: Store) -> dict[int, int]:
    cursor = await store.db.execute("SELECT job_id, attempt FROM job_holders")
    return {job: attempt for job, attempt in await cursor.fetchall()}


async def test_ended_jobs_rows_go_with_the_next_record_and_a_regrant_keeps_its_row(
    store: Store,
) -> None:
    ledger = GrantLedger(store)
    await ledger.record([(str(n), Holder(1, "w", "n")) for n in (1, 2, 3)])
    await ledger.forget(["1", "2"])  # ended: no transaction of its own
    assert await holders(store) == {1: 1, 2: 1, 3: 1}
    await ledger.record([("2", Holder(2, "w", "n")), ("4", Holder(1, "w", "n"))])
    assert await holders(store) == {2: 2, 3: 1, 4: 1}  # 2 granted again: its new row stays


async def test_many_ended_jobs_are_deleted_without_waiting_for_a_grant(store: Store) -> None:
    ledger = GrantLedger(store)
    ids = [str(n) for n in range(FORGET_BATCH)]
    await ledger.record([(j, Holder(1, "w", "n")) for j in ids])
    await ledger.forget(ids[:-1])
    assert len(await holders(store)) == FORGET_BATCH
    await ledger.forget(ids[-1:])
    assert await holders(store) == {}
