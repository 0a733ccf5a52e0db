"""Working on a result end to end: Refine and Edit through their modals (pixel-equal to the
CLI), Apps → Img2img this, bad modal input, Compare with Use, and all of it after a restart."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bot.app import ImgBot
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    buttons,
    embed_fields,
    image_bytes,
    slash_img2img,
    wait_result,
    worker_paused,
)
from tests.fakediscord import FakeDiscord, InteractionHandle, Upload

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(
    bot: ImgBot,
    image: bytes,
    tmp: Path,
    *,
    prompt: str,
    strength: float,
    seed: int,
    negative: str | None = None,
) -> np.ndarray:
    """`python -m pipeline run` on these PNG bytes with the bot's model settings. A parent
    result is as small as the test resolution, so the CLI is told the bot's own floor."""
    source, out = tmp / f"in-{seed}-{strength}.png", tmp / f"out-{seed}-{strength}.png"
    source.write_bytes(image)
    s = bot.settings
    extra = ["--negative-prompt", negative] if negative else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "run", str(source), "--prompt", prompt, *extra,
        "--strength", str(strength), "--seed", str(seed), "--steps", str(s.default_steps),
        "--guidance", str(s.default_guidance), "--model", s.model_id, "--device", s.device,
        "--dtype", s.dtype, "--resolution", str(s.resolution), "--output", str(out),
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "MIN_INPUT_SIDE": "8"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return pixels(out.read_bytes())


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def private_text(handle: InteractionHandle) -> str:
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"], msg["content"]
    return str(msg["content"])


async def job_count(bot: ImgBot) -> int:
    row = await (await bot.store.db.execute("SELECT COUNT(*) FROM jobs")).fetchone()
    return int(row[0])


def field_values(handle: InteractionHandle) -> dict[str, Any]:
    return {label: comp.get("value") for label, comp in handle.modal_inputs().items()}


async def open_modal(
    fd: FakeDiscord, msg: dict[str, Any], label: str, user: int
) -> InteractionHandle:
    click = await fd.click(msg["id"], button(msg, label)["custom_id"], user)
    await click.wait_modal()
    return click


async def test_refine_and_edit_open_prefilled_modals_and_match_the_cli(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make_bot()
    photo = image_bytes()
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a watercolor fox", data=photo,
        negative_prompt="blurry", strength=0.6, seed=77,
    )  # fmt: skip
    original = await wait_result(fd, handle)
    first_row = original["components"][0]["components"]
    second_row = original["components"][1]["components"]
    assert [b["label"] for b in first_row][2:] == ["Reroll", "Delete"]
    second = [b["label"] for b in second_row]
    assert second == ["Refine", "Edit", "Compare", "Inpaint", "Upscale ×2"]

    refine = await open_modal(fd, original, "Refine", world.bob)
    assert field_values(refine) == {
        "Prompt": "a watercolor fox",
        "Negative prompt": "blurry",
        "Strength": "0.30",
        "Seed": "77",
    }
    submit = await fd.submit_modal(refine, {"Prompt": "a watercolor fox, detailed"})
    refined = await wait_result(fd, submit)
    assert refined["message_reference"]["message_id"] == original["id"]
    fields = embed_fields(refined)
    assert (fields["Prompt"], fields["Strength"], fields["Seed"]) == (
        "a watercolor fox, detailed",
        "0.30",
        "77",
    )
    job = await bot.store.get_job(2)
    assert job is not None and (job.kind, job.parent_id, job.user_id) == ("refine", 1, world.bob)
    link = f"https://discord.com/channels/{world.guild}/{world.channel}/{original['id']}"
    assert refined["embeds"][0]["description"] == f"from [#1]({link})"
    parent_png = fd.attachment_bytes(original)
    expected = await run_cli(
        bot, parent_png, tmp_path, prompt="a watercolor fox, detailed", negative="blurry",
        strength=0.3, seed=77,
    )  # fmt: skip
    assert np.array_equal(pixels(fd.attachment_bytes(refined)), expected)

    # Edit: the original photo, its own strength; a decimal comma is read as a point
    edit = await open_modal(fd, refined, "Edit", world.alice)
    assert field_values(edit)["Strength"] == "0.30"
    edit_on_original = await open_modal(fd, original, "Edit", world.alice)
    assert field_values(edit_on_original)["Strength"] == "0.60"
    submit = await fd.submit_modal(
        edit_on_original, {"Prompt": "an oil painting of a fox", "Strength": "0,5", "Seed": "5"}
    )
    edited = await wait_result(fd, submit)
    fields = embed_fields(edited)
    assert (fields["Prompt"], fields["Strength"], fields["Seed"]) == (
        "an oil painting of a fox",
        "0.50",
        "5",
    )
    expected = await run_cli(
        bot, photo, tmp_path, prompt="an oil painting of a fox", negative="blurry",
        strength=0.5, seed=5,
    )  # fmt: skip
    assert np.array_equal(pixels(fd.attachment_bytes(edited)), expected)

    # /gallery browse shows the newest picture (the edit) with where it came from
    browse = await fd.send_slash(world.guild, world.channel, world.alice, "gallery browse")
    shown = await browse.wait_original()
    sections = {f["name"]: f["value"] for f in shown["embeds"][0]["fields"]}
    assert sections["From"] == f"from [#1]({link})"
    fd.assert_no_unknown_routes()


async def test_bad_modal_input_is_refused_privately_and_queues_nothing(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    original = await wait_result(
        fd, await slash_img2img(fd, world.guild, world.channel, world.alice)
    )
    count = await job_count(bot)
    cases = [
        ({"Strength": "1.5"}, "Strength 1.5 is out of range", "Refine"),
        ({"Strength": "strong"}, "Strength must be a number", "Refine"),
        ({"Prompt": "   "}, "prompt is empty", "Edit"),
        ({"Seed": "-3"}, "Seed must be a whole number", "Edit"),
        ({"Style": "no-such"}, "There is no style called `no-such`", "Edit"),
    ]
    for values, needle, label in cases:
        opened = await open_modal(fd, original, label, world.bob)
        text = await private_text(await fd.submit_modal(opened, values))
        assert needle in text, (needle, text)
        assert f"Click **{label}**" in text and "Nothing was queued" in text
    assert await job_count(bot) == count


async def test_img2img_this_on_a_members_photo_and_on_a_message_without_one(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make_bot()
    assert any(c["name"] == "Img2img this" and c.get("type") == 3 for c in fd.commands()), (
        fd.commands()
    )
    photo = image_bytes()
    posted = fd.upload_message(
        world.channel, world.carol, "my cat", [Upload("cat.png", photo, "image/png")]
    )
    menu = await fd.send_message_command(
        world.guild, world.channel, world.bob, "Img2img this", posted["id"]
    )
    await menu.wait_modal()
    assert field_values(menu)["Strength"] == "0.50"
    submit = await fd.submit_modal(menu, {"Prompt": "a cat in space", "Seed": "9"})
    result = await wait_result(fd, submit)
    assert embed_fields(result)["Prompt"] == "a cat in space"
    expected = await run_cli(bot, photo, tmp_path, prompt="a cat in space", strength=0.5, seed=9)
    assert np.array_equal(pixels(fd.attachment_bytes(result)), expected)

    # several pictures: the modal lets the member pick one
    two = fd.upload_message(
        world.channel, world.carol, "", [
            Upload("first.png", photo, "image/png"),
            Upload("second.png", image_bytes(400, 300), "image/png"),
        ],
    )  # fmt: skip
    menu = await fd.send_message_command(
        world.guild, world.channel, world.bob, "Img2img this", two["id"]
    )
    await menu.wait_modal()
    assert "Picture" in menu.modal_inputs()
    picked = await wait_result(
        fd,
        await fd.submit_modal(menu, {"Picture": ["1"], "Prompt": "a dog", "Style": "watercolour"}),
    )
    job = await bot.store.get_job(int(picked["embeds"][0]["footer"]["text"].rsplit("#", 1)[1]))
    assert job is not None and (job.input_width, job.input_height) == (400, 300)
    # the Style field composes the prompt like /img2img's style option
    assert job.style == "watercolour" and job.prompt.startswith("a dog, ")
    assert embed_fields(picked)["Style"] == "watercolour"

    text_only = fd.upload_message(world.channel, world.carol, "no picture here")
    menu = await fd.send_message_command(
        world.guild, world.channel, world.bob, "Img2img this", text_only["id"]
    )
    assert "has no picture" in await private_text(menu)
    # a picture that is too small is refused exactly like /img2img's
    small = fd.upload_message(
        world.channel, world.carol, "", [Upload("s.png", image_bytes(200, 120), "image/png")]
    )
    menu = await fd.send_message_command(
        world.guild, world.channel, world.bob, "Img2img this", small["id"]
    )
    await menu.wait_modal()
    refused = await fd.submit_modal(menu, {"Prompt": "a cat"})
    assert "512×512" in await private_text(refused)
    fd.assert_no_unknown_routes()


async def test_buttons_and_modals_work_after_a_restart(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    original = await wait_result(
        fd, await slash_img2img(fd, world.guild, world.channel, world.alice, seed=3)
    )
    opened_before = await open_modal(fd, original, "Edit", world.bob)
    await bot.close()

    bot = await make_bot()
    # a modal opened before the restart is submitted after it
    edited = await wait_result(fd, await fd.submit_modal(opened_before, {"Strength": "0.4"}))
    assert embed_fields(edited)["Strength"] == "0.40"
    refine = await open_modal(fd, original, "Refine", world.carol)
    refined = await wait_result(fd, await fd.submit_modal(refine, {}))
    assert embed_fields(refined)["Strength"] == "0.30"
    assert [b["label"] for b in buttons(refined)][-5:-1] == ["Refine", "Edit", "Compare", "Inpaint"]
    click = await fd.click(original["id"], button(original, "Compare")["custom_id"], world.bob)
    comparison = await fd.until(
        lambda: (m := click.original()) and len(m["attachments"]) == 3 and m["components"] and m,
        timeout=120,
        what="a comparison after the restart",
    )
    await bot.close()

    bot = await make_bot()
    count = await job_count(bot)
    use = await fd.click(comparison["id"], button(comparison, "Use 0.35")["custom_id"], world.bob)
    assert embed_fields(await use.wait_original())["Strength"] == "0.35"
    assert await job_count(bot) == count


async def test_compare_shows_three_strengths_and_use_posts_one_without_a_new_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    original = await wait_result(
        fd, await slash_img2img(fd, world.guild, world.channel, world.alice, seed=11)
    )
    click = await fd.click(original["id"], button(original, "Compare")["custom_id"], world.bob)

    def finished() -> dict[str, Any] | None:
        msg = click.original()
        return msg if msg and len(msg["attachments"]) == 3 and msg["components"] else None

    comparison = await fd.until(finished, timeout=120, what="the comparison with three images")
    assert not comparison["ephemeral"]
    assert "0.35 · 0.50 · 0.65" in comparison["content"]
    assert [b["label"] for b in buttons(comparison)] == ["Use 0.35", "Use 0.50", "Use 0.65"]
    names = [a["filename"] for a in comparison["attachments"]]
    assert [n.rsplit("-", 1)[-1] for n in names] == ["0.35.png", "0.50.png", "0.65.png"]
    middle = pixels(fd.attachment_bytes(comparison, 1))
    assert np.array_equal(middle, pixels(fd.attachment_bytes(original)))
    jobs = [await bot.store.get_job(i) for i in (2, 3)]
    assert [(j.kind, j.parent_id, j.seed, j.strength) for j in jobs if j] == [
        ("compare", 1, 11, 0.35),
        ("compare", 1, 11, 0.65),
    ]
    assert not any(
        m["attachments"] and m["id"] != comparison["id"] and m["id"] != original["id"]
        for m in fd.messages()
    )  # no result posted on its own

    count = await job_count(bot)
    use = await fd.click(comparison["id"], button(comparison, "Use 0.65")["custom_id"], world.carol)
    posted = await use.wait_original()
    assert not posted["ephemeral"] and embed_fields(posted)["Strength"] == "0.65"
    assert np.array_equal(
        pixels(fd.attachment_bytes(posted)), pixels(fd.attachment_bytes(comparison, 2))
    )
    assert [b["label"] for b in buttons(posted)][-5:-1] == ["Refine", "Edit", "Compare", "Inpaint"]
    assert await job_count(bot) == count

    # at the end of the range two strengths coincide: the message says so and shows two
    top = await wait_result(
        fd, await slash_img2img(fd, world.guild, world.channel, world.alice, strength=1.0)
    )
    click = await fd.click(top["id"], button(top, "Compare")["custom_id"], world.alice)
    two = await fd.until(
        lambda: (m := click.original()) and len(m["attachments"]) == 2 and m["components"] and m,
        timeout=120,
        what="a comparison of two",
    )
    assert "showing two" in two["content"] and "0.85 · 1.00" in two["content"]
    assert [b["label"] for b in buttons(two)] == ["Use 0.85", "Use 1.00"]
    fd.assert_no_unknown_routes()


async def test_a_refine_whose_answer_fails_keeps_the_input_of_its_queued_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Fault 10: Discord refuses the answer to a Refine after its job was queued; the
    copied picture the job reads stays, and the job still ends in a posted result."""
    bot = await make_bot()
    original = await wait_result(
        fd, await slash_img2img(fd, world.guild, world.channel, world.alice, seed=4)
    )
    refine = await open_modal(fd, original, "Refine", world.bob)
    with worker_paused(bot):
        fd.inject_error(
            "POST", r"^/interactions/\d+/[^/]+/callback$", 403,
            {"message": "Missing Permissions", "code": 50013},
        )  # fmt: skip
        submit = await fd.submit_modal(refine, {})
        # the error path has run once the bot answers again: it says the job is queued
        told = await submit.wait_original(lambda m: "job #2" in m["content"], timeout=30)
        assert told["ephemeral"] and "Queued" in told["content"], told["content"]
        assert "try again" not in told["content"]
        job = await bot.store.get_job(2)
        assert job is not None and job.kind == "refine" and job.state in ("queued", "running")
        assert job.input_path != (await bot.store.get_job(1)).input_path  # type: ignore[union-attr]
        assert (bot.settings.data_dir / job.input_path).is_file()
    result = await fd.until(
        lambda: next((m for m in fd.messages() if m["attachments"] and m["embeds"]
                      and m["embeds"][0]["footer"]["text"].endswith("#2")), None),
        timeout=120, what="the refined result",
    )  # fmt: skip
    assert embed_fields(result)["Strength"] == "0.30"
    assert (await bot.store.get_job(2)).state == "done"  # type: ignore[union-attr]
