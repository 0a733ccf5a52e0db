"""Upscale ×2 end to end: /upscale's picture is the parent × 2 and equals `python -m pipeline
upscale`; past UPSCALE_MAX_SIDE it is refused privately with nothing queued (the command,
and Apps → Upscale ×2 on a result); the button under a result queues its tiles as jobs of
the clicker counting one image per four tiles; Cancel under the progress refunds every
tile, and so does a tile that cannot be made; an upscaled result's buttons, and its Reroll
(the upscale again with a new seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bot.app import ImgBot
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    cli_pixels,
    embed_fields,
    image_bytes,
    pixels,
    status_message,
    wait_result,
    worker_paused,
)
from tests.e2e.test_imagine_e2e import labels
from tests.e2e.test_iterate_e2e import job_count, private_text
from tests.fakediscord import FakeDiscord, InteractionHandle, Upload


async def slash_upscale(
    fd: FakeDiscord, world: World, data: bytes, **options: Any
) -> InteractionHandle:
    return await fd.send_slash(
        world.guild, world.channel, world.alice, "upscale", options,
        attachments={"image": Upload("photo.png", data, "image/png")},
    )  # fmt: skip


async def counted(bot: ImgBot, kind: str) -> int:
    cursor = await bot.store.db.execute("SELECT SUM(counted) FROM jobs WHERE kind=?", (kind,))
    row = await cursor.fetchone()
    return int(row[0] or 0)


async def test_upscale_command_button_and_message_command(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tmp_path: Path
) -> None:
    # 128 px tiles (RESOLUTION): a 96×64 picture is 2 tiles at ×2; the cap is 256 px.
    bot = await make_bot(min_input_side=64, upscale_max_side=256)
    assert any(c["name"] == "Upscale ×2" and c.get("type") == 3 for c in fd.commands())

    too_big = await slash_upscale(fd, world, image_bytes(160, 96))
    refusal = await private_text(too_big)
    assert "256" in refusal and "UPSCALE_MAX_SIDE" in refusal
    unknown = await slash_upscale(fd, world, image_bytes(96, 64), prompt="a fox <lora:nope>")
    assert "no LoRA called `nope`" in await private_text(unknown)  # checked like /img2img's
    assert await job_count(bot) == 0

    photo = image_bytes(96, 64)
    with worker_paused(bot):  # Cancel under the progress: every tile, refunded
        waiting = await slash_upscale(fd, world, photo, prompt="a red fox", seed=4)
        assert "2 tiles" in await private_text(waiting)
        status = await fd.until(lambda: status_message(fd, waiting), what="the upscale's message")
        assert "tile 0 of 2" in status["content"]
        # a place in the fair queue per tile, one entry against MAX_JOBS_PER_USER
        queue = bot.jobs.queue
        assert (queue.count(user_id=world.alice), queue.entries(world.alice)) == (2, 1)
        stop = await fd.click(status["id"], button(status, "Cancel")["custom_id"], world.alice)
        assert "did not count" in await private_text(stop)
        await fd.until(
            lambda: "Upscale cancelled" in (fd.message(status["id"])["content"] or ""),
            what="the upscale's message saying it was cancelled",
        )
        assert await counted(bot, "tile") == 0

    with worker_paused(bot):  # a tile that cannot be made stops the upscale, refunded
        failing = await slash_upscale(fd, world, photo, prompt="a red fox", seed=6)
        assert "2 tiles" in await private_text(failing)
        status = await fd.until(lambda: status_message(fd, failing), what="the upscale's message")
        for tile in (bot.settings.data_dir / "inputs").glob("*-tile*.png"):
            tile.unlink()
    await fd.until(
        lambda: "could not be made" in (fd.message(status["id"])["content"] or ""),
        what="the upscale's message saying a tile failed",
        timeout=60,
    )
    stopped = fd.message(status["id"])
    assert stopped is not None and not stopped["components"] and "quota" in stopped["content"]
    assert await counted(bot, "tile") == 0

    handle = await slash_upscale(fd, world, photo, prompt="a red fox", seed=5)
    answer = await private_text(handle)
    assert "192×128" in answer and "2 tiles" in answer and "counting 1 image " in answer
    result = await wait_result(fd, handle)
    assert not result["ephemeral"]
    picture = pixels(fd.attachment_bytes(result))
    assert picture.shape == (128, 192, 3)  # the parent × 2
    expected = await cli_pixels(
        bot, "upscale", photo, tmp_path, "--prompt", "a red fox", "--strength", "0.2",
        "--seed", "5",
    )  # fmt: skip
    assert np.array_equal(picture, expected)
    fields = embed_fields(result)
    assert (fields["Size"], fields["Strength"], fields["Seed"]) == ("192×128", "0.20", "5")
    assert "PNG" in result["embeds"][0]["footer"]["text"]
    # ×2 again would be 384 px, past the cap: no button for it, nor Refine/Edit/Compare
    assert labels(result)[1] == ["Inpaint"] and labels(result)[0][2:] == ["Reroll", "Delete"]
    assert await counted(bot, "tile") == 1  # 2 tiles: one image
    # progress went through the upscale's own message, which became the result
    history = [h.get("content") or "" for h in result["history"]]
    assert any("tile 0 of 2" in text for text in history), history

    # Reroll under the upscaled picture: the upscale again with a new seed
    reroll = await fd.click(result["id"], button(result, "Reroll")["custom_id"], world.bob)
    assert "2 tiles" in await private_text(reroll)
    again = await wait_result(fd, reroll)
    assert pixels(fd.attachment_bytes(again)).shape == (128, 192, 3)
    assert embed_fields(again)["Prompt"] == "a red fox" and embed_fields(again)["Seed"] != "5"

    jobs = await job_count(bot)
    menu = await fd.send_message_command(
        world.guild, world.channel, world.bob, "Upscale ×2", result["id"]
    )
    assert "256" in await private_text(menu)  # the same cap, privately; nothing queued
    assert await job_count(bot) == jobs

    base = await wait_result(
        fd,
        await fd.send_slash(world.guild, world.channel, world.bob, "imagine",
                            {"prompt": "a lighthouse", "seed": 3, "aspect": "4:3"}),
    )  # fmt: skip
    assert labels(base)[1][-1] == "Upscale ×2"  # 128×96: twice fits the cap
    click = await fd.click(base["id"], button(base, "Upscale")["custom_id"], world.carol)
    assert "6 tiles" in (said := await private_text(click)) and "counting 2 images" in said
    upscaled = await wait_result(fd, click)
    assert pixels(fd.attachment_bytes(upscaled)).shape == (192, 256, 3)
    assert embed_fields(upscaled)["Prompt"] == "a lighthouse"
    assert await counted(bot, "tile") == 1 + 1 + 2
    fd.assert_no_unknown_routes()


async def test_an_upscale_goes_on_after_a_restart_and_a_withheld_tile_withholds_it(
    fd: FakeDiscord, world: World, make_bot: BotFactory, checker_dirs: dict[str, Path]
) -> None:
    bot = await make_bot(min_input_side=64)
    with worker_paused(bot):  # queued, not run, when the bot stops
        handle = await slash_upscale(fd, world, image_bytes(96, 64), prompt="a fox", seed=7)
        assert "2 tiles" in await private_text(handle)
        status = await fd.until(lambda: status_message(fd, handle), what="the upscale's message")
        await bot.close()
    # after the restart its tiles run (here with a checker that flags every picture)
    bot = await make_bot(min_input_side=64, safety_checker_id=str(checker_dirs["all"]))
    await fd.until(
        lambda: "withheld a tile" in (fd.message(status["id"])["content"] or ""),
        what="the upscale's message saying a tile was withheld",
        timeout=60,
    )
    assert await counted(bot, "tile") == 1  # the work was done: counted, like any withheld job
    cursor = await bot.store.db.execute("SELECT COUNT(*) FROM jobs WHERE kind='upscale'")
    row = await cursor.fetchone()
    assert row is not None and row[0] == 0  # no picture to check, none posted
