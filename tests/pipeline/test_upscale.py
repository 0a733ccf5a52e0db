"""Upscale ×2 on the tiny model (CPU): the tiles of one upscale are rows of one set that share
UNet calls and one prompt encoding, each tile equals its solo img2img run, and
`python -m pipeline upscale` gives exactly the solo tiles blended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli_upscale import DEFAULT_STRENGTH, run_tiles, tile_requests, upscale_picture
from pipeline.engine import Engine
from pipeline.request import GenerationRequest
from pipeline.tiling import blend, enlarge, plan_tiles, tile_seed
from tests.pipeline import test_stepbatch as step_tests
from tests.pipeline.test_cli import cli
from tests.pipeline.test_stepbatch import job, png, solo

# The step tests' fixtures: the tiny engine at 64 px, its scheduler swap.
engine = step_tests.engine
scheduler = step_tests.scheduler


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64×32 picture: ×2 is 128×64, three 64 px tiles overlapping by 32 at RESOLUTION=64."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:32, 0:64].astype(np.float64)
    smooth = np.dstack([40 + 3 * x, 60 + 5 * y, 200 - 2 * x])
    pixels = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("upscale") / "parent.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path


def upscale_job(out: Path, parent: Path, **kw: object) -> GenerationRequest:
    return job(out, str(parent), "up", **{"prompt": "a sharp photo", "seed": 77, **kw})


def solo_tiles(engine: Engine, requests: list[GenerationRequest]) -> list[Image.Image]:
    return [Image.fromarray(solo(engine, req)) for req in requests]


def test_tiles_of_one_upscale_share_unet_calls_and_one_prompt_encoding(
    engine: Engine, scheduler: str, parent: Path, tmp_path: Path
) -> None:
    with Image.open(parent) as src:
        picture = enlarge(src, (128, 64))
    boxes = plan_tiles(128, 64, engine.info.resolution)
    assert len(boxes) == 3
    requests = tile_requests(upscale_job(tmp_path, parent), picture, boxes, tmp_path)
    assert [r.seed for r in requests] == [tile_seed(77, i) for i in range(3)]

    rows: list[int] = []
    encoded: list[str] = []
    hook = engine.pipe.unet.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    encode = engine.pipe.encode_prompt
    engine.pipe.encode_prompt = lambda prompt, *a, **k: (
        encoded.append(prompt) or encode(prompt, *a, **k)
    )
    try:
        results = run_tiles(engine, requests, max_batch=4, step_path=True)
    finally:
        hook.remove()
        del engine.pipe.encode_prompt

    assert rows == [6, 6]  # strength 0.5 of 4 steps: 2 calls, 3 tiles × 2 rows (guidance)
    assert encoded == ["a sharp photo"]
    for result, req in zip(results, requests, strict=True):
        assert result.job_id == req.job_id
        np.testing.assert_array_equal(png(result), solo(engine, req), err_msg=req.job_id)


def test_the_call_path_and_one_at_a_time_give_the_same_upscale(
    engine: Engine, scheduler: str, parent: Path, tmp_path: Path
) -> None:
    upscale = upscale_job(tmp_path, parent, guidance=0.0)
    with Image.open(parent) as src:
        stepped, boxes, _ = upscale_picture(
            engine, upscale, src, (128, 64), tmp_path / "steps", max_batch=4, step_path=True
        )
        called, _, _ = upscale_picture(
            engine, upscale, src, (128, 64), tmp_path / "calls", max_batch=1, step_path=False
        )
        picture = enlarge(src, (128, 64))
    expected = blend(
        solo_tiles(engine, tile_requests(upscale, picture, boxes, tmp_path / "solo")),
        boxes,
        (128, 64),
    )
    assert stepped is not None and called is not None
    np.testing.assert_array_equal(np.asarray(stepped), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(called), np.asarray(expected))


def test_cli_upscale_gives_the_solo_tiles_blended(
    engine: Engine, tiny_model_dir: Path, parent: Path, tmp_path: Path
) -> None:
    out = tmp_path / "up.png"
    ran = cli(
        "upscale", parent, "--prompt", "a sharp photo", "--negative-prompt", "blurry",
        "--seed", "9", "--steps", "10", "--model", tiny_model_dir, "--device", "cpu",
        "--resolution", "64", "--safety-checker", "off", "--output", out,
        env={"MIN_INPUT_SIDE": "32", "MAX_BATCH": "4"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "tiles: 3 of 64x64 px" in ran.stdout
    assert "steps: 2 run (of 10 scheduled) a tile" in ran.stdout  # the default strength, 0.2
    with Image.open(parent) as src:
        picture = enlarge(src, (128, 64))
    boxes = plan_tiles(128, 64, 64)
    upscale = upscale_job(
        tmp_path, parent, seed=9, steps=10, strength=DEFAULT_STRENGTH, negative_prompt="blurry"
    )
    expected = blend(
        solo_tiles(engine, tile_requests(upscale, picture, boxes, tmp_path)), boxes, (128, 64)
    )
    with Image.open(out) as made:
        assert made.format == "PNG"
        np.testing.assert_array_equal(np.asarray(made.convert("RGB")), np.asarray(expected))


def test_cli_refuses_an_upscale_past_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 260), (90, 120, 150)).save(big)
    ran = cli(
        "upscale", big, "--prompt", "a lake", "--model", tmp_path / "unused",
        "--output", tmp_path / "out.png", env={"UPSCALE_MAX_SIDE": "512"},
    )  # fmt: skip
    assert ran.returncode == 2
    assert "600×520" in ran.stderr and "512 px" in ran.stderr
    assert not (tmp_path / "out.png").exists()
