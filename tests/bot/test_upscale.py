"""Upscale ×2 as values: the plan and its quota, the refusals' words, the buttons of an
upscaled result, and the one format rule for every posted picture (PNG, else lossless WebP,
else JPEG 95) at a small upload limit."""

from __future__ import annotations

import io
from pathlib import Path

import discord
import numpy as np
import pytest
from PIL import Image

from bot.store.db import Job
from bot.ui.buttons import result_view
from bot.ui.pictures import (
    DEFAULT_UPLOAD_LIMIT,
    Picture,
    fit_upload,
    picture_file,
    png_size,
    upload_limit,
)
from bot.ui.render import result_embed
from bot.upscale import fits_again, plan_upscale, queued_text, quota_refusal
from pipeline.request import UPSCALE, InputError


@pytest.mark.parametrize(
    ("size", "resolution", "upscaled", "tiles", "units"),
    [
        ((96, 64), 128, (192, 128), 2, 1),
        ((128, 96), 128, (256, 192), 6, 2),
        ((512, 512), 512, (1024, 1024), 9, 3),
        ((512, 384), 512, (1024, 768), 6, 2),
        ((1024, 1024), 512, (2048, 2048), 25, 7),
    ],
)
def test_plan_size_tiles_and_units(
    size: tuple[int, int], resolution: int, upscaled: tuple[int, int], tiles: int, units: int
) -> None:
    plan = plan_upscale(*size, 2, 2048, resolution)
    assert (plan.width, plan.height) == upscaled
    assert (plan.tiles, plan.units) == (tiles, units)
    assert all(r - left <= resolution and b - t <= resolution for left, t, r, b in plan.boxes)


def test_past_the_cap_is_refused_naming_it() -> None:
    with pytest.raises(InputError) as refused:
        plan_upscale(1100, 600, 2, 2048, 512)
    assert "2048" in str(refused.value) and "UPSCALE_MAX_SIDE" in str(refused.value)
    assert plan_upscale(1024, 600, 2, 2048, 512).width == 2048  # exactly the cap: allowed


def _labels(view: discord.ui.View) -> list[str]:
    return [str(child.item.label) for child in view.children]  # type: ignore[attr-defined]


def test_upscale_again_is_offered_only_under_the_cap() -> None:
    assert fits_again(1024, 768, 2048)
    assert not fits_again(1032, 768, 2048)
    labels = _labels(result_view(7, 0.2, mode=UPSCALE))
    assert labels[2:] == ["Reroll", "Delete", "Inpaint", "Upscale ×2"]
    assert "0.35" in labels[1] and "0.05" in labels[0]  # −/+ the upscale's strength
    capped = _labels(result_view(7, 0.2, mode=UPSCALE, upscale=False))
    assert "Upscale ×2" not in capped and "Refine" not in capped and "Compare" not in capped


def test_quota_words_say_what_it_counts() -> None:
    plan = plan_upscale(128, 96, 2, 2048, 128)  # 6 tiles: 2 images
    assert quota_refusal(plan, 5, None) is None and quota_refusal(plan, None, 2) is None
    mine = quota_refusal(plan, 1, 10)
    assert mine is not None and "6 tiles" in mine and "2 images" in mine and "you have 1" in mine
    server = quota_refusal(plan, None, 1)
    assert server is not None and "this server has 1" in server
    assert "counting 2 images" in queued_text(plan, 42) and "256×192" in queued_text(plan, 42)


def _noise_png(path: Path, side: int = 96) -> int:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path.stat().st_size


def _job(**values: object) -> Job:
    base: dict[str, object] = dict(
        id=9, guild_id=1, channel_id=2, user_id=3, kind="upscale", parent_id=None,
        prompt="p", negative_prompt=None, strength=0.2, seed=5, steps=4, guidance=7.5,
        input_path="inputs/x.png", input_width=256, input_height=192, output_path="o.png",
        state="done", counted=0, error=None, steps_run=0, steps_total=0, seconds=1.0,
        model="tiny", application_id=None, interaction_token=None, token_expires_at=None,
        status_message_id=None, result_message_id=None, reply_to_message_id=None,
        created_at=0.0, started_at=None, finished_at=None, mode=UPSCALE,
    )  # fmt: skip
    base.update(values)
    return Job(**base)  # type: ignore[arg-type]


async def test_png_then_lossless_webp_then_jpeg_as_the_limit_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "result.png"
    png = _noise_png(path)
    assert fit_upload(path, png) == (None, "PNG")
    webp, fmt = fit_upload(path, png - 1)
    assert fmt == "WebP" and webp is not None and len(webp) < png
    with Image.open(io.BytesIO(webp)) as back:  # lossless: the very pixels
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(Image.open(path)))
    jpeg, fmt = fit_upload(path, len(webp) - 1)
    assert fmt == "JPEG" and jpeg is not None and jpeg[:2] == b"\xff\xd8"
    assert png_size(path) == (96, 96)  # what decides the Upscale ×2 button, from the header
    picture = await Picture.prepare(path, "x.png", spoiler=False, limit=png - 1)
    assert (picture.format, picture.size, picture.filename) == ("WebP", (96, 96), "x.webp")
    jpeg_path = tmp_path / "not-a.png"
    jpeg_path.write_bytes(jpeg)
    assert png_size(jpeg_path) is None
    file, fmt = await picture_file(path, "img2img-9.png", _job(), limit=len(webp) - 1)
    assert (fmt, file.filename) == ("JPEG", "img2img-9.jpg")
    footer = result_embed(_job(), file_format=fmt).footer.text or ""
    assert "JPEG" in footer and footer.endswith("job #9")  # the job id stays last
    fields = {f.name: f.value for f in result_embed(_job()).fields}
    assert fields["Size"] == "256×192" and fields["Steps"] == "4 per tile"


def test_upload_limit_from_the_interaction_else_the_server_else_10_mib() -> None:
    class Has:
        def __init__(self, limit: int) -> None:
            self.filesize_limit = limit

    assert upload_limit(Has(500), Has(900)) == 500
    assert upload_limit(None, Has(900)) == 900
    assert upload_limit() == DEFAULT_UPLOAD_LIMIT == 10 * 1024 * 1024
