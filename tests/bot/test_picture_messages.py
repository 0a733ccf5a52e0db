"""The record of public messages showing a job's picture: found by job, gone with forget-me."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.db import Store
from bot.store.picture_messages import PictureMessage, PictureMessages


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield store
    await store.close()


async def test_messages_are_found_by_every_job_they_show(store: Store) -> None:
    shown = PictureMessages(store)
    await shown.record(10, 5, 900, [1, 2, 3], "comparison")
    await shown.record(10, 5, 901, [2], "single")
    await shown.record(10, 6, 902, [3], "gallery")
    await shown.record(10, 5, 901, [2], "single")  # recorded twice: one row
    assert await shown.of_job(2) == [
        PictureMessage(900, 5, 10, 2, "comparison"),
        PictureMessage(901, 5, 10, 2, "single"),
    ]
    assert [m.message_id for m in await shown.of_job(3)] == [900, 902]

    async with store.transaction() as db:
        await shown.forget_in(db, [2, 3])
    assert await shown.of_job(2) == []
    assert [m.job_id for m in await shown.of_job(1)] == [1]
    # a gallery page stays recorded until it is redrawn: its place is needed for that
    assert [m.kind for m in await shown.of_job(3)] == ["gallery"]
    assert await shown.place(902) == (10, 6)

    await shown.forget_message(900)
    await shown.forget_message(902)
    assert await shown.of_job(1) == [] and await shown.of_job(3) == []
    assert await shown.place(902) is None
