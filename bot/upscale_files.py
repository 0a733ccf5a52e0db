"""An upscale's pictures on disk: the tiles cut from the enlarged picture, and the blend
of the finished tiles. Blocking Pillow work: callers run these in a thread.

Each tile is stored as an input of its own (one img2img job each); the blended picture is
the input of the upscale's final job. Files are written under a temporary name and
renamed, so a failed write leaves nothing a job could read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from bot.upscale import UpscalePlan
from pipeline.tiling import Box, blend, cut, enlarge


def picture_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def remove(data_dir: Path, paths: Iterable[str | None]) -> None:
    for rel in paths:
        if rel:
            (data_dir / rel).unlink(missing_ok=True)


def cut_tiles(data_dir: Path, source_path: str, plan: UpscalePlan) -> list[str]:
    """Enlarge the picture (Lanczos) and store each tile as an input; their paths in tile
    order."""
    with Image.open(data_dir / source_path) as image:
        big = enlarge(image.convert("RGB"), (plan.width, plan.height))
    folder = data_dir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    paths: list[str] = []
    try:
        for i, tile in enumerate(cut(big, list(plan.boxes))):
            rel = f"inputs/{name}-tile{i}.png"
            tmp = folder / f".{name}-tile{i}.png.tmp"
            tile.save(tmp, format="PNG")
            tmp.replace(data_dir / rel)
            paths.append(rel)
    except BaseException:
        remove(data_dir, paths)
        raise
    return paths


def blend_tiles(
    data_dir: Path, outputs: list[str], boxes: tuple[Box, ...], size: tuple[int, int]
) -> str:
    """The tiles' finished pictures blended (`tiling.blend`, as the CLI does) and stored as
    an input; its path. A tile the model rendered at another size (a picture smaller than
    a tile on both sides) is brought back to its box first."""
    pictures = []
    for output, (left, top, right, bottom) in zip(outputs, boxes, strict=True):
        with Image.open(data_dir / output) as image:
            picture = image.convert("RGB")
        box = (right - left, bottom - top)
        if picture.size != box:
            picture = picture.resize(box, Image.Resampling.LANCZOS)
        pictures.append(picture)
    result = blend(pictures, list(boxes), size)
    name = uuid.uuid4().hex
    folder = data_dir / "inputs"
    tmp = folder / f".{name}.png.tmp"
    try:
        result.save(tmp, format="PNG")
        tmp.replace(folder / f"{name}.png")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"inputs/{name}.png"
