"""Inpainting keeps the photo's resolution (the tiny model at 256 px, a 1536×1024 photo).

The result has the stored input's size; every pixel farther than the feather from the mask
is the input's pixel at full resolution; only the masked area is generated at the model's
resolution (the box around a small mask, or the whole picture scaled down for a large one)
and pasted back; the safety checker sees the generated region at its own resolution too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.engine import Engine
from tests.pipeline.test_inpaint import (
    RESOLUTION,
    Recorder,
    assert_inpainted,
    noise,
    rect_mask,
    request,
    run_one,
)

PHOTO = (1536, 1024)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, checker_dirs: dict[str, Path]) -> Engine:
    return Engine.load(
        str(tiny_model_dir),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker="on",
        safety_checker_id=str(checker_dirs["none"]),
    )


class CheckerSpy:
    """The real checker, recording the sizes of what it was shown."""

    def __init__(self, checker: Any) -> None:
        self.checker = checker
        self.seen: list[tuple[int, int]] = []

    def flags(self, images: list[Image.Image]) -> list[bool]:
        self.seen += [image.size for image in images]
        return self.checker.flags(images)


@pytest.fixture
def spies(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> tuple[Recorder, CheckerSpy]:
    recorder, spy = Recorder(engine.inpainting.pipe), CheckerSpy(engine.checker)
    monkeypatch.setattr(engine.inpainting, "pipe", recorder)
    monkeypatch.setattr(engine, "checker", spy)
    return recorder, spy


@pytest.mark.parametrize(
    ("box", "crop", "generated"),
    [
        ((300, 200, 1300, 900), "auto", (256, 168)),  # large: the whole picture scaled down
        ((900, 500, 1100, 700), "auto", None),  # small: a box around it at the model's size
    ],
    ids=["whole-picture", "crop"],
)
def test_a_large_photo_keeps_its_size_and_every_pixel_beyond_the_feather(
    engine: Engine,
    tmp_path: Path,
    spies: tuple[Recorder, CheckerSpy],
    box: tuple[int, int, int, int],
    crop: str,
    generated: tuple[int, int] | None,
) -> None:
    recorder, spy = spies
    photo = noise(PHOTO, seed=5).filter(ImageFilter.GaussianBlur(1))
    out = run_one(engine, request(tmp_path, photo, mask=rect_mask(PHOTO, box), crop=crop))
    assert out.shape == (PHOTO[1], PHOTO[0], 3)
    assert_inpainted(out, photo, box)
    (call,) = recorder.calls
    size = call["image"].size
    assert size == generated if generated else max(size) == RESOLUTION  # the model's size
    assert call["mask_image"].size == size
    assert spy.seen == [PHOTO, size]  # the whole picture and the generated region


def test_a_small_masks_box_holds_the_mask_at_full_resolution(
    engine: Engine, tmp_path: Path, spies: tuple[Recorder, CheckerSpy]
) -> None:
    recorder, _ = spies
    box = (1400, 40, 1480, 120)  # near a corner: the crop box is moved, never shrunk
    photo = noise(PHOTO, seed=6)
    out = run_one(engine, request(tmp_path, photo, mask=rect_mask(PHOTO, box), crop="on"))
    assert_inpainted(out, photo, box)
    source = recorder.calls[0]["image"]
    assert max(source.size) == RESOLUTION
    mask = np.asarray(recorder.calls[0]["mask_image"].convert("L"))
    assert mask.any() and not mask.all()
