"""`Store.update_job` runs its transaction whole in the database thread (one round trip):
it still commits or rolls back alone, and never lands inside another open transaction;
writes that wait meanwhile share the next transaction (group commit)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from bot.store.db import Job, Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


async def new_job(store: Store) -> int:
    async with store.transaction() as db:
        return await store.insert_job(
            db, guild_id=1, channel_id=2, user_id=3, kind="new", prompt="p", strength=0.5,
            seed=1, steps=4, guidance=7.5, input_path="inputs/a.png", input_width=64,
            input_height=64,
        )  # fmt: skip


async def test_update_job_commits_and_counts_one_transaction(store: Store) -> None:
    job_id = await new_job(store)
    before = store.transactions
    await store.update_job(job_id, status_message_id=77, seconds=1.5)
    job = await store.get_job(job_id)
    assert job is not None and (job.status_message_id, job.seconds) == (77, 1.5)
    assert store.transactions == before + 1 and not store.db.in_transaction
    assert await store.get_job(job_id + 1) is None


async def test_a_failed_update_rolls_back_alone(store: Store) -> None:
    job_id = await new_job(store)
    with pytest.raises(sqlite3.OperationalError):
        await store.update_job(job_id, no_such_column=1)
    assert not store.db.in_transaction
    await store.update_job(job_id, status_message_id=5)  # the connection is usable
    job = await store.get_job(job_id)
    assert job is not None and job.status_message_id == 5


async def test_update_job_waits_for_an_open_transaction_and_survives_its_rollback(
    store: Store,
) -> None:
    job_id = await new_job(store)
    inside, release = asyncio.Event(), asyncio.Event()

    async def rolled_back() -> None:
        with pytest.raises(RuntimeError):
            async with store.transaction() as db:
                await store.update_job_in(db, job_id, prompt="never")
                inside.set()
                await release.wait()
                raise RuntimeError("rolled back")

    other = asyncio.create_task(rolled_back())
    await inside.wait()
    update = asyncio.create_task(store.update_job(job_id, status_message_id=9))
    await asyncio.sleep(0.05)
    assert not update.done()  # it waits for the open transaction, never joins it
    release.set()
    await asyncio.gather(other, update)
    job = await store.get_job(job_id)
    assert job is not None and (job.prompt, job.status_message_id) == ("p", 9)


async def test_a_transaction_cancelled_while_it_begins_leaves_none_open(store: Store) -> None:
    """A stop cancels tasks wherever they wait: one cancelled while its BEGIN is queued
    in the database thread must not leave that transaction open (every later one would
    fail with "cannot start a transaction within a transaction")."""
    job_id = await new_job(store)

    async def write() -> None:
        async with store.transaction() as db:
            await store.update_job_in(db, job_id, prompt="never")

    task = asyncio.create_task(write())
    await asyncio.sleep(0)  # it waits for its BEGIN now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.update_job(job_id, status_message_id=3)
    job = await store.get_job(job_id)
    assert job is not None and (job.prompt, job.status_message_id) == ("p", 3)


async def test_end_job_moves_only_an_active_job_and_returns_its_row(store: Store) -> None:
    job_id = await new_job(store)
    row = await store.end_job(job_id, ("queued", "running"), state="done", seconds=2.0)
    assert row is not None and (row["state"], row["seconds"]) == ("done", 2.0)
    again = await store.end_job(job_id, ("queued", "running"), state="failed")
    job = await store.get_job(job_id)
    assert again is None and job is not None and job.state == "done"  # an end never moves


async def test_run_transaction_rolls_back_all_of_its_work(store: Store) -> None:
    job_id = await new_job(store)

    def half(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET prompt='changed' WHERE id=?", (job_id,))
        raise ValueError("the second half failed")

    with pytest.raises(ValueError):
        await store.run_transaction(half)
    job = await store.get_job(job_id)
    assert job is not None and job.prompt == "p" and not store.db.in_transaction


async def test_writes_that_wait_share_one_transaction_and_a_failing_one_fails_alone(
    store: Store,
) -> None:
    """Group commit: writes queued while another transaction holds the write lock go in
    one transaction together; one that fails rolls back its own writes, reaches its own
    caller, and the others' writes are committed."""
    jobs = [await new_job(store) for _ in range(3)]

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET prompt='half' WHERE id=?", (jobs[1],))
        raise ValueError("the second half failed")

    before = store.transactions
    async with store.transaction():  # holds the write lock while the three wait
        writes = asyncio.gather(
            store.update_job(jobs[0], status_message_id=10),
            store.run_transaction(failing),
            store.update_job(jobs[2], status_message_id=12),
            return_exceptions=True,
        )
        for _ in range(5):
            await asyncio.sleep(0)
    first, second, third = await writes
    assert (first, third) == (None, None) and isinstance(second, ValueError)
    assert store.transactions == before + 2  # the open one, then the three together
    rows = [await store.get_job(job_id) for job_id in jobs]
    assert [(r.status_message_id, r.prompt) for r in rows if r] == [
        (10, "p"),
        (None, "p"),
        (12, "p"),
    ]
    assert not store.db.in_transaction


async def test_reads_that_wait_share_one_round_trip(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status board starts a tick's edits together, each reading its job first: those
    reads go to the database thread in one round trip (`GroupRead`)."""
    jobs = [await new_job(store) for _ in range(3)]
    trips = []
    real = store.db._execute

    async def counted(fn: Any, *args: Any) -> Any:
        trips.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(store.db, "_execute", counted)
    rows = await asyncio.gather(*(store.get_job(j) for j in [*jobs, jobs[-1] + 1]))
    assert [r.id if r else None for r in rows] == [*jobs, None]
    assert len(trips) == 1


async def test_a_job_read_by_position_matches_its_columns_in_any_order(store: Store) -> None:
    """`Job.from_row` reads by position, worked out per column list: a query naming the
    columns in another order (with one more) still gives each field its own column."""
    job_id = await new_job(store)
    await store.update_job(job_id, status_message_id=41, seconds=3.5)
    job = await store.get_job(job_id)
    names = [f.name for f in fields(Job)]
    rows = await store.db.execute_fetchall(
        f"SELECT delivered_at, {', '.join(reversed(names))} FROM jobs WHERE id=?", (job_id,)
    )
    (row,) = list(rows)
    assert Job.from_row(row) == job
    assert job is not None and (job.id, job.status_message_id, job.seconds) == (job_id, 41, 3.5)
    assert (job.prompt, job.input_width, job.crop) == ("p", 64, "auto")
