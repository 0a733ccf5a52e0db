"""forget-me's store logic: every row of the member in that server goes in one transaction,
their quota units stay counted, other members' rows and shared inputs stay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.errors import UserError
from bot.forget import forget_member, preview
from bot.store.db import Job, Store
from bot.store.gallery import GalleryStore
from bot.store.picture_messages import PictureMessages
from bot.store.quotas import QuotaStore
from config import Settings

GUILD, OTHER_GUILD = 10, 20
ALICE, BOB = 1, 2
NOW = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield store
    await store.close()


async def job(
    store: Store,
    user: int,
    *,
    guild: int = GUILD,
    state: str = "done",
    input_path: str = "inputs/a.png",
    parent_id: int | None = None,
    counted: int = 1,
    **values: Any,
) -> Job:
    async with store.transaction() as db:
        job_id = await store.insert_job(
            db, guild_id=guild, channel_id=5, user_id=user, prompt="p", strength=0.5, seed=1,
            steps=4, guidance=7.5, input_path=input_path, input_width=64, input_height=64,
            parent_id=parent_id, created_at=NOW - 60,
        )  # fmt: skip
        await store.update_job_in(
            db,
            job_id,
            state=state,
            counted=counted,
            output_path=f"outputs/{job_id}.png" if state == "done" else None,
            result_message_id=5000 + job_id,
            status_message_id=6000 + job_id,
            **values,
        )
    fresh = await store.get_job(job_id)
    assert fresh is not None
    return fresh


async def test_forget_deletes_the_members_rows_and_keeps_usage(
    store: Store, tmp_path: Path
) -> None:
    gallery = GalleryStore(store)
    a1 = await job(store, ALICE, input_path="inputs/a.png")
    a2 = await job(store, ALICE, input_path="inputs/b.png", parent_id=a1.id)
    a3 = await job(store, ALICE, state="failed", input_path="inputs/c.png", counted=0)
    b1 = await job(store, BOB, input_path="inputs/a.png", parent_id=a1.id)  # bob's variant
    a_elsewhere = await job(store, ALICE, guild=OTHER_GUILD, input_path="inputs/z.png")
    for j in (a1, a2, b1, a_elsewhere):
        await gallery.add(j, NOW - 30)
    await gallery.set_shared(a1.id, 77, 7001)
    await gallery.remove(a2.id)  # deleted earlier: its row stays, no longer counted as live

    settings = Settings(_env_file=None, data_dir=tmp_path, quota_user_daily=5)  # type: ignore[call-arg]
    quotas = QuotaStore(store, settings, clock=lambda: NOW)
    before = await quotas.state(GUILD, ALICE, (), NOW)
    assert await preview(store, GUILD, ALICE) == (3, 2)

    gone = await forget_member(store, GUILD, ALICE)

    assert gone.jobs == 3 and gone.gallery == 1 and gone.kept_units == 2
    assert sorted(gone.pictures) == sorted([f"outputs/{a1.id}.png", f"outputs/{a2.id}.png"])
    assert sorted(gone.inputs) == ["inputs/b.png", "inputs/c.png"]  # a.png: bob's job uses it
    assert gone.copies == [(77, 7001)]
    assert (5, 5000 + a1.id) in gone.messages and (5, 6000 + a3.id) in gone.messages
    for j in (a1, a2, a3):
        assert await store.get_job(j.id) is None
        assert await gallery.get(GUILD, j.id, include_removed=True) is None
    bob = await store.get_job(b1.id)
    assert bob is not None and bob.parent_id is None and bob.state == "done"
    assert await gallery.get(GUILD, b1.id) is not None
    assert await store.get_job(a_elsewhere.id) is not None  # another server: untouched
    after = await quotas.state(GUILD, ALICE, (), NOW)
    assert after.user.used == before.user.used == 2
    assert after.guild.used == before.guild.used == 3
    assert "2 pictures" in gone.summary() and "quota" in gone.summary()

    again = await forget_member(store, GUILD, ALICE)
    assert again.jobs == 0 and "nothing" in again.summary()
    assert (await quotas.state(GUILD, ALICE, (), NOW)).user.used == 2  # not counted twice


async def test_forget_waits_for_active_jobs(store: Store) -> None:
    await job(store, ALICE, state="queued")
    with pytest.raises(UserError, match="waiting or being made"):
        await preview(store, GUILD, ALICE)
    with pytest.raises(UserError):
        await forget_member(store, GUILD, ALICE)
    rows = await (await store.db.execute("SELECT count(*) FROM jobs")).fetchone()
    assert rows is not None and rows[0] == 1


async def test_forget_reaches_every_message_showing_the_members_pictures(store: Store) -> None:
    """Copies of her pictures go; bob's comparison made from her result is drawn again
    without it; her own comparison of bob's picture goes whole (it is her message)."""
    shown = PictureMessages(store)
    a1 = await job(store, ALICE)
    b1 = await job(store, BOB, input_path="inputs/b.png")
    b_cmp = await job(store, BOB, kind="compare", parent_id=a1.id)
    a_cmp = await job(store, ALICE, kind="compare", parent_id=b1.id)
    await store.update_job(b_cmp.id, status_message_id=900)  # the comparisons' messages
    await store.update_job(a_cmp.id, status_message_id=901)
    await shown.record(GUILD, 5, 900, [a1.id, b_cmp.id], "comparison")  # bob's, shows a1
    await shown.record(GUILD, 5, 901, [b1.id, a_cmp.id], "comparison")  # alice's own
    await shown.record(GUILD, 5, 950, [a1.id], "single")  # carol's Use copy of a1
    await shown.record(GUILD, 5, 951, [b1.id], "single")  # a copy of bob's picture

    gone = await forget_member(store, GUILD, ALICE)

    assert (5, 950) in gone.messages and (5, 901) in gone.messages
    assert (5, 900) not in gone.messages and (5, 951) not in gone.messages
    assert gone.redraw == [("comparison", 900)]
    assert await shown.of_job(a1.id) == [] and await shown.of_job(a_cmp.id) == []
    assert [m.message_id for m in await shown.of_job(b1.id)] == [901, 951]
    bobs = await store.get_job(b_cmp.id)
    assert bobs is not None and bobs.parent_id is None  # drawn without its original


async def test_forget_takes_the_members_upscales_with_the_pictures_they_enlarged(
    store: Store,
) -> None:
    from bot.store.upscales import Upscale, UpscaleStore

    upscales = UpscaleStore(store)
    tile = await job(store, ALICE, input_path="inputs/t0.png")
    bobs_tile = await job(store, BOB, input_path="inputs/bt0.png")

    async def upscale(user: int, source: str, tile_id: int, message_id: int) -> int:
        up = Upscale(
            0, GUILD, 5, user, None, source, 2, 1, 192, 128, ((0, 0, 128, 128),), None,
            None, None, None, None, "tiles",
        )  # fmt: skip
        async with store.transaction() as db:
            upscale_id = await upscales.create_in(db, up, [tile_id])
        await upscales.set_message(upscale_id, message_id)
        return upscale_id

    mine = await upscale(ALICE, "inputs/source.png", tile.id, 9001)
    bobs = await upscale(BOB, "inputs/bob-source.png", bobs_tile.id, 9002)

    gone = await forget_member(store, GUILD, ALICE)

    assert await upscales.get(mine) is None and await upscales.of_tile(tile.id) is None
    assert "inputs/source.png" in gone.inputs and (5, 9001) in gone.messages
    assert await upscales.get(bobs) is not None and "inputs/bob-source.png" not in gone.inputs
