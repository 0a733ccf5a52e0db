"""Delivery and the bot's edges end to end: no pings, an expired token, a full disk, busy
decodes, a vanished input, command sync across restarts, the order of shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

from bot import uploads as uploads_module
from bot.app import COMMANDS_HASH_KEY, RESTARTING_TEXT
from pipeline.worker import Finished
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    buttons,
    eventually,
    image_bytes,
    slash_img2img,
    status_message,
    wait_result,
    worker_paused,
)
from tests.fakediscord import FakeDiscord, InteractionHandle


async def wait_status(
    fd: FakeDiscord, handle: InteractionHandle, needle: str = "#", timeout: float = 60.0
) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        msg = status_message(fd, handle)
        return msg if msg and needle in (msg["content"] or "") else None

    return await fd.until(find, timeout=timeout, what=f"status containing {needle!r}")


async def job_count(bot: Any) -> int:
    row = await (await bot.store.db.execute("SELECT count(*) FROM jobs")).fetchone()
    return int(row[0])


async def test_prompts_ping_nobody_and_an_expired_token_pings_only_the_requester(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Issue 9 §1 and issue 10 fault 5: after expiry the result is a new message with the
    requester's ping, and the stale status message (with its Cancel button) is deleted
    through the channel endpoint."""
    bot = await make_bot()
    role = fd.add_role(world.guild, "artists")
    prompt = f"@everyone @here <@&{role}> <@{world.bob}> a watercolor fox"
    first = await slash_img2img(fd, world.guild, world.channel, world.alice, prompt)
    on_time = await wait_result(fd, first)

    with worker_paused(bot):
        late = await slash_img2img(fd, world.guild, world.channel, world.alice, prompt)
        status = await wait_status(fd, late)
        fd.expire_token(late.token)
    result = await wait_result(fd, late)

    assert result["id"] != status["id"] and result["interaction_token"] is None
    assert result["content"].startswith(f"<@{world.alice}>")
    await fd.until(lambda: fd.message(status["id"])["deleted"], what="stale status deleted")
    assert any(
        c.method == "DELETE" and c.path == f"/channels/{world.channel}/messages/{status['id']}"
        for c in fd.calls
    )
    live = [m for m in fd.messages() if not m["deleted"]]
    assert not any(b.get("label") == "Cancel" for m in live for b in buttons(m))

    bodies = fd.message_bodies()
    # two answers (the status messages) and two results at least; progress edits come on
    # top as timing allows (a loaded machine may finish a job before its first edit is due)
    assert len(bodies) >= 4
    pings = []
    for sent in bodies:
        mentions = sent["allowed_mentions"]
        assert mentions is not None, (sent["method"], sent["path"])
        assert mentions["parse"] == [], (sent["method"], sent["path"], mentions)
        assert not mentions.get("roles"), mentions
        if mentions.get("users"):
            pings.append(sent)
    assert len(pings) == 1
    assert [int(u) for u in pings[0]["allowed_mentions"]["users"]] == [world.alice]
    assert (pings[0]["method"], pings[0]["path"]) == (
        "POST",
        f"/channels/{world.channel}/messages",
    )

    async def recorded() -> bool:
        jobs = [await bot.store.get_job(i) for i in (1, 2)]
        return [(j.state, j.result_message_id) for j in jobs if j] == [
            ("done", on_time["id"]),
            ("done", result["id"]),
        ]

    await eventually(recorded)
    fd.assert_no_unknown_routes()


async def test_a_full_disk_refuses_privately_and_the_bot_resumes_when_there_is_space(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 9: ENOSPC while saving the upload: a clear message, nothing queued, no quota
    spent, no partial file; the next upload after space came back works."""
    bot = await make_bot()
    data = image_bytes()
    real_save = Image.Image.save

    def disk_full(self: Image.Image, fp: Any, format: Any = None, **params: Any) -> None:
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half an image")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    refused = await slash_img2img(fd, world.guild, world.channel, world.alice, data=data)
    msg = await refused.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"] and "storage is full" in msg["content"]
    assert "Nothing was queued" in msg["content"] and "No space" not in msg["content"]
    assert status_message(fd, refused) is None
    assert await job_count(bot) == 0  # no job row, so no quota unit either
    inputs = bot.settings.data_dir / "inputs"
    assert not inputs.exists() or list(inputs.iterdir()) == []

    monkeypatch.setattr(Image.Image, "save", real_save)
    ok = await slash_img2img(fd, world.guild, world.channel, world.alice, data=data)
    await wait_result(fd, ok)
    assert await job_count(bot) == 1


async def test_uploads_past_max_decodes_are_told_to_retry(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 11: with MAX_DECODES=1 and one decode in flight, a second upload is refused
    with "busy" and nothing queued; the first goes on once its decode ends."""
    bot = await make_bot(max_decodes=1)
    bot.actions.decode_wait_s = 0.2
    entered, release = threading.Event(), threading.Event()
    real_load = uploads_module.load_input

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(uploads_module, "load_input", slow_load)
    first = await slash_img2img(fd, world.guild, world.channel, world.alice)
    await asyncio.to_thread(entered.wait, 30)
    busy = await slash_img2img(fd, world.guild, world.channel, world.bob)
    msg = await busy.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"] and "busy" in msg["content"] and "try again" in msg["content"]
    assert await job_count(bot) == 0
    release.set()
    ack = await first.wait_original(lambda m: not m["loading"], timeout=30)
    assert "❌" not in ack["content"]  # queued (privately acknowledged if it was slow)
    assert await job_count(bot) == 1


async def test_a_variant_of_a_pruned_input_says_so_in_plain_words(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Fault 6, bot side: the stored input vanished; the click is refused privately,
    without a path or exception text, and nothing is queued."""
    bot = await make_bot()
    result = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.alice))
    job = await bot.store.get_job(1)
    assert job is not None
    (bot.settings.data_dir / job.input_path).unlink()

    click = await fd.click(result["id"], button(result, "+0.15")["custom_id"], world.bob)
    msg = await click.wait_original()
    assert msg["ephemeral"] and "no longer stored" in msg["content"]
    assert "/" not in msg["content"].replace("/img2img", "") and "Error" not in msg["content"]
    assert await job_count(bot) == 1


async def test_commands_sync_only_when_the_tree_or_dev_guild_changes(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Fault 13: a restart with the same tree does not sync again; DEV_GUILD_ID does."""

    def syncs() -> list[str]:
        return [c.path for c in fd.calls if c.method == "PUT" and c.path.endswith("/commands")]

    bot = await make_bot(wait_worker=False)
    assert syncs() == [f"/applications/{fd.application_id}/commands"]
    await fd.settle()
    await bot.close()

    bot = await make_bot(wait_worker=False)
    assert len(syncs()) == 1  # same tree, same scope: Discord already has it
    assert await bot.store.get_meta(COMMANDS_HASH_KEY)
    await fd.settle()
    await bot.close()

    await make_bot(wait_worker=False, dev_guild_id=world.guild)
    assert syncs()[1:] == [f"/applications/{fd.application_id}/guilds/{world.guild}/commands"]
    assert {c["name"] for c in fd.commands(guild_id=world.guild)} >= {"img2img"}


async def test_the_invite_url_is_logged_with_the_least_permissions(
    fd: FakeDiscord, world: World, make_bot: BotFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.app")
    await make_bot(wait_worker=False)
    (line,) = [r.getMessage() for r in caplog.records if "invite URL" in r.getMessage()]
    url = line.split("invite URL: ", 1)[1]
    assert f"client_id={fd.application_id}" in url
    assert "scope=bot+applications.commands" in url
    bits = int(url.split("permissions=", 1)[1].split("&", 1)[0])
    assert discord.Permissions(bits) == discord.Permissions(
        view_channel=True,
        send_messages=True,
        embed_links=True,
        attach_files=True,
        read_message_history=True,
    )


async def test_shutdown_turns_interactions_away_then_stops_jobs_then_the_database(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Fault 12: the order of a stop. An interaction that arrives while the job service
    stops gets a short private "restarting" and queues nothing."""
    bot = await make_bot()
    order: list[str] = []
    real_jobs_stop, real_store_close, real_http_close = (
        bot.jobs.stop,
        bot.store.close,
        bot.http.close,
    )
    answers: list[dict[str, Any]] = []

    async def jobs_stop() -> None:
        handle = await slash_img2img(fd, world.guild, world.channel, world.bob)
        answers.append(await handle.wait_original())
        order.append("interaction answered")
        order.append("jobs.stop")
        await real_jobs_stop()

    async def store_close() -> None:
        order.append("store.close")
        await real_store_close()

    async def http_close() -> None:
        order.append("http.close")
        await real_http_close()

    bot.jobs.stop = jobs_stop  # type: ignore[method-assign]
    bot.store.close = store_close  # type: ignore[method-assign]
    bot.http.close = http_close  # type: ignore[method-assign]
    await bot.close()

    assert order == ["interaction answered", "jobs.stop", "store.close", "http.close"]
    (answer,) = answers
    assert answer["ephemeral"] and answer["content"] == RESTARTING_TEXT
    db = sqlite3.connect(bot.settings.db_path)
    try:
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    finally:
        db.close()


async def test_jobs_record_where_they_were_made(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """A job captures its channel's visibility: public, hidden from @everyone, age-restricted,
    and a private thread (never public, whatever its parent)."""
    hidden = fd.add_channel(world.guild, "staff", hidden=True)
    fd.allow_channel_view(hidden, world.alice)
    nsfw = fd.add_channel(world.guild, "after-dark", nsfw=True)
    private_thread = fd.add_thread(world.channel, "draft", private=True, owner_id=world.alice)
    bot = await make_bot()
    expected = {}
    for channel, flags in [
        (world.channel, (1, 0)),
        (hidden, (0, 0)),
        (nsfw, (1, 1)),
        (private_thread, (0, 0)),
    ]:
        handle = await slash_img2img(fd, world.guild, channel, world.alice)
        ack = await handle.wait_original(lambda m: not m["loading"], timeout=30)
        job_id = int(ack["content"].split("#", 1)[1].split(" ", 1)[0])  # "#N · strength…"
        expected[job_id] = flags
        await wait_result(fd, handle)  # one at a time: the per-member cap is 3
    for job_id, flags in expected.items():
        job = await bot.store.get_job(job_id)
        assert job is not None
        assert (job.channel_public, job.channel_nsfw) == flags, job_id


def checker_says(bot: Any, *, withheld: bool) -> None:
    """Inject the safety checker's verdict into the worker's events: every result comes
    back flagged, and withheld (no PNG) or allowed (an age-restricted channel's nsfw)."""
    real_next = bot.jobs.worker.next_event

    async def next_event() -> Any:
        event = await real_next()
        if isinstance(event, Finished):
            if withheld:
                Path(event.result.output_path).unlink(missing_ok=True)
            result = dataclasses.replace(event.result, nsfw=True, withheld=withheld)
            event = dataclasses.replace(event, result=result)
        return event

    bot.jobs.worker.next_event = next_event


async def test_a_withheld_picture_is_posted_nowhere_and_the_requester_told_privately(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    checker_says(bot, withheld=True)
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice)
    notice = await handle.wait_followup(lambda m: m["ephemeral"] and "safety" in m["content"],
                                        timeout=60)  # fmt: skip
    for needle in ("another prompt", "seed", "lower strength", "counted against your quota"):
        assert needle in notice["content"], needle
    status = await wait_status(fd, handle, "withheld by the safety filter")
    assert not status["ephemeral"] and status["components"] == []
    assert not any(m["attachments"] for m in fd.messages(include_deleted=True))

    async def recorded() -> bool:
        job = await bot.store.get_job(1)
        return job is not None and job.state == "withheld" and job.result_message_id is None

    await eventually(recorded)


async def test_a_picture_withheld_after_the_token_expired_is_explained_by_dm(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    checker_says(bot, withheld=True)
    with worker_paused(bot):
        handle = await slash_img2img(fd, world.guild, world.channel, world.alice)
        status = await wait_status(fd, handle)
        fd.expire_token(handle.token)
    dm_channel = fd.dm_channel_id(world.alice)
    dm = await fd.wait_for_message(lambda m: "safety" in m["content"], timeout=60,
                                   channel_id=dm_channel)  # fmt: skip
    assert "another prompt" in dm["content"]
    edited = await fd.until(
        lambda: (
            "withheld" in (fd.message(status["id"]) or {}).get("content", "")
            and fd.message(status["id"])
        ),
        what="status edited through the channel",
    )
    assert edited["components"] == []
    assert not any(m["attachments"] for m in fd.messages(include_deleted=True))


async def test_an_allowed_flagged_picture_is_posted_as_a_spoiler(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    checker_says(bot, withheld=False)
    result = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.alice))
    assert result["attachments"][0]["filename"].startswith("SPOILER_")
