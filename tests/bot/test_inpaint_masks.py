"""/inpaint's door: which way says what to repaint, masks stored beside their inputs and
removed with them, the modal's file uploads, and what the result says was repainted."""

from __future__ import annotations

import io
import os
from pathlib import Path

import discord
import numpy as np
import pytest
from PIL import Image

from bot.cogs.inpaint import build_modal, uploaded_files
from bot.inpaint_masks import (
    NO_MASK_TEXT,
    SOURCE_ALPHA,
    SOURCE_MASK,
    check_region,
    choose_mask,
    copy_mask,
    input_of,
    mask_path_for,
    thumbnail_png,
    write_mask,
)
from bot.store.db import Job
from bot.store.files import prune_files, scan
from bot.ui.render import job_summary, masked_text, result_embed
from pipeline.mask import MaskEmpty, MaskFull, MaskShapeMismatch
from pipeline.request import InputError


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def photo(size: tuple[int, int] = (64, 48), *, hole: bool = False) -> bytes:
    """An RGBA picture; with `hole`, its top-left quarter is transparent."""
    image = Image.new("RGBA", size, (200, 100, 50, 255))
    if hole:
        image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    return png(image)


def test_a_mask_upload_wins_and_is_scaled_to_the_input() -> None:
    mask = png(square_mask((128, 96), (0, 0, 64, 48)))
    choice = choose_mask(photo(hole=True), (64, 48), mask_data=mask, region="the sky")
    assert choice.source == SOURCE_MASK and choice.region is None
    assert choice.mask is not None and choice.mask.size == (64, 48)
    values = np.asarray(choice.mask)
    assert values[5, 5] == 255 and values[40, 60] == 0


def test_transparency_is_the_mask_when_no_mask_is_given() -> None:
    choice = choose_mask(photo(hole=True), (32, 24), mask_data=None, region="the sky")
    assert choice.source == SOURCE_ALPHA and choice.mask is not None
    assert choice.mask.size == (32, 24)  # scaled to the stored input
    values = np.asarray(choice.mask)
    assert values[2, 2] == 255 and values[20, 30] == 0


def test_region_words_when_there_is_neither_mask_nor_transparency() -> None:
    choice = choose_mask(photo(), (64, 48), mask_data=None, region="  the   sky ")
    assert (choice.source, choice.region, choice.mask) == ("the sky", "the sky", None)


def test_nothing_to_repaint_names_mask_and_region() -> None:
    with pytest.raises(InputError) as caught:
        choose_mask(photo(), (64, 48), mask_data=None, region="   ")
    assert str(caught.value) == NO_MASK_TEXT
    assert "`mask`" in NO_MASK_TEXT and "`region`" in NO_MASK_TEXT


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (Image.new("L", (64, 48), 0), MaskEmpty),
        (Image.new("L", (64, 48), 255), MaskFull),
        (Image.new("L", (48, 64), 255), MaskShapeMismatch),
    ],
)
def test_bad_masks_are_refused_at_the_door(mask: Image.Image, error: type[Exception]) -> None:
    with pytest.raises(error):
        choose_mask(photo(), (64, 48), mask_data=png(mask), region="the sky")


def test_an_image_without_any_transparent_pixel_is_not_a_mask() -> None:
    opaque = png(Image.new("RGBA", (20, 20), (1, 2, 3, 255)))
    with pytest.raises(InputError):
        choose_mask(opaque, (20, 20), mask_data=None, region=None)


def test_region_words_are_limited() -> None:
    assert check_region(None) is None and check_region(" \n ") is None
    with pytest.raises(InputError, match="limit"):
        check_region("sky " * 40)


def test_mask_paths_pair_with_their_input(tmp_path: Path) -> None:
    assert mask_path_for("inputs/abc.png") == "inputs/abc.mask.png"
    assert input_of("inputs/abc.mask.png") == "inputs/abc.png"
    mask = square_mask((40, 30), (0, 0, 10, 10))
    rel = write_mask(tmp_path, "inputs/abc.png", mask)
    assert rel == "inputs/abc.mask.png"
    assert not list((tmp_path / "inputs").glob(".*"))  # no temporary file left behind
    copied = copy_mask(tmp_path, rel, "inputs/def.png", (80, 60))
    with Image.open(tmp_path / copied) as again:
        assert (again.mode, again.size) == ("L", (80, 60))
        assert again.getpixel((2, 2)) == 255 and again.getpixel((70, 50)) == 0
    with Image.open(io.BytesIO(thumbnail_png(tmp_path / rel, side=16))) as thumb:
        assert max(thumb.size) == 16


def test_pruning_counts_a_mask_with_its_input_and_removes_them_together(tmp_path: Path) -> None:
    def put(rel: str, size: int, mtime: float) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (mtime, mtime))

    put("inputs/old.png", 100, 10.0)
    put("inputs/old.mask.png", 50, 11.0)
    put("inputs/new.png", 100, 50.0)
    put("inputs/new.mask.png", 50, 51.0)
    put("inputs/orphan.mask.png", 10, 5.0)
    files = {f.path: f.size for f in scan(tmp_path)}
    assert files == {"inputs/old.png": 150, "inputs/new.png": 150, "inputs/orphan.mask.png": 10}
    result = prune_files(tmp_path, 160, set(), min_age_s=0, now=100.0)
    assert result.removed == ["inputs/orphan.mask.png", "inputs/old.png"]
    left = sorted(p.name for p in (tmp_path / "inputs").iterdir())
    assert left == ["new.mask.png", "new.png"]


def test_the_modal_has_region_prompt_mask_upload_and_strength() -> None:
    job = _job(prompt="a fox in the snow")
    payload = build_modal(job).to_dict()
    assert payload["custom_id"] == "i2i:inpaint:7"
    labels = [(c["label"], c["component"]["type"]) for c in payload["components"]]
    assert labels == [("What to repaint", 4), ("Prompt", 4), ("Mask", 19), ("Strength", 4)]
    assert payload["components"][1]["component"]["value"] == "a fox in the snow"
    assert payload["components"][2]["component"]["required"] is False


def test_uploaded_files_are_read_from_the_submit() -> None:
    attachment = {"id": "55", "filename": "mask.png", "size": 9, "url": "u", "proxy_url": "u"}
    data = {
        "custom_id": "i2i:inpaint:7",
        "components": [
            {"type": 18, "component": {"type": 4, "custom_id": "region", "value": ""}},
            {"type": 18, "component": {"type": 19, "custom_id": "mask", "values": ["55"]}},
        ],
        "resolved": {"attachments": {"55": attachment}},
    }
    assert uploaded_files(data) == {"mask": [attachment]}
    data["components"][1]["component"]["values"] = []
    assert uploaded_files(data) == {"mask": []}


def _job(**values: object) -> Job:
    base: dict[str, object] = {
        "id": 7, "guild_id": 1, "channel_id": 2, "user_id": 3, "kind": "new",
        "parent_id": None, "prompt": "p", "negative_prompt": None, "strength": 0.75,
        "seed": 1, "steps": 20, "guidance": 7.5, "input_path": "inputs/a.png",
        "input_width": 512, "input_height": 512, "output_path": "outputs/7.png",
        "state": "done", "counted": 1, "error": None, "steps_run": 15, "steps_total": 20,
        "seconds": 1.0, "model": "m", "application_id": None, "interaction_token": None,
        "token_expires_at": None, "status_message_id": None, "result_message_id": None,
        "reply_to_message_id": None, "created_at": 0.0, "started_at": None,
        "finished_at": None, "mode": "inpaint", "mask_path": "inputs/a.mask.png",
        "mask_source": "mask",
    }  # fmt: skip
    base.update(values)
    return Job(**base)  # type: ignore[arg-type]


def test_the_result_says_inpaint_and_what_was_repainted() -> None:
    embed = result_embed(_job(), mask_thumbnail="mask-7.png")
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Inpaint"] == "mask"
    assert embed.thumbnail.url == "attachment://mask-7.png"
    region = _job(mask_path=None, mask_source="the *sky*", region="the *sky*")
    assert masked_text(region) == "region “the \\*sky\\*”"
    assert masked_text(_job(mask_source=SOURCE_ALPHA)) == "transparent area"
    assert "inpaint" in job_summary(region)
    plain = result_embed(_job(mode="img2img", mask_path=None, mask_source=None))
    assert "Inpaint" not in {f.name for f in plain.fields} and not plain.thumbnail.url
    assert isinstance(embed, discord.Embed)


def test_help_explains_inpaint_and_its_button_within_a_field() -> None:
    from bot.ui.tips import INPAINTING

    assert len(INPAINTING) <= 1024  # an embed field's limit
    for needle in ("/inpaint", "`mask`", "`region`", "transparent", "**Inpaint** button"):
        assert needle in INPAINTING, needle


def test_inpaint_jobs_reach_the_worker_with_their_mask_and_never_share_a_call(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from bot.jobs.dispatch import JobDispatch
    from bot.loras import LoraTags
    from bot.models import ModelChoice
    from config.catalogue import one_model

    service = SimpleNamespace(
        data_dir=tmp_path, settings=SimpleNamespace(mask_blur=5, resolution_setting=None),
        _outputs=(tmp_path / "outputs").resolve(), resolution=128,
        engine_info=None, loras=LoraTags(one_model("tiny"), 4),
        models=ModelChoice(one_model("tiny"), 20, 7.5),
    )  # fmt: skip
    service.resolution_of = lambda model: JobDispatch.resolution_of(service, model)  # type: ignore[arg-type]
    job = _job(crop="on", region=None)
    request = JobDispatch._request(service, job)  # type: ignore[arg-type]
    assert (request.mode, request.crop, request.mask_blur) == ("inpaint", "on", 5)
    assert request.mask_path == str((tmp_path / "inputs/a.mask.png").resolve())
    plain = JobDispatch._request(service, _job(mode="img2img", mask_path=None))  # type: ignore[arg-type]
    assert (plain.mode, plain.mask_path) == ("img2img", None)

    def key(j: Job) -> object:
        queued = JobDispatch._queued(service, j)  # type: ignore[arg-type]
        return JobDispatch._batch_key(service, queued)  # type: ignore[arg-type]

    same_mask = _job(id=8)
    img2img = [_job(id=i, mode="img2img", mask_path=None) for i in (9, 10)]
    assert key(img2img[0]) == key(img2img[1])  # plain jobs still batch together
    assert len({key(job), key(same_mask), key(img2img[0])}) == 3
