"""The server gallery through the Discord stand-in: a real /img2img result lands in it (and
in the gallery channel), pages turn in place and keep turning after a restart, filters,
removal with its permissions, pruned files, and no server ever seeing another's pictures.

Most pictures are made by `add_picture` (a done job + PNG in the store, then the same
finished hook a real result runs) so paging tests do not wait for the model.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from PIL import Image

from bot.app import ImgBot
from bot.cogs.gallery import GalleryCog
from bot.store.db import Job
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    buttons,
    embed_fields,
    slash_img2img,
    wait_result,
)
from tests.fakediscord import FakeDiscord, InteractionHandle

pytestmark = pytest.mark.e2e

FOOTER = re.compile(r"Picture (\d+) of (\d+) · job #(\d+)")


def gallery_cog(bot: ImgBot) -> GalleryCog:
    cog = bot.get_cog("Gallery")
    assert isinstance(cog, GalleryCog)
    return cog


async def add_picture(
    bot: ImgBot, guild: int, channel: int, user: int, prompt: str, *, age_s: float = 0.0
) -> Job:
    """A finished job with its PNG and a posted result message, then the finished hook."""
    message = await bot.get_partial_messageable(channel, guild_id=guild).send(f"result: {prompt}")
    now = time.time() - age_s
    async with bot.store.transaction() as db:
        job_id = await bot.store.insert_job(
            db,
            guild_id=guild, channel_id=channel, user_id=user, prompt=prompt, strength=0.4,
            seed=1234, steps=4, guidance=7.5, input_path="inputs/fixture.png",
            input_width=128, input_height=128, created_at=now,
        )  # fmt: skip
        await bot.store.update_job_in(
            db,
            job_id,
            state="done",
            output_path=f"outputs/{job_id}.png",
            finished_at=now,
            result_message_id=message.id,
        )
    path = bot.settings.data_dir / "outputs" / f"{job_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), ((job_id * 53) % 256, 80, 160)).save(path)
    job = await bot.store.get_job(job_id)
    assert job is not None
    await gallery_cog(bot).on_finished(job)
    return job


async def browse(
    fd: FakeDiscord, guild: int, channel: int, member: int, **options: Any
) -> tuple[InteractionHandle, dict[str, Any]]:
    """/gallery browse by `member`; options as the command takes them (user, search...)."""
    handle = await fd.send_slash(guild, channel, member, "gallery browse", options)
    response = await handle.response()
    assert response["type"] == 4
    return handle, await handle.wait_original()


def shown(msg: dict[str, Any]) -> tuple[int, int, int]:
    """(picture number, total, job id) from a gallery message's footer."""
    match = FOOTER.search(msg["embeds"][0]["footer"]["text"])
    assert match, msg["embeds"][0]["footer"]
    return int(match[1]), int(match[2]), int(match[3])


async def turn(
    fd: FakeDiscord, msg: dict[str, Any], label: str, user: int, **kwargs: Any
) -> dict[str, Any]:
    """Click ◀/▶ and return the gallery message as edited in place."""
    click = await fd.click(msg["id"], button(msg, label)["custom_id"], user, **kwargs)
    assert (await click.response())["type"] == 7  # UPDATE_MESSAGE: edited in place
    return fd.message(msg["id"])


def enabled(msg: dict[str, Any], label: str) -> bool:
    return not button(msg, label).get("disabled", False)


async def job_state(bot: ImgBot, job_id: int) -> str | None:
    job = await bot.store.get_job(job_id)
    return job.state if job else None


async def eventually(
    probe: Callable[[], Awaitable[object]], expected: object, timeout: float = 5.0
) -> None:
    """For state outside the stand-in (the store, files), which `fd.until` cannot watch."""
    deadline = time.monotonic() + timeout
    while (value := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.02)


def output_bytes(bot: ImgBot, job_id: int) -> bytes:
    return (bot.settings.data_dir / "outputs" / f"{job_id}.png").read_bytes()


async def test_real_result_joins_gallery_and_channel_and_delete_removes_it(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    gallery_channel = fd.add_channel(world.guild, "gallery")
    setting = await fd.send_slash(
        world.guild, world.channel, world.admin, "settings gallery-channel",
        {"channel": gallery_channel},
    )  # fmt: skip
    assert "✅" in (await setting.response())["data"]["content"]

    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a watercolor fox", strength=0.6,
        negative_prompt="blurry",
    )  # fmt: skip
    result = await wait_result(fd, handle)
    job_id = int(result["embeds"][0]["footer"]["text"].rsplit("#", 1)[-1])
    result_fields = embed_fields(result)

    # mirrored to the gallery channel with a link back, the file re-uploaded
    post = await fd.until(
        lambda: next(iter(fd.messages(gallery_channel)), None), what="gallery channel post"
    )
    link = f"https://discord.com/channels/{world.guild}/{world.channel}/{result['id']}"
    assert link in post["content"]
    assert post["attachments"][0]["filename"] == f"gallery-{job_id}.png"
    assert fd.attachment_bytes(post) == output_bytes(bot, job_id)

    # any member browses it: every fact, the file from DATA_DIR, the link
    _, msg = await browse(fd, world.guild, world.channel, world.bob)
    assert msg["ephemeral"] is True
    fields = embed_fields(msg)
    assert fields["Requester"] == f"<@{world.alice}>"
    assert fields["Prompt"] == "a watercolor fox"
    assert fields["Negative prompt"] == "blurry"
    assert fields["Strength"] == "0.60"
    assert fields["Seed"] == result_fields["Seed"]
    assert fields["Made"].startswith("<t:")
    assert fields["Message"] == link
    assert shown(msg) == (1, 1, job_id)
    assert msg["attachments"][0]["filename"] == f"gallery-{job_id}.png"
    assert fd.attachment_bytes(msg) == output_bytes(bot, job_id)
    assert msg["embeds"][0]["image"]["url"] == msg["attachments"][0]["url"]
    assert any(b.get("url") == link for b in buttons(msg))
    assert not enabled(msg, "◀") and not enabled(msg, "Older")

    # the Delete button takes it out of the gallery, the channel and DATA_DIR
    click = await fd.click(result["id"], button(result, "Delete")["custom_id"], world.alice)
    await click.response()
    await fd.until(lambda: fd.message(post["id"])["deleted"], what="gallery post deleted")
    assert not (bot.settings.data_dir / "outputs" / f"{job_id}.png").exists()
    empty = await fd.send_slash(world.guild, world.channel, world.bob, "gallery browse", {})
    response = await empty.response()
    assert response["data"]["content"] == "🖼️ No pictures yet."
    # the gallery message still open pages to "nothing left" instead of failing
    left = await turn(fd, msg, "Older", world.bob, validate=False)
    assert "No pictures left" in left["content"] and not left["attachments"]


async def test_pages_turn_in_place_newest_first_with_filters(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    g, c = world.guild, world.channel
    jobs = [
        await add_picture(bot, g, c, world.alice, "red fox in snow", age_s=50),
        await add_picture(bot, g, c, world.bob, "a sleepy cat", age_s=40),
        await add_picture(bot, g, c, world.alice, "Fox cubs at dawn", age_s=30),
        await add_picture(bot, g, c, world.bob, "a cat and a FOX", age_s=20),
        await add_picture(bot, g, c, world.carol, "mountain lake", age_s=10),
    ]
    newest_first = [j.id for j in reversed(jobs)]

    _, msg = await browse(fd, g, c, world.alice)
    assert shown(msg) == (1, 5, newest_first[0])
    assert not enabled(msg, "◀") and enabled(msg, "Older")
    assert all(len(b.get("custom_id", "")) <= 100 for b in buttons(msg))
    seen = [shown(msg)[2]]
    while enabled(msg, "Older"):
        msg = await turn(fd, msg, "Older", world.alice)
        number, total, job_id = shown(msg)
        assert (number, total) == (len(seen) + 1, 5)
        assert msg["attachments"][0]["filename"] == f"gallery-{job_id}.png"
        assert fd.attachment_bytes(msg) == output_bytes(bot, job_id)
        seen.append(job_id)
    assert seen == newest_first
    msg = await turn(fd, msg, "◀", world.alice)
    assert shown(msg)[2] == newest_first[-2]

    # by member
    _, msg = await browse(fd, g, c, world.carol, user=world.bob)
    assert shown(msg) == (1, 2, jobs[3].id)
    assert f"<@{world.bob}>" in msg["embeds"][0]["description"]
    msg = await turn(fd, msg, "Older", world.carol)
    assert shown(msg) == (2, 2, jobs[1].id) and not enabled(msg, "Older")

    # by words in the prompt (any case), alone and with a member
    _, msg = await browse(fd, g, c, world.carol, search="FOX")
    ids = [shown(msg)[2]]
    while enabled(msg, "Older"):
        msg = await turn(fd, msg, "Older", world.carol)
        ids.append(shown(msg)[2])
    assert ids == [jobs[3].id, jobs[2].id, jobs[0].id]
    _, msg = await browse(fd, g, c, world.carol, user=world.alice, search="fox dawn")
    assert shown(msg) == (1, 1, jobs[2].id)

    # a search too long to fit a custom_id is stored; the buttons still fit and work
    long_search = "fox " + " ".join(["cubs", "at", "dawn", "x" * 80])[:95]
    _, msg = await browse(fd, g, c, world.carol, search=long_search)
    assert all(len(b.get("custom_id", "")) <= 100 for b in buttons(msg))
    none = await fd.send_slash(g, c, world.carol, "gallery browse", {"search": "zebra"})
    assert "No pictures" in (await none.response())["data"]["content"]


async def test_public_gallery_anyone_in_the_server_may_page(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    for i in range(3):
        await add_picture(bot, world.guild, world.channel, world.alice, f"fox {i}", age_s=10 - i)
    _, msg = await browse(fd, world.guild, world.channel, world.alice, public=True)
    assert msg["ephemeral"] is False
    msg = await turn(fd, msg, "Older", world.carol)  # not the opener
    assert shown(msg)[0] == 2
    msg = await turn(fd, msg, "Older", world.bob)
    assert shown(msg)[0] == 3


async def test_gallery_remove_requester_or_manage_messages(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    g, c = world.guild, world.channel
    mine = await add_picture(bot, g, c, world.alice, "alice's fox", age_s=20)
    other = await add_picture(bot, g, c, world.alice, "alice's cat", age_s=10)

    refused = await fd.send_slash(g, c, world.bob, "gallery remove", {"job": mine.id})
    assert "Only the person" in (await refused.response())["data"]["content"]
    assert not fd.message(mine.result_message_id)["deleted"]

    own = await fd.send_slash(g, c, world.alice, "gallery remove", {"job": mine.id})
    assert "Removed picture" in (await own.response())["data"]["content"]
    await fd.until(lambda: fd.message(mine.result_message_id)["deleted"], what="result deleted")
    await eventually(lambda: job_state(bot, mine.id), "deleted")

    by_mod = await fd.send_slash(g, c, world.mod, "gallery remove", {"job": other.id})
    assert "Removed picture" in (await by_mod.response())["data"]["content"]
    await fd.until(lambda: fd.message(other.result_message_id)["deleted"], what="result deleted")
    await eventually(lambda: job_state(bot, other.id), "deleted")

    again = await fd.send_slash(g, c, world.alice, "gallery remove", {"job": mine.id})
    assert "no picture" in (await again.response())["data"]["content"]
    empty = await fd.send_slash(g, c, world.alice, "gallery browse", {})
    assert "No pictures" in (await empty.response())["data"]["content"]


async def test_two_servers_never_see_each_other(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    a_jobs = [
        await add_picture(bot, world.guild, world.channel, world.alice, f"secret fox {i}")
        for i in range(2)
    ]
    b_job = await add_picture(bot, world.guild2, world.channel2, world.dave, "a quiet pond")

    # alice is in both servers; each gallery shows only its own
    _, msg_b = await browse(fd, world.guild2, world.channel2, world.alice)
    assert shown(msg_b) == (1, 1, b_job.id)
    _, msg_a = await browse(fd, world.guild, world.channel, world.alice, search="fox")
    assert shown(msg_a)[1] == 2
    for user in (world.alice, world.dave):
        nothing = await fd.send_slash(
            world.guild2, world.channel2, user, "gallery browse", {"search": "fox"}
        )
        assert "No pictures" in (await nothing.response())["data"]["content"]
        denied = await fd.send_slash(
            world.guild2, world.channel2, user, "gallery remove", {"job": a_jobs[0].id}
        )
        assert "no picture" in (await denied.response())["data"]["content"]
    assert (await bot.store.get_job(a_jobs[0].id)).state == "done"  # type: ignore[union-attr]

    # a click claiming server B on buttons of server A's gallery (only a forged interaction
    # could do that) shows only B's pictures, or refuses A's stored search
    for label, search in (("Older", None), ("◀", None), ("Older", "fox")):
        options = {"search": search} if search else {}
        _, msg = await browse(fd, world.guild, world.channel, world.alice, **options)
        click = await fd.click(
            msg["id"], button(msg, label)["custom_id"], world.dave, guild_id=world.guild2,
            validate=False,
        )  # fmt: skip
        response = await click.response()
        if search:
            assert response["type"] == 4 and response["data"]["flags"] & 64
            assert "out of date" in response["data"]["content"]
            continue
        assert response["type"] == 7
        edited = fd.message(msg["id"])
        assert shown(edited) == (1, 1, b_job.id)
        assert fd.attachment_bytes(edited) == output_bytes(bot, b_job.id)


async def test_page_buttons_work_after_a_restart(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    jobs = [
        await add_picture(bot, world.guild, world.channel, world.bob, f"cat {i}", age_s=10 - i)
        for i in range(3)
    ]
    _, msg = await browse(fd, world.guild, world.channel, world.bob, search="cat", public=True)
    msg = await turn(fd, msg, "Older", world.bob)
    assert shown(msg) == (2, 3, jobs[1].id)

    await fd.settle()
    await bot.close()
    bot = await make_bot()

    msg = await turn(fd, fd.message(msg["id"]), "Older", world.bob)
    assert shown(msg) == (3, 3, jobs[0].id)
    assert fd.attachment_bytes(msg) == output_bytes(bot, jobs[0].id)
    msg = await turn(fd, msg, "◀", world.carol)
    assert shown(msg) == (2, 3, jobs[1].id)


async def test_pruned_files_are_flagged_and_variants_say_so(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(storage_max_gb=0.000001)  # 1 kB: anything old goes
    pruner = gallery_cog(bot).pruner
    passes: list[object] = []
    real_run = pruner.run

    async def counted_run() -> Any:
        result = await real_run()
        passes.append(result)
        return result

    pruner.run = counted_run  # type: ignore[method-assign]
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, "a pruned fox")
    result = await wait_result(fd, handle)
    job_id = int(result["embeds"][0]["footer"]["text"].rsplit("#", 1)[-1])
    job = await bot.store.get_job(job_id)
    assert job is not None and job.output_path

    async def in_gallery() -> bool:  # the finished hook runs just after the result is posted
        return await gallery_cog(bot).entries.get(world.guild, job_id) is not None

    async def hook_pruned() -> int:  # and then its own pass, which must not see old files
        return len(passes)

    await eventually(in_gallery, True)
    await eventually(hook_pruned, 1)
    data = bot.settings.data_dir
    # just made: too young to prune even over the cap
    assert (data / job.output_path).exists() and (data / job.input_path).exists()

    hour_ago = time.time() - 3600
    for rel in (job.input_path, job.output_path):
        os.utime(data / rel, (hour_ago, hour_ago))
    pruned = await real_run()
    assert pruned is not None and set(pruned.removed) == {job.input_path, job.output_path}

    _, msg = await browse(fd, world.guild, world.channel, world.bob)
    fields = embed_fields(msg)
    assert "gone" in fields["Image"]
    assert fields["Message"].endswith(f"/{result['id']}")
    assert not msg["attachments"]

    variant = await fd.click(result["id"], button(result, "+")["custom_id"], world.bob)
    response = await variant.response()
    assert "no longer stored" in response["data"]["content"]


async def test_delete_while_the_copy_uploads_removes_copy_and_input(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Faults 8 and 15: the gallery-channel copy of a result deleted mid-upload is deleted
    too, and Delete removes the member's upload unless another live job still uses it."""
    bot = await make_bot()
    data = bot.settings.data_dir
    gallery_channel = fd.add_channel(world.guild, "gallery")
    setting = await fd.send_slash(
        world.guild, world.channel, world.admin, "settings gallery-channel",
        {"channel": gallery_channel},
    )  # fmt: skip
    assert "✅" in (await setting.response())["data"]["content"]
    copy_path = f"/channels/{gallery_channel}/messages"
    # hold the copy's upload: three 429s, which discord.py waits out and retries
    fd.inject_error("POST", f"^{copy_path}$", 429, {"message": "slow", "retry_after": 1.0}, times=3)

    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, "a held fox")
    result = await wait_result(fd, handle)
    job_id = int(result["embeds"][0]["footer"]["text"].rsplit("#", 1)[-1])
    job = await bot.store.get_job(job_id)
    assert job is not None and job.output_path
    await fd.wait_for(lambda c: c.path == copy_path and c.status == 429, timeout=30)
    click = await fd.click(result["id"], button(result, "Delete")["custom_id"], world.alice)
    await click.response()
    await eventually(lambda: job_state(bot, job_id), "deleted")
    # the Delete landed while the copy was still on its way
    assert not [c for c in fd.calls if c.path == copy_path and c.status < 300]
    copy = await fd.until(
        lambda: next(iter(fd.messages(gallery_channel, include_deleted=True)), None),
        timeout=30, what="the held copy",
    )  # fmt: skip
    await fd.until(lambda: fd.message(copy["id"])["deleted"], what="the late copy deleted")
    assert not (data / job.output_path).exists()
    assert not (data / job.input_path).exists()  # the upload went with it

    # an input another live job still uses stays until that one is deleted too
    g, c = world.guild, world.channel
    first = await add_picture(bot, g, c, world.alice, "first of two")
    second = await add_picture(bot, g, c, world.bob, "second of two")
    shared = data / "inputs" / "fixture.png"
    assert first.input_path == second.input_path == "inputs/fixture.png"
    Image.new("RGB", (32, 32)).save(shared)
    for job_done, user in ((first, world.alice), (second, world.bob)):
        removed = await fd.send_slash(g, c, user, "gallery remove", {"job": job_done.id})
        assert "Removed picture" in (await removed.response())["data"]["content"]
        await eventually(lambda j=job_done: job_state(bot, j.id), "deleted")  # type: ignore[misc]
        await fd.settle()
        assert shared.exists() == (job_done is first)
