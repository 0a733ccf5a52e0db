"""A result that cannot be delivered is neither stuck nor retried forever (issue 25 item 9):
a channel post the stand-in refuses for permissions (403 50013) goes out as an interaction
follow-up while the token lives, else the requester learns by DM what the bot lacks, and
the job ends `undelivered`, refunded, kept in /gallery; a result whose posting a shutdown
cut off is found after the restart and never posted twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bot.store.db import Store
from tests.e2e.conftest import (
    BotFactory,
    World,
    eventually,
    slash_img2img,
    status_message,
    wait_result,
    worker_paused,
)
from tests.fakediscord import FakeDiscord
from tests.fakediscord.message_routes import SEND_MESSAGES


async def row(bot: Any, job_id: int) -> dict[str, Any]:
    cursor = await bot.store.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,))
    found = await cursor.fetchone()
    assert found is not None
    return dict(found)


def results_of(fd: FakeDiscord, job_id: int) -> list[dict[str, Any]]:
    """Live messages that carry job `job_id`'s picture."""
    name = f"img2img-{job_id}.png"
    return [
        m for m in fd.messages()
        if any(a["filename"].endswith(name) for a in m["attachments"])
    ]  # fmt: skip


async def test_a_reroll_refused_in_its_channel_is_a_follow_up_naming_its_parent(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    first = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.alice))
    fd.set_channel_permissions(world.channel, fd.bot_user_id, deny=SEND_MESSAGES)
    await fd.click(first["id"], "i2i:r:1", world.alice, world.guild)

    posted = await fd.until(lambda: results_of(fd, 2), timeout=60, what="job 2's picture")
    assert len(posted) == 1
    follow_up = posted[0]
    parent = f"https://discord.com/channels/{world.guild}/{world.channel}/{first['id']}"
    assert parent in follow_up["content"] and not follow_up.get("message_reference")
    assert follow_up["interaction_token"] is not None  # sent through the token

    async def delivered() -> bool:
        return (await row(bot, 2))["delivered_at"] is not None

    await eventually(delivered)
    job = await row(bot, 2)
    assert (job["state"], job["counted"], job["result_message_id"]) == (
        "done", 1, int(follow_up["id"]),
    )  # fmt: skip


async def test_a_result_refused_after_the_token_expired_is_told_by_dm_and_refunded(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    with worker_paused(bot):
        handle = await slash_img2img(fd, world.guild, world.channel, world.alice)
        await fd.until(lambda: status_message(fd, handle), what="the status message")
        fd.expire_token(handle.token)
        fd.set_channel_permissions(world.channel, fd.bot_user_id, deny=SEND_MESSAGES)
    dm = await fd.wait_for_message(
        lambda m: "job #1" in m["content"], timeout=60, channel_id=fd.dm_channel_id(world.alice)
    )
    assert "Send Messages" in dm["content"] and "/gallery" in dm["content"]

    async def given_up() -> bool:
        return (await row(bot, 1))["state"] == "undelivered"

    await eventually(given_up, timeout=30)
    job = await row(bot, 1)
    assert (job["counted"], job["result_message_id"]) == (0, None)  # refunded
    gallery = await (await bot.store.db.execute("SELECT image_path FROM gallery")).fetchall()
    assert [r[0] for r in gallery] == ["outputs/1.png"]
    assert (bot.settings.data_dir / "outputs" / "1.png").is_file()
    assert results_of(fd, 1) == []
    stale = status_message(fd, handle)
    assert stale is None or stale["deleted"]  # no "Generating…" with a live Cancel button

    await bot.close()  # not retried at the next start
    bot = await make_bot()
    await fd.settle()
    assert (await row(bot, 1))["state"] == "undelivered" and results_of(fd, 1) == []


async def test_a_result_whose_post_a_shutdown_cut_off_is_posted_once_after_restart(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.jobs.service as jobs_module

    monkeypatch.setattr(jobs_module, "STOP_DELIVERY_GRACE_S", 0.5)
    bot = await make_bot()
    real_update = bot.store.update_job
    never = asyncio.Event()

    async def cut_after_the_post(job_id: int, **values: Any) -> None:
        if "result_message_id" in values:
            await never.wait()  # the post reached Discord; the stop comes before the record
        await real_update(job_id, **values)

    bot.store.update_job = cut_after_the_post  # type: ignore[method-assign]
    with worker_paused(bot):
        handle = await slash_img2img(fd, world.guild, world.channel, world.alice)
        await fd.until(lambda: status_message(fd, handle), what="the status message")
        fd.expire_token(handle.token)  # so the result is a new channel message
    await fd.until(lambda: results_of(fd, 1), timeout=60, what="the posted result")
    await bot.close()
    store = await Store.open(bot.settings.db_path)
    try:
        cursor = await store.db.execute("SELECT result_message_id, delivered_at FROM jobs")
        assert tuple(await cursor.fetchone()) == (None, None)  # the record was cut off
    finally:
        await store.close()

    bot = await make_bot()

    async def recorded() -> bool:
        return (await row(bot, 1))["delivered_at"] is not None

    await eventually(recorded, timeout=30)
    posted = results_of(fd, 1)
    assert len(posted) == 1  # found and edited, not posted again
    job = await row(bot, 1)
    assert (job["state"], job["result_message_id"], job["delivery_tries"]) == (
        "done", int(posted[0]["id"]), 1,
    )  # fmt: skip
