"""Keep the structure through the stand-in: `/img2img structure:lines` on a sketch gives the
CLI's pixels, shows the `Structure` field and the map's thumbnail, a variant keeps it, and a
kind the worker has no ControlNet for is refused privately (nothing queued, no quota). The
forms (Img2img this, Edit) carry it as a `<structure:…>` tag in the prompt."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.tiny_controlnet import controlnet_dir
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    cli_pixels,
    embed_fields,
    pixels,
    slash_img2img,
    status_message,
    wait_result,
)
from tests.fakediscord import FakeDiscord, Upload


def embed_footer_job(msg: dict[str, object]) -> str:
    footer = msg["embeds"][0]["footer"]["text"]  # type: ignore[index]
    return str(footer).rsplit("#", 1)[-1]


def sketch() -> bytes:
    """A pencil floor plan: dark walls on light paper."""
    image = Image.new("RGB", (320, 256), (238, 236, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 300, 236), outline=(40, 40, 40), width=5)
    draw.line((160, 20, 160, 150), fill=(40, 40, 40), width=5)
    draw.line((160, 140, 300, 140), fill=(40, 40, 40), width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def house_by_cli(bot: Any, plan: bytes, tmp_path: Path, lines: Path) -> np.ndarray:
    """The CLI's pixels for both tests' job: "a modern house" from the sketch at strength
    0.75, seed 5, lines ×1.5."""
    return await cli_pixels(
        bot, "run", plan, tmp_path, "--prompt", "a modern house", "--strength", "0.75",
        "--seed", "5", "--structure", "lines", "--structure-weight", "1.5",
        "--controlnet", str(lines),
    )  # fmt: skip


async def test_structure_lines_gives_the_clis_pixels_shows_its_map_and_is_refused_where_missing(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    lines = controlnet_dir(tiny_model_dir, "lines")
    bot = await make_bot(controlnet_lines_id=str(lines))
    assert bot.jobs.engine_info is not None and bot.jobs.engine_info.structures == ("lines",)
    plan = sketch()
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a modern house", data=plan, seed=5,
        strength=0.75, structure="lines", structure_weight=1.5,
    )  # fmt: skip
    result = await wait_result(fd, handle)
    job_id = embed_footer_job(result)
    assert embed_fields(result)["Structure"] == "lines ×1.5"
    thumb = result["embeds"][0]["thumbnail"]["url"]
    assert thumb == result["attachments"][1]["url"]  # the map, small, beside the picture
    with Image.open(io.BytesIO(fd.attachment_bytes(result, 1))) as shown:
        assert max(shown.size) <= 160 and np.asarray(shown).max() == 255
    expected = await house_by_cli(bot, plan, tmp_path, lines)
    assert np.array_equal(pixels(fd.attachment_bytes(result)), expected)

    click = await fd.click(result["id"], button(result, "+0.15")["custom_id"], world.bob)
    variant = await wait_result(fd, click)
    assert embed_fields(variant)["Structure"] == "lines ×1.5"

    refused = await slash_img2img(
        fd, world.guild, world.channel, world.carol, "a house", data=plan, structure="edges"
    )
    msg = await refused.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"]
    assert "Structure 'edges' is not available on this model. Available: lines." in msg["content"]
    assert status_message(fd, refused) is None
    jobs = await bot.store.jobs_in_states(["queued", "running", "done"])
    assert all(job.user_id != world.carol for job in jobs)

    # Upscale ×2 of it: each tile keeps the structure (its own lines, at the same weight)
    up = await fd.click(result["id"], button(result, "Upscale")["custom_id"], world.bob)
    await wait_result(fd, up)
    tiles = [j for j in await bot.store.jobs_in_states(["done"]) if j.kind == "tile"]
    assert tiles and {(j.structure, j.structure_weight) for j in tiles} == {("lines", 1.5)}

    # Delete takes the picture's map thumbnail (made from the member's input) with it
    thumb_file = bot.settings.data_dir / "outputs" / f"{job_id}.structure.png"
    assert thumb_file.is_file()
    click = await fd.click(result["id"], button(result, "Delete")["custom_id"], world.alice)
    await click.response()
    await fd.until(lambda: not thumb_file.exists(), what="the map thumbnail deleted")


async def test_the_forms_carry_structure_as_a_tag_in_the_prompt(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    lines = controlnet_dir(tiny_model_dir, "lines")
    bot = await make_bot(controlnet_lines_id=str(lines))
    plan = sketch()
    posted = fd.upload_message(
        world.channel, world.carol, "my floor plan", [Upload("plan.png", plan, "image/png")]
    )
    menu = await fd.send_message_command(
        world.guild, world.channel, world.bob, "Img2img this", posted["id"]
    )
    await menu.wait_modal()
    prompt_label = next(c for c in menu.modal["components"] if c.get("label") == "Prompt")
    assert "<structure:lines:1>" in prompt_label["description"]  # the syntax, where it is typed
    submit = await fd.submit_modal(
        menu, {"Prompt": "a modern house <structure:lines:1.5>", "Strength": "0.75", "Seed": "5"}
    )
    result = await wait_result(fd, submit)
    fields = embed_fields(result)
    assert (fields["Prompt"], fields["Structure"]) == ("a modern house", "lines ×1.5")
    expected = await house_by_cli(bot, plan, tmp_path, lines)
    assert np.array_equal(pixels(fd.attachment_bytes(result)), expected)

    # Edit shows the job's structure as its tag; removing the tag turns it off
    click = await fd.click(result["id"], button(result, "Edit")["custom_id"], world.bob)
    await click.wait_modal()
    shown = click.modal_inputs()["Prompt"]["value"]
    assert shown == "a modern house <structure:lines:1.5>"
    edited = await wait_result(fd, await fd.submit_modal(click, {"Prompt": "a modern house"}))
    assert "Structure" not in embed_fields(edited)
    job = await bot.store.get_job(int(embed_footer_job(edited)))
    assert job is not None and job.structure is None and job.prompt == "a modern house"

    # a kind this model has no ControlNet for: refused privately, nothing queued
    before = len(await bot.store.jobs_in_states(["queued", "running", "done"]))
    click = await fd.click(result["id"], button(result, "Edit")["custom_id"], world.bob)
    await click.wait_modal()
    refused = await fd.submit_modal(click, {"Prompt": "a house <structure:edges>"})
    msg = await refused.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"]
    assert "Structure 'edges' is not available on this model. Available: lines." in msg["content"]
    assert len(await bot.store.jobs_in_states(["queued", "running", "done"])) == before

    # in a slash command the tag would reach the model as words: refused, pointing at the option
    typed = await slash_img2img(
        fd, world.guild, world.channel, world.carol, "a house <structure:lines>", data=plan
    )
    msg = await typed.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"] and "use the `structure` option" in msg["content"]
    assert status_message(fd, typed) is None
