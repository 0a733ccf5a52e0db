"""Safety through the Discord stand-in: pictures of private channels stay there, /gallery
remove asks for Manage Messages where the picture was made, blocked words are refused
before anything is queued, and /gallery forget-me removes a member's pictures, inputs and
copies while their usage keeps counting and other members' pictures stay."""

from __future__ import annotations

import time
from typing import Any

import pytest
from PIL import Image

from bot.app import ImgBot
from bot.store.db import Job
from tests.e2e.conftest import (
    MANAGE_MESSAGES,
    BotFactory,
    World,
    button,
    slash_img2img,
    wait_result,
)
from tests.e2e.test_gallery_e2e import browse, eventually, gallery_cog, job_state, shown
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.e2e


def job_id_of(result: dict[str, Any]) -> int:
    return int(result["embeds"][0]["footer"]["text"].rsplit("#", 1)[-1])


async def picture(
    bot: ImgBot,
    guild: int,
    channel: int,
    user: int,
    prompt: str,
    *,
    input_path: str = "inputs/fixture.png",
    parent_id: int | None = None,
    age_s: float = 0.0,
) -> Job:
    """A finished job with its input, output and posted message, then the finished hook
    (the real one a result runs), so setup does not wait for the model."""
    message = await bot.get_partial_messageable(channel, guild_id=guild).send(f"result: {prompt}")
    now = time.time() - age_s
    async with bot.store.transaction() as db:
        job_id = await bot.store.insert_job(
            db,
            guild_id=guild, channel_id=channel, user_id=user, prompt=prompt, strength=0.4,
            seed=1, steps=4, guidance=7.5, input_path=input_path, input_width=32,
            input_height=32, created_at=now, parent_id=parent_id,
        )  # fmt: skip
        await bot.store.update_job_in(
            db, job_id, state="done", output_path=f"outputs/{job_id}.png", finished_at=now,
            result_message_id=message.id,
        )  # fmt: skip
    data = bot.settings.data_dir
    for rel in (input_path, f"outputs/{job_id}.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (job_id % 256, 90, 140)).save(data / rel)
    job = await bot.store.get_job(job_id)
    assert job is not None
    await gallery_cog(bot).on_finished(job)
    return job


async def slash_text(
    fd: FakeDiscord, guild: int, where: int, user: int, name: str, **options: Any
) -> str:
    """A command's immediate (type 4) answer text."""
    handle = await fd.send_slash(guild, where, user, name, options)
    return str((await handle.response())["data"]["content"])


async def test_private_channel_results_stay_there_and_remove_checks_their_channel(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    g = world.guild
    hidden = fd.add_channel(g, "secret", hidden=True)
    fd.allow_channel_view(hidden, world.alice)
    thread = fd.add_thread(hidden, "secret-thread")
    corner = fd.add_channel(g, "corner")
    fd.set_channel_permissions(corner, world.carol, allow=MANAGE_MESSAGES)
    gallery_channel = fd.add_channel(g, "gallery")
    bot = await make_bot()
    assert "✅" in await slash_text(
        fd, g, world.channel, world.admin, "settings gallery-channel", channel=gallery_channel
    )

    # a real result made in the private channel
    handle = await slash_img2img(fd, g, hidden, world.alice, "a hidden fox")
    secret = job_id_of(await wait_result(fd, handle))

    async def in_gallery() -> bool:
        return await gallery_cog(bot).entries.get(g, secret) is not None

    await eventually(in_gallery, True)
    job = await bot.store.get_job(secret)
    assert job is not None and (job.channel_public, job.channel_nsfw) == (0, 0)
    # a public one after it: its mirror is posted by the same hook, so by now the private
    # one would have been mirrored too
    public = await picture(bot, g, world.channel, world.bob, "a public cat", age_s=3600)
    await fd.settle()
    copies = fd.messages(gallery_channel)
    assert [c["attachments"][0]["filename"] for c in copies] == [f"gallery-{public.id}.png"]

    # from the public channel only the public picture; from inside, both
    _, msg = await browse(fd, g, world.channel, world.bob)
    assert shown(msg) == (1, 1, public.id)
    none = await fd.send_slash(g, world.channel, world.alice, "gallery browse", {"search": "fox"})
    assert "No pictures" in (await none.response())["data"]["content"]
    _, msg = await browse(fd, g, hidden, world.alice)
    assert shown(msg) == (1, 2, secret)
    _, msg = await browse(fd, g, thread, world.alice)
    assert shown(msg) == (1, 2, secret)

    # /gallery remove: Manage Messages counts in the picture's own channel only
    mine_elsewhere = await picture(bot, g, corner, world.bob, "a corner dog")
    text = await slash_text(fd, g, corner, world.carol, "gallery remove", job=public.id)
    assert "Only the person" in text and "channel where it was made" in text
    assert await job_state(bot, public.id) == "done"
    text = await slash_text(
        fd, g, world.channel, world.carol, "gallery remove", job=mine_elsewhere.id
    )
    assert "Removed picture" in text
    await eventually(lambda: job_state(bot, mine_elsewhere.id), "deleted")
    # the private picture does not exist for someone outside its channel
    text = await slash_text(fd, g, world.channel, world.mod, "gallery remove", job=secret)
    assert "no picture" in text
    assert await job_state(bot, secret) == "done"


async def quota_text(fd: FakeDiscord, world: World, user: int) -> str:
    return await slash_text(fd, world.guild, world.channel, user, "quota")


async def job_count(bot: ImgBot) -> int:
    row = await (await bot.store.db.execute("SELECT count(*) FROM jobs")).fetchone()
    return int(row[0]) if row else 0


async def test_blocked_words_and_forget_me(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    g, c = world.guild, world.channel
    gallery_channel = fd.add_channel(g, "gallery")
    bot = await make_bot(blocked_words="dragon, sea serpent")
    data = bot.settings.data_dir
    await slash_text(fd, g, c, world.admin, "settings gallery-channel", channel=gallery_channel)
    assert "“fox”" in await slash_text(
        fd, g, c, world.admin, "settings blocked-words add", word="Fox"
    )
    assert "fox" in await slash_text(fd, g, c, world.admin, "settings blocked-words list")
    denied = await fd.send_slash(
        g, c, world.bob, "settings blocked-words add", {"word": "cat"}, validate=False
    )
    assert "Manage Server" in (await denied.response())["data"]["content"]
    show = await slash_text(fd, g, c, world.admin, "settings show")
    assert "Blocked words: 1 of this server, 2 of the bot's operator" in show
    assert "Age-restricted channels: filtered" in show and "last 24 h: 0 images" in show

    # refused with the word named; nothing queued, nothing spent
    quota_before = await quota_text(fd, world, world.alice)
    for prompt, word in (("a sly ＦＯＸ at dusk", "fox"), ("A SEA-SERPENT rising", "sea serpent")):
        handle = await slash_img2img(fd, g, c, world.alice, prompt)
        refused = await handle.wait_original(lambda m: not m["loading"])
        assert refused["ephemeral"] and f"“{word}”" in refused["content"]
    assert await job_count(bot) == 0
    assert await quota_text(fd, world, world.alice) == quota_before
    assert not any((data / "inputs").glob("*"))  # the uploads were not kept either

    # a negative prompt is not checked: alice's real result, mirrored to the gallery channel
    handle = await slash_img2img(fd, g, c, world.alice, "a calm lake", negative_prompt="fox")
    result = await wait_result(fd, handle)
    real = job_id_of(result)
    copy = await fd.until(
        lambda: next(iter(fd.messages(gallery_channel)), None), what="gallery copy"
    )
    real_job = await bot.store.get_job(real)
    assert real_job is not None
    # a second picture of alice's, whose input bob's variant still uses, and bob's own
    shared = await picture(bot, g, c, world.alice, "alice two", input_path="inputs/shared.png")
    bobs = await picture(
        bot, g, c, world.bob, "bob's take", input_path="inputs/shared.png", parent_id=shared.id
    )
    quota_before = await quota_text(fd, world, world.alice)

    # the confirmation: only alice may press it
    ask = await fd.send_slash(g, c, world.alice, "gallery forget-me", {})
    prompt_msg = await ask.wait_original()
    assert prompt_msg["ephemeral"] and "cannot be undone" in prompt_msg["content"]
    confirm = button(prompt_msg, "Delete everything")["custom_id"]
    other = await fd.click(prompt_msg["id"], confirm, world.bob, validate=False)
    assert "Only the member" in (await other.response())["data"]["content"]
    assert await bot.store.get_job(real) is not None
    click = await fd.click(prompt_msg["id"], confirm, world.alice)
    assert (await click.response())["type"] == 7
    done = await fd.until(
        lambda: (m := fd.message(prompt_msg["id"])) and "Deleted" in m["content"] and m,
        timeout=20, what="forget-me summary",
    )  # fmt: skip
    assert "2 pictures" in done["content"] and "1 uploaded image" in done["content"]

    # alice's pictures, input, messages and copy are gone; her usage is not
    assert fd.message(result["id"])["deleted"] and fd.message(copy["id"])["deleted"]
    for rel in (real_job.output_path, real_job.input_path, shared.output_path):
        assert rel and not (data / rel).exists(), rel
    assert (data / "inputs/shared.png").exists()  # bob's job still uses it
    assert await bot.store.get_job(real) is None and await bot.store.get_job(shared.id) is None
    assert await quota_text(fd, world, world.alice) == quota_before
    # bob's picture stays, unlinked from alice's
    bob_job = await bot.store.get_job(bobs.id)
    assert bob_job is not None and bob_job.state == "done" and bob_job.parent_id is None
    assert bob_job.output_path and (data / bob_job.output_path).exists()
    assert not fd.message(bobs.result_message_id)["deleted"]
    _, msg = await browse(fd, g, c, world.carol)
    assert shown(msg) == (1, 1, bobs.id)
