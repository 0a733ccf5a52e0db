"""Databases made by older schemas upgrade in place; unreadable ones stop the bot untouched."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from bot.store.db import Store, StoreError
from bot.store.migrations import MIGRATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "v1.sqlite3"

V2_TABLES = {"guild_settings", "role_limits", "settings_audit", "usage_resets"}


def _rows(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    finally:
        db.close()


async def test_v1_fixture_upgrades_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    shutil.copy(FIXTURE, path)
    before = _rows(path)
    assert len(before) == 3
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1

    store = await Store.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        cursor = await store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        tables = {r[0] for r in await cursor.fetchall()}
        assert tables >= V2_TABLES | {"jobs"}
        job = await store.get_job(1)
        assert job is not None and job.prompt == "a red fox" and job.state == "done"
        assert job.counted == 1
        # the new tables are usable
        async with store.transaction() as db:
            await db.execute(
                "INSERT INTO guild_settings (guild_id, user_daily, updated_at) VALUES (111, 5, 1)"
            )
            await db.execute(
                "INSERT INTO usage_resets (guild_id, user_id, at) VALUES (111, 333, 1)"
            )
    finally:
        await store.close()
    # every old row and value is kept; later versions only add columns with defaults
    after = _rows(path)
    assert [row[: len(before[0])] for row in after] == before
    # v4: public, not age-restricted; v5: no style
    assert {row[len(before[0]) :][:4] for row in after} == {(1, 0, 0, None)}

    # a second start finds nothing to do
    store = await Store.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
    finally:
        await store.close()
    assert _rows(path) == after


def test_fixture_is_still_the_first_schema() -> None:
    """Guards the committed file against being rebuilt with a newer schema."""
    db = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not tables & V2_TABLES
    finally:
        db.close()


async def _assert_refused_untouched(path: Path) -> None:
    data = path.read_bytes()
    with pytest.raises(StoreError) as info:
        await Store.open(path)
    message = str(info.value)
    assert str(path) in message
    assert "cannot be read" in message and "untouched" in message
    assert path.read_bytes() == data


async def test_garbage_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"this is not a database, just some bytes\x00\xff" * 200)
    await _assert_refused_untouched(path)


async def test_truncated_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    try:
        async with store.transaction() as db:
            for i in range(400):
                await store.insert_job(
                    db, guild_id=1, channel_id=2, user_id=i, kind="new", prompt="p" * 200,
                    strength=0.5, seed=i, steps=30, guidance=7.5, input_path=f"inputs/{i}.png",
                    input_width=512, input_height=512, created_at=1000.0 + i,
                )  # fmt: skip
    finally:
        await store.close()
    size = path.stat().st_size
    assert size > 16 * 4096
    with path.open("r+b") as f:
        f.truncate(size // 2 + 100)
    await _assert_refused_untouched(path)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        await Store.open(path)
