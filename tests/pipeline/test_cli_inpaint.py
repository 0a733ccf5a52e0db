"""`python -m pipeline inpaint` in a subprocess, on the model `make-tiny` writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from config.settings import load_settings
from pipeline.mask import mask_from_upload
from pipeline.prepare import load_input
from pipeline.request import GenerationRequest
from tests.pipeline.test_cli import cli

RESOLUTION = 256
RUN = ("--device", "cpu", "--resolution", str(RESOLUTION), "--safety-checker", "off")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make-tiny` output: the diffusion model, with the tiny CLIPSeg in clipseg/."""
    model = tmp_path_factory.mktemp("made") / "tiny"
    result = cli("make-tiny", model)
    assert result.returncode == 0, result.stderr
    assert (model / "clipseg" / "config.json").is_file()
    return model


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600×400 JPEG photo-like scene (sky, sun, field) with mild noise."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:400, 0:600].astype(np.float32)
    sky = np.stack([80 + 100 * y / 400, 120 + 80 * y / 400, 230 - 60 * y / 400], axis=-1)
    sun = ((x - 420) ** 2 + (y - 120) ** 2 < 60**2)[..., None] * np.array([120, 90, -60])
    ground = (y > 260)[..., None] * np.array([-40, 10, -120])
    pixels = np.clip(sky + sun + ground + rng.normal(0, 6, sky.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("scene") / "scene.jpg"
    Image.fromarray(pixels).save(path, quality=92)
    return path


def test_cli_is_pixel_equal_to_the_engine_path_the_bot_takes(
    made: Path, scene: Path, tmp_path: Path
) -> None:
    mask_file = tmp_path / "mask.png"
    mask = Image.new("RGB", (300, 200), "black")  # half size, same shape: scaled up
    ImageDraw.Draw(mask).ellipse((180, 20, 260, 100), fill="white")
    mask.save(mask_file)
    out = tmp_path / "cli.png"
    ran = cli(
        "inpaint", scene, "--mask", mask_file, "--prompt", "a full moon", "--strength", "0.8",
        "--seed", "11", "--steps", "4", "--model", made, *RUN, "--output", out,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "seed: 11" in ran.stdout

    # What the bot does with the same uploads: store the input and the mask, then generate.
    from pipeline.engine import Engine

    settings = load_settings()
    stored = load_input(
        scene.read_bytes(),
        max_bytes=settings.max_input_bytes,
        min_side=settings.min_input_side,
        max_side=settings.max_stored_side,
    )
    stored.save(tmp_path / "input.png")
    mask_from_upload(mask_file.read_bytes(), stored.size).save(tmp_path / "stored-mask.png")
    engine = Engine.load(str(made), device="cpu", resolution=RESOLUTION, safety_checker="off")
    (result,) = engine.generate(
        [
            GenerationRequest(
                job_id="bot",
                image_path=str(tmp_path / "input.png"),
                prompt="a full moon",
                strength=0.8,
                seed=11,
                steps=4,
                guidance=settings.default_guidance,
                output_path=str(tmp_path / "bot.png"),
                mode="inpaint",
                mask_path=str(tmp_path / "stored-mask.png"),
                mask_blur=settings.mask_blur,
            )
        ]
    )
    with Image.open(out) as a, Image.open(result.output_path) as b:
        assert a.size == b.size == stored.size == (600, 400)  # the photo's size, not 256 px
        assert np.array_equal(np.asarray(a), np.asarray(b))
        changed = np.abs(np.asarray(a, dtype=int) - np.asarray(stored)).sum(-1)
        assert changed[100:140, 420:460].mean() > 20  # inside the moon's circle it changed
        assert not changed[260:, :].any()  # far from the mask: the input's own pixels


def test_cli_region_with_make_tinys_clipseg(made: Path, scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "region.png"
    ran = cli(
        "inpaint", scene, "--region", "the sky", "--prompt", "storm clouds", "--strength", "0.9",
        "--seed", "3", "--steps", "4", "--model", made, "--mask-model", made / "clipseg",
        *RUN, "--output", out,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    with Image.open(out) as image:
        assert image.size == (600, 400)  # the photo's own size


def test_cli_transparent_input_is_the_mask(made: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    upload = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).convert("RGBA")
    ImageDraw.Draw(upload).rectangle((150, 150, 229, 229), fill=(0, 0, 0, 0))
    path = tmp_path / "cutout.png"
    upload.save(path)
    out = tmp_path / "filled.png"
    ran = cli(
        "inpaint", path, "--prompt", "a cat", "--strength", "1.0", "--seed", "1",
        "--steps", "3", "--model", made, *RUN, "--output", out,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    with Image.open(out) as image:
        result = np.asarray(image.convert("RGB"))
    original = np.asarray(upload.convert("RGB"))
    assert np.array_equal(result[:140], original[:140])  # far from the hole: untouched
    assert np.abs(result[160:220, 160:220].astype(int) - 255).mean() > 20  # not the white fill


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (None, "--mask"),
        (Image.new("L", (300, 300), 255), "shapes differ"),
        (Image.new("L", (600, 400), 0), "repaints nothing"),
        (Image.new("L", (600, 400), 255), "/img2img"),
    ],
    ids=["no-mask", "shape", "empty", "full"],
)
def test_cli_bad_mask_exits_2_before_loading_a_model(
    scene: Path, tmp_path: Path, mask: Image.Image | None, message: str
) -> None:
    args: list[str | Path] = []
    if mask is not None:
        (tmp_path / "m.png").write_bytes(_png(mask))
        args = ["--mask", tmp_path / "m.png"]
    ran = cli(
        "inpaint", scene, *args, "--prompt", "x", "--strength", "0.5",
        "--model", tmp_path / "no-model", "--output", tmp_path / "o.png",
    )  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert message in ran.stderr and "Traceback" not in ran.stderr
    if mask is None:
        assert "--region" in ran.stderr
    assert not (tmp_path / "o.png").exists()
