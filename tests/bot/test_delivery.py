"""`DiscordDelivery` against the Discord stand-in: a real discord.py client (logged in over
HTTP, no gateway), a real store, and the stand-in recording every request.

The paths covered here are the ones after the interaction token is gone (by the clock or
because Discord refused it); the paths through a live token run in tests/e2e."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio
from PIL import Image

from bot.jobs.delivery import DiscordDelivery
from bot.jobs.notices import GENERIC_FAILURE, plain_text
from bot.store.db import Job, Store
from bot.ui.buttons import cancel_view
from tests.fakediscord import Call, FakeDiscord


@dataclass
class Env:
    fd: FakeDiscord
    client: discord.Client
    store: Store
    delivery: DiscordDelivery
    data_dir: Path
    guild: int
    channel: int
    alice: int

    async def job(self, *, token: str | None = "dead-token", expires: float | None = None,
                  status: bool = True, **values: Any) -> Job:  # fmt: skip
        """A job row whose status message exists in the channel, as after /img2img."""
        async with self.store.transaction() as db:
            job_id = await self.store.insert_job(
                db, guild_id=self.guild, channel_id=self.channel, user_id=self.alice,
                kind="new", prompt="@everyone @here <@&1> a fox", strength=0.5, seed=7,
                steps=4, guidance=7.5, input_path="inputs/in.png", input_width=64,
                input_height=64, application_id=self.fd.application_id,
                interaction_token=token,
                token_expires_at=time.time() - 1 if expires is None else expires,
            )  # fmt: skip
        if status:
            channel = self.client.get_partial_messageable(self.channel, guild_id=self.guild)
            msg = await channel.send(f"#{job_id} waiting", view=cancel_view(job_id))
            values["status_message_id"] = msg.id
        if values:
            await self.store.update_job(job_id, **values)
        job = await self.store.get_job(job_id)
        assert job is not None
        return job

    def calls_after(self, mark: int) -> list[Call]:
        return self.fd.calls[mark:]


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Painters")
        channel = fd.add_channel(guild, "art")
        alice = fd.add_user("alice")
        fd.add_member(guild, alice)
        with fd.patch_discord():
            intents = discord.Intents.none()
            intents.guilds = True
            client = discord.Client(
                intents=intents, allowed_mentions=discord.AllowedMentions.none()
            )
            await client.login(fd.token)
            store = await Store.open(tmp_path / "bot.sqlite3")
            delivery = DiscordDelivery(client, store, tmp_path)
            try:
                yield Env(fd, client, store, delivery, tmp_path, guild, channel, alice)
            finally:
                await store.close()
                await client.close()


def output(env: Env, job: Job) -> Job:
    (env.data_dir / "outputs").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), "teal").save(env.data_dir / "outputs" / f"{job.id}.png")
    job.output_path = f"outputs/{job.id}.png"
    job.state, job.steps_run, job.steps_total, job.seconds = "done", 2, 4, 1.0
    return job


def webhook_calls(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.path.startswith("/webhooks/")]


async def test_result_after_expiry_is_a_new_message_pinging_only_the_requester(env: Env) -> None:
    job = output(env, await env.job())
    mark = len(env.fd.calls)
    message_id = await env.delivery.deliver_result(job)

    calls = env.calls_after(mark)
    assert webhook_calls(calls) == []  # the clock says the token is gone: not even tried
    post = next(c for c in calls if c.method == "POST")
    assert post.path == f"/channels/{env.channel}/messages"
    assert post.json["allowed_mentions"] == {"parse": [], "users": [env.alice]}
    delete = next(c for c in calls if c.method == "DELETE")
    assert delete.path == f"/channels/{env.channel}/messages/{job.status_message_id}"

    status = env.fd.message(job.status_message_id or 0)
    assert status is not None and status["deleted"]  # no stale status, no live Cancel
    live = env.fd.messages(env.channel)
    assert len(live) == 1 and live[0]["attachments"]
    assert live[0]["content"] == f"<@{env.alice}> your image is ready."
    assert message_id == live[0]["id"]  # what `JobEvents._deliver` records


async def test_a_token_discord_refuses_is_learned_and_the_channel_used(env: Env) -> None:
    job = await env.job(expires=time.time() + 600)  # the clock says alive; Discord says 401
    mark = len(env.fd.calls)
    await env.delivery.show_status(job, "🎨 step 2 of 4", cancellable=True)

    calls = env.calls_after(mark)
    assert [c.status for c in webhook_calls(calls)] == [401]
    edit = next(c for c in calls if c.method == "PATCH" and c.path.startswith("/channels/"))
    assert "step 2 of 4" in edit.json["content"]
    row = await env.store.get_job(job.id)
    assert row is not None and row.token_expires_at == 0.0

    mark = len(env.fd.calls)
    await env.delivery.show_status(row, "🎨 step 3 of 4", cancellable=True)
    assert webhook_calls(env.calls_after(mark)) == []  # not asked again


async def test_failure_after_expiry_pings_in_plain_words(env: Env) -> None:
    job = await env.job()
    mark = len(env.fd.calls)
    await env.delivery.deliver_failure(
        job, "FileNotFoundError: [Errno 2] No such file: '/data/inputs/abc.png'"
    )
    live = env.fd.messages(env.channel)
    assert len(live) == 1
    text = live[0]["content"]
    assert GENERIC_FAILURE in text and "/data" not in text and "Errno" not in text
    assert text.startswith(f"<@{env.alice}>")
    post = next(c for c in env.calls_after(mark) if c.method == "POST")
    assert post.json["allowed_mentions"] == {"parse": [], "users": [env.alice]}
    assert env.fd.message(job.status_message_id or 0)["deleted"]  # type: ignore[index]


async def test_cancel_after_expiry_edits_the_status_in_place_without_a_ping(env: Env) -> None:
    job = await env.job()
    mark = len(env.fd.calls)
    await env.delivery.deliver_cancelled(job)
    calls = env.calls_after(mark)
    assert [(c.method, c.path) for c in calls] == [
        ("PATCH", f"/channels/{env.channel}/messages/{job.status_message_id}")
    ]
    assert calls[0].json["allowed_mentions"] == {"parse": []}
    status = env.fd.message(job.status_message_id or 0)
    assert status is not None and not status["deleted"]
    assert "Cancelled" in status["content"] and status["components"] == []


async def test_withheld_after_expiry_edits_the_status_and_tells_the_requester_by_dm(
    env: Env,
) -> None:
    job = await env.job()
    await env.delivery.deliver_withheld(job)
    status = env.fd.message(job.status_message_id or 0)
    assert status is not None and "withheld by the safety filter" in status["content"]
    assert status["components"] == []  # no Cancel button left
    dm = env.fd.messages(env.fd.dm_channel_id(env.alice))
    assert len(dm) == 1
    notice = dm[0]["content"]
    for needle in ("safety filter", "another prompt", "seed", "lower strength", f"#{job.id}"):
        assert needle in notice, needle
    assert not any(m["attachments"] for m in env.fd.messages())


async def test_withheld_with_closed_dms_pings_the_requester_in_the_channel(env: Env) -> None:
    job = await env.job()
    env.fd.inject_error("POST", r"^/users/@me/channels$", 400, {"message": "no", "code": 50007})
    mark = len(env.fd.calls)
    await env.delivery.deliver_withheld(job)
    pings = [
        c for c in env.calls_after(mark)
        if c.method == "POST" and c.path == f"/channels/{env.channel}/messages"
    ]  # fmt: skip
    assert len(pings) == 1
    assert pings[0].json["allowed_mentions"] == {"parse": [], "users": [env.alice]}
    assert "withheld" in pings[0].json["content"]
    assert "another prompt" not in pings[0].json["content"]  # the details stay private


async def test_an_allowed_age_restricted_result_is_a_spoiler(env: Env) -> None:
    job = output(env, await env.job(nsfw=1))
    await env.delivery.deliver_result(job)
    (posted,) = env.fd.messages(env.channel)
    assert posted["attachments"][0]["filename"].startswith("SPOILER_")


async def test_a_reply_keeps_its_reference_and_pings_after_expiry(env: Env) -> None:
    source = await env.client.get_partial_messageable(env.channel).send("an earlier result")
    job = output(env, await env.job(reply_to_message_id=source.id))
    await env.delivery.deliver_result(job)
    posted = [m for m in env.fd.messages(env.channel) if m["attachments"]]
    assert len(posted) == 1
    assert posted[0]["message_reference"]["message_id"] == source.id
    assert env.fd.message(job.status_message_id or 0)["deleted"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("The original image of this picture is no longer stored.", None),
        ("The worker ran out of memory; try a smaller image.", None),
        ("FileNotFoundError: [Errno 2] No such file or directory", GENERIC_FAILURE),
        ("could not open /srv/models/sd15/unet.bin", GENERIC_FAILURE),
        (r"C:\data\inputs\x.png missing", GENERIC_FAILURE),
        ("Traceback (most recent call last): ...", GENERIC_FAILURE),
        ("   ", GENERIC_FAILURE),
    ],
)
def test_plain_text_hides_exceptions_and_paths(message: str, shown: str | None) -> None:
    assert plain_text(message) == (shown or message)


async def test_a_variant_delivered_again_after_a_restart_is_found_not_posted_twice(
    env: Env,
) -> None:
    """A reply posts to the channel even while the token lives; when a restart delivers it
    again (`delivery_tries`), the message the first try left is found and edited."""
    channel = env.client.get_partial_messageable(env.channel, guild_id=env.guild)
    parent = await channel.send("the result it varies")
    job = output(env, await env.job(expires=time.time() + 600, reply_to_message_id=parent.id))
    await env.delivery.deliver_result(job)
    posted = [m for m in env.fd.messages(env.channel) if m["attachments"]]
    assert len(posted) == 1

    again = await env.store.get_job(job.id)
    assert again is not None
    again = output(env, again)
    again.delivery_tries, again.result_message_id = 1, None  # the record was cut off
    again.token_expires_at = time.time() + 600  # and the token still lives
    mark = len(env.fd.calls)
    message_id = await env.delivery.deliver_result(again)
    calls = env.calls_after(mark)
    assert not [c for c in calls if c.method == "POST" and c.path.endswith("/messages")]
    assert [m["id"] for m in env.fd.messages(env.channel) if m["attachments"]] == [posted[0]["id"]]
    assert message_id == posted[0]["id"]  # what `JobEvents._deliver` records


async def test_a_preview_after_expiry_rides_the_channel_edit_and_the_end_removes_it(
    env: Env,
) -> None:
    """Issue 29: past the interaction window a live preview goes through the channel edit
    of the bot's own status message (never a new message); a hidden one removes the
    picture; a job's final text (here: cancelled) removes it at once."""
    from bot.jobs.delivery import preview_files

    job = await env.job()
    jpeg = env.data_dir / "p.jpg"
    Image.new("RGB", (64, 48), "orange").save(jpeg, format="JPEG")
    mark = len(env.fd.calls)
    await env.delivery.show_status(job, "🎨 step 1 of 4", True, preview=jpeg.read_bytes())
    calls = env.calls_after(mark)
    assert webhook_calls(calls) == [] and [c.method for c in calls] == ["PATCH"]
    assert calls[0].path == f"/channels/{env.channel}/messages/{job.status_message_id}"
    status = env.fd.message(job.status_message_id or 0)
    assert status is not None
    assert [a["filename"] for a in status["attachments"]] == [f"preview-{job.id}.jpg"]
    assert (status["attachments"][0]["width"], status["attachments"][0]["height"]) == (64, 48)

    await env.delivery.show_status(job, "🎨 step 2 of 4", True, preview=b"")  # hidden
    assert preview_files(job.id, b"") == []
    assert env.fd.message(job.status_message_id or 0)["attachments"] == []  # type: ignore[index]

    await env.delivery.show_status(job, "🎨 step 3 of 4", True, preview=jpeg.read_bytes())
    await env.delivery.deliver_cancelled(job)
    ended = env.fd.message(job.status_message_id or 0)
    assert ended is not None and "Cancelled" in ended["content"] and ended["attachments"] == []
    assert len(env.fd.messages(env.channel)) == 1  # never a new message
