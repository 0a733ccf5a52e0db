"""/inpaint end to end: a mask repaints only its part (the rest keeps the input's pixels,
and the CLI makes the same picture), a variant and Refine keep the mask, requests without a
usable mask are refused privately and queue nothing, and the Inpaint button's modal takes a
mask upload or region words; Delete removes the input with its mask."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bot.app import ImgBot
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    embed_fields,
    eventually,
    image_bytes,
    slash_img2img,
    wait_result,
)
from tests.fakediscord import FakeDiscord, InteractionHandle, Upload

ROOT = Path(__file__).resolve().parents[2]
BOX = (200, 184, 328, 296)  # the repainted part of a 512×512 photo (5 % of it)
MASK_BLUR = 8  # the default feather


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def grown(mask: Image.Image, px: int) -> np.ndarray:
    """Where the mask reaches once grown by `px` (True inside)."""
    return np.asarray(mask.filter(ImageFilter.MaxFilter(2 * px + 1))) > 0


def shrunk(mask: Image.Image, px: int) -> np.ndarray:
    return np.asarray(mask.filter(ImageFilter.MinFilter(2 * px + 1))) > 0


def assert_only_the_mask_changed(before: np.ndarray, after: np.ndarray, mask: Image.Image) -> None:
    diff = np.abs(after - before).mean(axis=2)
    outside = ~grown(mask, MASK_BLUR + 1)
    inside = shrunk(mask, MASK_BLUR + 1)
    assert diff[outside].mean() <= 2, diff[outside].mean()
    assert diff[inside].mean() > 5, diff[inside].mean()


async def slash_inpaint(
    fd: FakeDiscord,
    world: World,
    photo: bytes,
    *,
    mask: bytes | None = None,
    **options: object,
) -> InteractionHandle:
    attachments = {"image": Upload("photo.png", photo, "image/png")}
    if mask is not None:
        attachments["mask"] = Upload("mask.png", mask, "image/png")
    return await fd.send_slash(
        world.guild,
        world.channel,
        world.alice,
        "inpaint",
        {"prompt": "a red balloon", **options},
        attachments=attachments,
    )


async def run_cli(bot: ImgBot, tmp: Path, photo: bytes, mask: bytes, **args: object) -> bytes:
    """`python -m pipeline inpaint` on the same files with the bot's model settings."""
    source, mask_file, out = tmp / "cli-in.png", tmp / "cli-mask.png", tmp / "cli-out.png"
    source.write_bytes(photo)
    mask_file.write_bytes(mask)
    s = bot.settings
    options = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "inpaint", str(source), "--mask", str(mask_file),
        *options, "--steps", str(s.default_steps), "--guidance", str(s.default_guidance),
        "--model", s.model_id, "--device", s.device, "--dtype", s.dtype,
        "--resolution", str(s.resolution), "--output", str(out),
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.read_bytes()


async def job_count(bot: ImgBot) -> int:
    row = await (await bot.store.db.execute("SELECT COUNT(*) FROM jobs")).fetchone()
    return int(row[0])


async def private_text(handle: InteractionHandle) -> str:
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"], msg["content"]
    return str(msg["content"])


async def test_a_mask_repaints_only_its_part_and_a_variant_keeps_it(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make_bot(resolution=512)
    photo = image_bytes(512, 512)
    mask = box_mask((512, 512), BOX)
    handle = await slash_inpaint(fd, world, photo, mask=png(mask), seed=3)
    result = await wait_result(fd, handle)

    out = fd.attachment_bytes(result)
    assert Image.open(io.BytesIO(out)).size == (512, 512)
    assert_only_the_mask_changed(pixels(photo), pixels(out), mask)
    fields = embed_fields(result)
    assert fields["Inpaint"] == "mask" and fields["Strength"] == "0.75"
    thumb = result["embeds"][0]["thumbnail"]["url"]
    assert thumb == result["attachments"][1]["url"]  # the mask, small, beside the picture
    job = await bot.store.get_job(1)
    assert job is not None and (job.mode, job.mask_source) == ("inpaint", "mask")
    assert job.mask_path == job.input_path.replace(".png", ".mask.png")
    cli = await run_cli(
        bot, tmp_path, photo, png(mask), prompt="a red balloon", strength=0.75, seed=3
    )
    assert np.array_equal(pixels(cli), pixels(out))  # the CLI makes the same picture

    # +0.15: the same photo, the same mask, a stronger repaint
    click = await fd.click(result["id"], button(result, "+0.15")["custom_id"], world.bob)
    variant = await wait_result(fd, click)
    assert embed_fields(variant)["Inpaint"] == "mask"
    assert embed_fields(variant)["Strength"] == "0.90"
    child = await bot.store.get_job(2)
    assert child is not None and (child.kind, child.mode) == ("variant", "inpaint")
    assert child.mask_path == job.mask_path
    assert_only_the_mask_changed(pixels(photo), pixels(fd.attachment_bytes(variant)), mask)

    # Refine: the result is the new input, and the mask is copied beside it
    opened = await fd.click(result["id"], button(result, "Refine")["custom_id"], world.bob)
    await opened.wait_modal()
    refined = await wait_result(fd, await fd.submit_modal(opened, {}))
    assert embed_fields(refined)["Inpaint"] == "mask"
    grandchild = await bot.store.get_job(3)
    assert grandchild is not None and grandchild.mask_path is not None
    assert grandchild.mask_path == grandchild.input_path.replace(".png", ".mask.png")
    assert grandchild.mask_path != job.mask_path
    assert (bot.settings.data_dir / grandchild.mask_path).is_file()
    fd.assert_no_unknown_routes()


async def test_no_usable_mask_is_refused_privately_and_queues_nothing(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(mask_model_id="")  # no mask model: region words cannot be served
    photo = image_bytes(256, 256)
    cases = [
        ({}, ["`mask`", "`region`"]),
        ({"mask": png(Image.new("L", (256, 256), 255))}, ["/img2img"]),
        ({"mask": png(Image.new("L", (256, 256), 0))}, ["repaints nothing"]),
        ({"mask": png(box_mask((256, 128), (0, 0, 64, 64)))}, ["256×128", "256×256"]),
        ({"region": "the sky"}, ["Region words cannot be used", "`mask`"]),
    ]
    for options, needles in cases:
        text = await private_text(await slash_inpaint(fd, world, photo, **options))
        for needle in needles:
            assert needle in text, (needle, text)
    assert await job_count(bot) == 0
    assert not list((bot.settings.data_dir / "inputs").glob("*.png"))  # nothing left behind


async def test_the_inpaint_button_takes_a_mask_upload_or_region_words(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_clipseg_dir: Path
) -> None:
    bot = await make_bot(mask_model_id=str(tiny_clipseg_dir))
    assert bot.jobs.engine_info is not None and bot.jobs.engine_info.region_masks
    original = await wait_result(
        fd, await slash_img2img(fd, world.guild, world.channel, world.alice, seed=5)
    )
    size = Image.open(io.BytesIO(fd.attachment_bytes(original))).size

    opened = await fd.click(original["id"], button(original, "Inpaint")["custom_id"], world.bob)
    await opened.wait_modal()
    inputs = opened.modal_inputs()
    assert list(inputs) == ["What to repaint", "Prompt", "Mask", "Strength"]
    assert inputs["Prompt"]["value"] == "a watercolor fox" and inputs["Mask"]["type"] == 19
    mask = box_mask(size, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    submit = await fd.submit_modal(
        opened, {"Prompt": "a fox with a hat", "Mask": Upload("m.png", png(mask), "image/png")}
    )
    with_mask = await wait_result(fd, submit)
    assert embed_fields(with_mask)["Inpaint"] == "mask"
    assert with_mask["message_reference"]["message_id"] == original["id"]
    job = await bot.store.get_job(2)
    assert job is not None and (job.kind, job.parent_id, job.prompt) == (
        "inpaint",
        1,
        "a fox with a hat",
    )
    assert job.mask_path is not None
    stored = [bot.settings.data_dir / p for p in (job.input_path, job.mask_path)]
    assert all(path.is_file() for path in stored)

    opened = await fd.click(original["id"], button(original, "Inpaint")["custom_id"], world.bob)
    await opened.wait_modal()
    submit = await fd.submit_modal(opened, {"What to repaint": "the sky"})
    with_words = await wait_result(fd, submit)
    assert embed_fields(with_words)["Inpaint"] == "region “the sky”"
    job = await bot.store.get_job(3)
    assert job is not None and (job.region, job.mask_path) == ("the sky", None)

    # neither words nor a mask: a private message, nothing queued
    opened = await fd.click(original["id"], button(original, "Inpaint")["custom_id"], world.bob)
    await opened.wait_modal()
    text = await private_text(await fd.submit_modal(opened, {}))
    assert "`region`" in text and "`mask`" in text and "Nothing was queued" in text
    assert await job_count(bot) == 3

    # Delete removes the result's input and, with it, its mask
    await fd.click(with_mask["id"], button(with_mask, "Delete")["custom_id"], world.bob)

    async def removed() -> bool:
        return not any(path.exists() for path in stored)

    await eventually(removed)
    fd.assert_no_unknown_routes()
