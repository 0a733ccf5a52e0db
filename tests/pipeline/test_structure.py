"""Structure maps on real pictures drawn with Pillow: a photo-like scene, a pencil sketch,
the same sketch inverted and a floor plan. Maps are white on black at the input's size,
non-empty, and their lines lie where the strokes (or the shapes' borders) are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from pipeline.request import InputError
from pipeline.structure import MapSettings, structure_map, thumbnail

SIZE = (192, 128)


def photo() -> tuple[Image.Image, np.ndarray]:
    """A sky-to-ground gradient, a sun and a house, with sensor noise; and where the
    shapes' borders are."""
    w, h = SIZE
    ramp = np.linspace(40, 220, h, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(ramp * np.array([0.6, 0.8, 1.0]), (h, w, 3)).copy()
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 15, 60, 55), fill=(250, 220, 80))
    draw.rectangle((100, 50, 170, 115), fill=(30, 15, 10))
    noise = np.random.default_rng(1).normal(0, 4, (h, w, 3))
    image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    borders = np.zeros((h, w), bool)
    outline = Image.new("L", SIZE)
    d = ImageDraw.Draw(outline)
    d.ellipse((20, 15, 60, 55), outline=255, width=3)
    d.rectangle((100, 50, 170, 115), outline=255, width=3)
    borders |= np.asarray(outline) > 0
    return image, borders


def sketch() -> tuple[Image.Image, np.ndarray]:
    """Grey pencil strokes (a face and a line) on slightly uneven paper; and the strokes."""
    w, h = SIZE
    paper = 235 + np.random.default_rng(2).normal(0, 3, (h, w))
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8), "L")
    strokes = Image.new("L", SIZE)
    for target, fill in ((image, 90), (strokes, 255)):
        draw = ImageDraw.Draw(target)
        draw.ellipse((30, 20, 100, 100), outline=fill, width=2)
        draw.line((120, 20, 180, 110), fill=fill, width=2)
        draw.arc((50, 50, 80, 80), 20, 160, fill=fill, width=2)
    return image.convert("RGB"), np.asarray(strokes) > 0


def floor_plan() -> tuple[Image.Image, np.ndarray]:
    """Black walls of three rooms with a door gap on white; and the walls."""
    walls = Image.new("L", SIZE)
    image = Image.new("RGB", SIZE, "white")
    for target, fill in ((image, "black"), (walls, 255)):
        draw = ImageDraw.Draw(target)
        draw.rectangle((10, 10, 180, 118), outline=fill, width=3)
        draw.line((90, 10, 90, 70), fill=fill, width=3)
        draw.line((90, 90, 90, 118), fill=fill, width=3)
        draw.line((90, 64, 180, 64), fill=fill, width=3)
    return image, np.asarray(walls) > 0


def near(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """`mask` grown by `radius` pixels (a map line may sit beside the drawn stroke)."""
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(
        ImageFilter.MaxFilter(2 * radius + 1)
    )
    return np.asarray(grown) > 0


def white(map_image: Image.Image) -> np.ndarray:
    assert map_image.mode == "RGB" and map_image.size == SIZE
    pixels = np.asarray(map_image)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels[..., 0] > 0


def check_lines_follow(found: np.ndarray, drawn: np.ndarray, covered: float = 0.6) -> None:
    assert found.sum() > 50  # non-empty
    on_strokes = (found & near(drawn)).sum() / found.sum()
    assert on_strokes > 0.9, on_strokes  # the map's lines lie on the strokes
    assert (drawn & near(found)).sum() / drawn.sum() > covered  # and find most of them


def test_edges_of_a_photo_follow_the_shapes_not_the_gradient_or_noise() -> None:
    image, borders = photo()
    check_lines_follow(white(structure_map(image, "edges")), borders, covered=0.5)


@pytest.mark.parametrize("picture", [sketch, floor_plan])
def test_lines_of_a_sketch_and_a_floor_plan_are_its_strokes(picture: object) -> None:
    image, strokes = picture()  # type: ignore[operator]
    check_lines_follow(white(structure_map(image, "lines")), strokes, covered=0.9)


def test_an_inverted_sketch_gives_the_same_lines() -> None:
    image, strokes = sketch()
    plain = white(structure_map(image, "lines"))
    inverted = white(structure_map(ImageOps.invert(image), "lines"))
    check_lines_follow(inverted, strokes, covered=0.9)
    assert (plain == inverted).mean() > 0.99


def test_thresholds_are_settings_and_the_thumbnail_is_small(tmp_path: Path) -> None:
    image, _ = photo()
    few = white(structure_map(image, "edges", MapSettings(edges_low=150, edges_high=250)))
    assert few.sum() < white(structure_map(image, "edges")).sum()
    thumb = thumbnail(structure_map(image, "lines"))
    assert max(thumb.size) <= 160 and thumb.size[0] > thumb.size[1]


def test_an_unknown_kind_is_refused_in_plain_words() -> None:
    with pytest.raises(InputError, match="edges, lines"):
        structure_map(Image.new("RGB", SIZE), "depth")
