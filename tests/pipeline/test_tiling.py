"""Upscale tiling: the tile plan, the blend weights and the absence of seams (pure, no model)."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from pipeline.request import MAX_SEED, InputError
from pipeline.tiling import (
    MIN_OVERLAP,
    Box,
    blend,
    blend_weights,
    cut,
    enlarge,
    plan_tiles,
    tile_seed,
    upscale_units,
    upscaled_size,
)

# width, height, tile → columns, rows
PLANS = [
    (256, 256, 128, 3, 3),  # the benchmark's ×2 of a 128 px picture
    (128, 128, 128, 1, 1),  # exactly one tile
    (512, 384, 512, 1, 1),  # smaller than a tile on one side
    (1024, 256, 512, 3, 1),  # wide strip, shorter than a tile
    (200, 96, 128, 3, 1),  # tiles reach past their direct neighbour
    (1024, 768, 512, 3, 2),  # 4:3
    (640, 1152, 512, 2, 3),  # 9:16
    (1536, 864, 768, 3, 2),  # 16:9 at an SDXL-like tile
    (2048, 1536, 512, 5, 4),  # the default cap's 4:3
    (136, 136, 128, 2, 2),  # one unit of 8 past a tile
]


def spans(boxes: list[Box], axis: int) -> list[tuple[int, int]]:
    return sorted({(box[axis], box[axis + 2]) for box in boxes})


@pytest.mark.parametrize(("width", "height", "tile", "columns", "rows"), PLANS)
def test_plan_tiles_covers_with_overlaps(
    width: int, height: int, tile: int, columns: int, rows: int
) -> None:
    boxes = plan_tiles(width, height, tile)
    assert len(boxes) == columns * rows
    assert boxes == sorted(boxes, key=lambda b: (b[1], b[0])), "row-major"
    covered = np.zeros((height, width), dtype=int)
    for left, top, right, bottom in boxes:
        assert all(v % 8 == 0 for v in (left, top, right, bottom))
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert (right - left, bottom - top) == (min(tile, width), min(tile, height))
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1
    for axis, count in ((0, columns), (1, rows)):
        along = spans(boxes, axis)
        assert len(along) == count
        for (_, end), (start, _) in pairwise(along):
            assert end - start >= MIN_OVERLAP
        steps = [b[0] - a[0] for a, b in pairwise(along)]
        assert not steps or max(steps) - min(steps) <= 8, "spread evenly"


def test_small_tiles_overlap_by_half() -> None:
    """Test models work at 64 px, where a 64 px overlap would never advance."""
    assert spans(plan_tiles(128, 64, 64), 0) == [(0, 64), (32, 96), (64, 128)]


def test_plan_tiles_refuses_unaligned_pictures() -> None:
    with pytest.raises(ValueError):
        plan_tiles(250, 256, 128)
    with pytest.raises(ValueError):
        plan_tiles(256, 256, 8)


@pytest.mark.parametrize(
    ("width", "height", "scale", "expected"),
    [(128, 128, 2, (256, 256)), (100, 75, 2, (200, 152)), (1024, 768, 2, (2048, 1536))],
)
def test_upscaled_size(width: int, height: int, scale: int, expected: tuple[int, int]) -> None:
    assert upscaled_size(width, height, scale, 2048) == expected


def test_upscaled_size_past_the_cap_names_it() -> None:
    with pytest.raises(InputError, match="2048") as refused:
        upscaled_size(1030, 500, 2, 2048)
    assert "UPSCALE_MAX_SIDE" in str(refused.value)


def test_tile_seeds_are_distinct_and_in_range() -> None:
    for seed in (0, 12345, MAX_SEED):
        seeds = [tile_seed(seed, i) for i in range(100)]
        assert seeds[0] == seed
        assert len(set(seeds)) == 100
        assert all(0 <= s <= MAX_SEED for s in seeds)


@pytest.mark.parametrize(("tiles", "units"), [(1, 1), (4, 1), (5, 2), (9, 3), (20, 5)])
def test_upscale_units(tiles: int, units: int) -> None:
    assert upscale_units(tiles) == units


@pytest.mark.parametrize(("width", "height", "tile", "columns", "rows"), PLANS)
def test_blend_weights_sum_to_one(
    width: int, height: int, tile: int, columns: int, rows: int
) -> None:
    boxes = plan_tiles(width, height, tile)
    total = np.zeros((height, width))
    for (left, top, right, bottom), weight in zip(
        boxes, blend_weights(boxes, (width, height)), strict=True
    ):
        assert weight.shape == (bottom - top, right - left)
        assert weight.min() > 0
        total[top:bottom, left:right] += weight
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def smooth_picture(width: int, height: int) -> Image.Image:
    """A gentle gradient with a slow wave: neighbouring pixels differ by a level or two."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 30 + 180 * x / width
    green = 30 + 180 * y / height
    blue = 128 + 60 * np.sin(x / 40) * np.cos(y / 50)
    return Image.fromarray(np.rint(np.dstack([red, green, blue])).astype(np.uint8), "RGB")


def stand_in_engine(tile: Image.Image, index: int) -> Image.Image:
    """A known smooth function of the tile's input that differs from tile to tile (as
    diffusion's tiles disagree): a per-tile contrast and brightness shift."""
    gain, offset = 1.0 - 0.06 * (index % 3), 14.0 * (index % 4)
    pixels = np.asarray(tile, dtype=np.float64) * gain + offset
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def hard_paste(tiles: list[Image.Image], boxes: list[Box], size: tuple[int, int]) -> Image.Image:
    """The control: tiles pasted over each other with no feathering (a seam at every edge)."""
    canvas = Image.new("RGB", size)
    for tile, box in zip(tiles, boxes, strict=True):
        canvas.paste(tile, box[:2])
    return canvas


def steps_at_edges(picture: Image.Image, boxes: list[Box]) -> tuple[float, float]:
    """Largest difference between neighbouring pixels across a tile edge, and elsewhere."""
    pixels = np.asarray(picture, dtype=np.float64)
    across_x = np.abs(np.diff(pixels, axis=1)).max(axis=2)  # between columns c and c+1
    across_y = np.abs(np.diff(pixels, axis=0)).max(axis=2)
    edge_columns = {c for b in boxes for c in (b[0] - 1, b[2] - 1)} & set(range(across_x.shape[1]))
    edge_rows = {r for b in boxes for r in (b[1] - 1, b[3] - 1)} & set(range(across_y.shape[0]))
    at_edges = max(
        across_x[:, sorted(edge_columns)].max(initial=0), across_y[sorted(edge_rows)].max(initial=0)
    )
    other_columns = sorted(set(range(across_x.shape[1])) - edge_columns)
    other_rows = sorted(set(range(across_y.shape[0])) - edge_rows)
    elsewhere = max(across_x[:, other_columns].max(), across_y[other_rows].max())
    return at_edges, elsewhere


@pytest.mark.parametrize(("width", "height", "tile"), [(320, 256, 128), (512, 384, 256)])
def test_blended_picture_has_no_step_at_tile_edges(width: int, height: int, tile: int) -> None:
    picture = enlarge(smooth_picture(width // 2, height // 2), (width, height))
    boxes = plan_tiles(width, height, tile)
    tiles = [stand_in_engine(t, i) for i, t in enumerate(cut(picture, boxes))]

    pasted_edges, pasted_elsewhere = steps_at_edges(hard_paste(tiles, boxes, picture.size), boxes)
    assert pasted_edges > pasted_elsewhere + 10, "the control must show the seams"

    at_edges, elsewhere = steps_at_edges(blend(tiles, boxes, picture.size), boxes)
    assert at_edges <= elsewhere + 1  # one level of rounding
    assert elsewhere <= pasted_elsewhere + 2  # the ramps spread the disagreement thinly


def test_blend_of_untouched_tiles_is_the_picture() -> None:
    picture = smooth_picture(200, 96)
    boxes = plan_tiles(200, 96, 128)
    assert np.array_equal(np.asarray(blend(cut(picture, boxes), boxes, picture.size)), picture)


def test_blend_fits_a_tile_the_model_made_at_another_size() -> None:
    picture = smooth_picture(96, 64)
    boxes = plan_tiles(96, 64, 128)
    made = picture.resize((128, 88), Image.Resampling.LANCZOS)  # the model's long side
    blended = blend([made], boxes, picture.size)
    assert blended.size == (96, 64)
    assert np.abs(np.asarray(blended, float) - np.asarray(picture, float)).mean() < 3


def test_enlarge_is_rgb_at_the_size() -> None:
    image = Image.new("RGBA", (30, 20), (10, 20, 30, 128))
    assert enlarge(image, (64, 40)).mode == "RGB"
    assert enlarge(image, (64, 40)).size == (64, 40)


def test_tiling_loads_no_torch() -> None:
    """The bot plans and blends upscales; it must not pull in torch by doing so."""
    code = "import sys, pipeline.tiling; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
