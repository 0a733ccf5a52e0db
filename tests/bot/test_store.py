"""The store's start-up: a lock held by another process is waited on, then named as such."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store.db import Store, StoreError


@pytest.fixture
def rollback_db(tmp_path: Path) -> Path:
    """A database in rollback-journal mode (as before the bot's first start, or one copied
    in), where an EXCLUSIVE transaction blocks every reader."""
    path = tmp_path / "bot.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE other_program (x)")
    db.commit()
    db.close()
    return path


@pytest.fixture
def holder(rollback_db: Path) -> Iterator[sqlite3.Connection]:
    """A second connection, as a second bot process would hold it."""
    db = sqlite3.connect(rollback_db, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")
    yield db
    if db.in_transaction:
        db.execute("ROLLBACK")
    db.close()


async def test_a_lock_that_stays_is_named_and_the_file_is_left_alone(
    rollback_db: Path, holder: sqlite3.Connection
) -> None:
    before = rollback_db.read_bytes()
    with pytest.raises(StoreError) as info:
        await Store.open(rollback_db, busy_timeout_s=0.2)
    message = str(info.value)
    assert "locked by another process" in message
    assert "second bot" in message and "DATA_DIR" in message
    lowered = message.lower()
    assert "delete" not in lowered and "move it" not in lowered and "cannot be read" not in lowered
    assert rollback_db.read_bytes() == before


async def test_the_store_waits_on_a_lock_released_in_time(
    rollback_db: Path, holder: sqlite3.Connection
) -> None:
    opening = asyncio.create_task(Store.open(rollback_db, busy_timeout_s=30.0))
    await asyncio.sleep(0.3)
    assert not opening.done()  # waiting on the lock, not failing on the first read
    holder.execute("ROLLBACK")
    store = await opening
    try:
        assert await store.schema_version() > 0
    finally:
        await store.close()


async def test_a_write_lock_on_a_migrated_database_is_named_too(tmp_path: Path) -> None:
    """In WAL mode readers pass a writer's lock; the migration's write then waits and fails."""
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    await store.db.execute("PRAGMA user_version=0")  # the next start migrates again
    await store.close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            await Store.open(path, busy_timeout_s=0.2)
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_meta_keeps_one_value_per_key(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    try:
        assert await store.get_meta("commands") is None
        await store.set_meta("commands", "a")
        await store.set_meta("commands", "b")
        assert await store.get_meta("commands") == "b"
    finally:
        await store.close()
    again = await Store.open(tmp_path / "bot.sqlite3")
    try:
        assert await again.get_meta("commands") == "b"
    finally:
        await again.close()
