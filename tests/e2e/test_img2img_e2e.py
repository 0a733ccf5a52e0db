"""/img2img end to end: the real client, the real worker, the Discord stand-in."""

from __future__ import annotations

import io

from PIL import Image

from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    buttons,
    embed_fields,
    eventually,
    image_bytes,
    slash_img2img,
    status_message,
    wait_result,
)
from tests.fakediscord import FakeDiscord

EPHEMERAL = 64


async def test_login_syncs_commands(fd: FakeDiscord, world: World, make_bot: BotFactory) -> None:
    await make_bot()
    names = {c["name"] for c in fd.commands()}
    assert {"img2img", "queue", "help"} <= names
    options = {o["name"]: o for o in fd.command("img2img")["options"]}
    assert options["image"]["type"] == 11 and options["image"]["required"]
    assert options["strength"]["min_value"] == 0.05 and options["strength"]["max_value"] == 1.0
    assert fd.identify_count == 1


async def test_img2img_defers_shows_progress_and_posts_result(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    # 256 px and 75 denoising steps: long enough for several progress edits on any machine
    bot = await make_bot(progress_interval_s=0.0, resolution=256)
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, negative_prompt="blurry", strength=0.5,
        seed=1234, steps=150,
    )  # fmt: skip
    response = await handle.response()  # the answer is the public status message itself
    assert response["type"] == 4 and not response["data"].get("flags", 0) & EPHEMERAL
    ack = await handle.wait_original(lambda m: not m["loading"])
    assert not ack["ephemeral"] and "in this server's queue" in ack["content"]

    result = await wait_result(fd, handle)
    assert not result["ephemeral"]
    assert f"<@{world.alice}>" in result["content"]
    # its history shows the queue place, then the progress bar with step k of n
    texts = [h.get("content") or "" for h in result["history"]]
    assert any("in this server's queue" in t or "Starting" in t for t in texts), texts
    assert any("step" in t and "of 75" in t for t in texts), texts

    png = Image.open(io.BytesIO(fd.attachment_bytes(result)))
    assert png.format == "PNG" and png.size == (256, 208)  # 320×256 kept its aspect
    fields = embed_fields(result)
    assert fields["Prompt"] == "a watercolor fox"
    assert fields["Negative prompt"] == "blurry"
    assert fields["Strength"] == "0.50"
    assert fields["Seed"] == "1234"
    assert fields["Steps"] == "75 of 150"
    labels = [b["label"] for b in buttons(result)]
    assert labels[:4] == ["−0.15 → 0.35", "+0.15 → 0.65", "Reroll", "Delete"]
    assert labels[4:] == ["Refine", "Edit", "Compare", "Inpaint", "Upscale ×2"]  # a second row

    async def recorded() -> bool:
        job = await bot.store.get_job(1)
        return job is not None and job.state == "done" and job.result_message_id == result["id"]

    await eventually(recorded)
    fd.assert_no_unknown_routes()


async def test_variant_and_reroll_rerun_the_stored_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, seed=77)
    original = await wait_result(fd, handle)

    click = await fd.click(original["id"], button(original, "+0.15")["custom_id"], world.bob)
    variant = await wait_result(fd, click)
    assert variant["message_reference"]["message_id"] == original["id"]
    assert f"<@{world.bob}>" in variant["content"]
    fields = embed_fields(variant)
    assert (fields["Strength"], fields["Seed"], fields["Prompt"]) == (
        "0.65",
        "77",
        "a watercolor fox",
    )
    assert [b["label"] for b in buttons(variant)][:2] == ["−0.15 → 0.50", "+0.15 → 0.80"]
    new_job = await bot.store.get_job(2)
    assert new_job is not None and new_job.user_id == world.bob and new_job.parent_id == 1

    click = await fd.click(original["id"], button(original, "Reroll")["custom_id"], world.carol)
    reroll = await wait_result(fd, click)
    fields = embed_fields(reroll)
    assert fields["Strength"] == "0.50" and fields["Seed"] != "77"
    assert reroll["message_reference"]["message_id"] == original["id"]


async def test_variant_buttons_disable_at_the_ends(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot()
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, strength=1.0)
    result = await wait_result(fd, handle)
    assert button(result, "+")["disabled"] is True
    assert button(result, "−0.15 → 0.85").get("disabled") in (None, False)


async def test_delete_is_for_the_requester_or_moderators(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    result = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.alice))
    delete_id = button(result, "Delete")["custom_id"]

    refused = await fd.click(result["id"], delete_id, world.bob)
    msg = await refused.wait_original()
    assert msg["ephemeral"] and "Manage Messages" in msg["content"]
    assert not fd.message(result["id"])["deleted"]

    done = await fd.click(result["id"], delete_id, world.mod)
    assert (await done.wait_original())["ephemeral"]
    await fd.until(lambda: fd.message(result["id"])["deleted"], what="result deleted")

    async def deleted() -> bool:
        job = await bot.store.get_job(1)
        return job is not None and job.state == "deleted"

    await eventually(deleted)


async def test_bad_inputs_get_a_private_message_and_queue_nothing(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    cases = [
        ({"prompt": "   "}, {}, "prompt is empty"),
        ({"strength": 1.5}, {}, "Strength 1.5 is out of range"),
        ({"seed": 2**33}, {}, "Seed"),
        ({}, {"size": 50_000_000}, "the limit is 10.0 MB"),
        ({}, {"data": b"GIF89a not really"}, "PNG, JPEG"),
        ({}, {"data": image_bytes(200, 120)}, "512×512"),
        ({"prompt": "x" * 1001}, {}, "1000"),
    ]
    for options, upload, needle in cases:
        prompt = options.pop("prompt", "a fox")
        handle = await slash_img2img(
            fd, world.guild, world.channel, world.alice, prompt, validate=False, **upload, **options
        )
        msg = await handle.wait_original(lambda m: not m["loading"])
        assert msg["ephemeral"], needle
        assert needle in msg["content"], (needle, msg["content"])
        assert status_message(fd, handle) is None
    assert await bot.store.jobs_in_states(["queued", "running", "done"]) == []
    assert list((bot.settings.data_dir / "inputs").glob("*")) == []  # no upload kept


async def test_queue_and_help_answer_privately(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot()
    handle = await fd.send_slash(world.guild, world.channel, world.alice, "help")
    msg = await handle.wait_original()
    assert msg["ephemeral"] and "/img2img" in msg["embeds"][0]["description"]
    handle = await fd.send_slash(world.guild, world.channel, world.alice, "queue")
    msg = await handle.wait_original()
    assert msg["ephemeral"] and "Waiting in this server: 0" in msg["content"]


async def test_queue_caps_refuse_privately(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(max_jobs_per_user=1, max_queue_per_guild=2)
    first = await slash_img2img(fd, world.guild, world.channel, world.alice, steps=150)
    await first.wait_original(lambda m: not m["loading"])
    second = await slash_img2img(fd, world.guild, world.channel, world.alice)
    msg = await second.wait_original()
    assert second.response_type == 4 and msg["ephemeral"]
    assert "You already have 1 jobs waiting or running" in msg["content"]
    third = await slash_img2img(fd, world.guild, world.channel, world.bob)
    await third.wait_original(lambda m: not m["loading"])
    fourth = await slash_img2img(fd, world.guild, world.channel, world.carol)
    assert "This server's queue is full" in (await fourth.wait_original())["content"]
    assert len(await bot.store.jobs_in_states(["queued", "running"])) == 2


async def test_dev_guild_syncs_commands_to_that_guild(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot(dev_guild_id=world.guild, wait_worker=False)
    assert {c["name"] for c in fd.commands(guild_id=world.guild)} >= {"img2img", "queue"}
    assert fd.commands() == []
