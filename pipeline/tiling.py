"""Upscale ×2 as tiles: enlarge, cut into model-sized tiles, blend the finished tiles back.

Pillow and numpy only, no torch: the bot plans an upscale's tiles (one img2img job each,
so they are ordinary rows of the step batcher) and blends the results with the same
functions the `python -m pipeline upscale` CLI uses, which is what makes their pixels equal.

Why pixel-space blending rather than blending noise predictions every step (Mixture of
Diffusers): each tile stays an ordinary img2img job, pixel-equal to its solo run, that can
share UNet calls with any other member's job and be retried, queued and counted like one.
At the low strengths upscaling uses (0.1–0.2) tiles start from the same enlarged picture and
barely drift apart, so linear ramps across overlaps of at least 64 px hide the seams.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipeline.request import MAX_SEED, InputError

Box = tuple[int, int, int, int]
"""left, top, right, bottom in the upscaled picture (right/bottom exclusive, like PIL)."""

MIN_OVERLAP = 64
"""Fewest pixels neighbouring tiles share: the width of the ramp that hides a seam."""

_ALIGN = 8  # latent pixels: every side the model sees is a multiple of 8
_SEED_STRIDE = 0x9E3779B1  # odd (golden-ratio) stride: tile seeds spread over the whole range


def _round8(n: float) -> int:
    return max(_ALIGN, int(n / _ALIGN + 0.5) * _ALIGN)


def upscaled_size(width: int, height: int, scale: int, cap: int) -> tuple[int, int]:
    """Parent size × scale, sides rounded to multiples of 8; raises `InputError` naming the
    cap (UPSCALE_MAX_SIDE) when the long side would exceed it."""
    if width <= 0 or height <= 0 or scale < 1:
        raise ValueError(f"bad upscale of {width}×{height} by {scale}")
    size = (_round8(width * scale), _round8(height * scale))
    if max(size) > cap:
        raise InputError(
            f"Upscaling this {width}×{height} picture ×{scale} would make it "
            f"{size[0]}×{size[1]} px; the largest side this bot makes is {cap} px "
            "(UPSCALE_MAX_SIDE). Upscale a smaller picture instead."
        )
    return size


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Even spread of tiles along one side, in units of 8 so every start is aligned: with
    n = 1 + ceil(free / (tile - overlap)) the integer steps are at most tile - overlap."""
    if length <= tile:
        return [(0, length)]
    units, tile_u, overlap_u = length // _ALIGN, tile // _ALIGN, -(-overlap // _ALIGN)
    free = units - tile_u
    gaps = math.ceil(free / (tile_u - overlap_u))
    starts = [i * free // gaps * _ALIGN for i in range(gaps + 1)]
    return [(s, s + tile) for s in starts]


def plan_tiles(width: int, height: int, tile: int, overlap: int = MIN_OVERLAP) -> list[Box]:
    """Row-major tiles of side `tile` (or the picture's side where smaller), each side a
    multiple of 8, covering the picture, neighbours overlapping by >= overlap, spread evenly.

    `tile` is taken down to a multiple of 8; the picture's sides must be multiples of 8
    (`upscaled_size` makes them so). A tile under twice the overlap (under 128 px: only test
    models work that small) overlaps by half its side instead, so the tiles still advance."""
    tile = tile // _ALIGN * _ALIGN
    if width % _ALIGN or height % _ALIGN or width <= 0 or height <= 0:
        raise ValueError(f"picture sides must be positive multiples of 8, got {width}×{height}")
    if tile < 2 * _ALIGN:
        raise ValueError(f"tiles must be at least {2 * _ALIGN} px, got {tile}")
    overlap = min(overlap, tile // 2 // _ALIGN * _ALIGN)
    columns, rows = _spans(width, tile, overlap), _spans(height, tile, overlap)
    return [(left, top, right, bottom) for top, bottom in rows for left, right in columns]


def enlarge(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture the tiles are cut from: RGB, resized to `size` with Lanczos."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)


def cut(image: Image.Image, boxes: list[Box]) -> list[Image.Image]:
    """The tiles' input pictures, one per box, in the boxes' order."""
    return [image.crop(box) for box in boxes]


def tile_seed(seed: int, index: int) -> int:
    """Tile `index`'s seed: tile 0 keeps the upscale's seed, the others step away from it by
    an odd stride so no two tiles of one upscale share a seed (their noise would repeat)."""
    return (seed + index * _SEED_STRIDE) % (MAX_SEED + 1)


def upscale_units(tiles: int) -> int:
    """Quota an upscale costs: one image per four tiles, rounded up."""
    return -(-tiles // 4)


def _ramp(length: int, start_ramp: int, end_ramp: int) -> np.ndarray:
    """One tile's weight along one side: rising linearly over the overlap with the neighbour
    before it, falling over the overlap with the one after, 1 elsewhere. Pixel k of a ramp
    of n gets (k + 0.5) / n, so two tiles' ramps across one overlap sum to exactly 1."""
    weights = np.ones(length, dtype=np.float64)
    position = np.arange(length, dtype=np.float64) + 0.5
    if start_ramp:
        weights = np.minimum(weights, position / start_ramp)
    if end_ramp:
        weights = np.minimum(weights, (length - position) / end_ramp)
    return weights


def _overlaps(box: Box, boxes: list[Box]) -> tuple[int, int, int, int]:
    """How far the tiles around `box` reach into it: from the left, top, right, bottom."""
    left, top, right, bottom = box
    reach = [0, 0, 0, 0]
    for other in boxes:
        o_left, o_top, o_right, o_bottom = other
        if other == box:
            continue
        if o_top < bottom and o_bottom > top:  # shares rows: a neighbour along x
            if o_left < left < o_right:
                reach[0] = max(reach[0], min(o_right, right) - left)
            if o_left < right < o_right:
                reach[2] = max(reach[2], right - max(o_left, left))
        if o_left < right and o_right > left:  # shares columns: a neighbour along y
            if o_top < top < o_bottom:
                reach[1] = max(reach[1], min(o_bottom, bottom) - top)
            if o_top < bottom < o_bottom:
                reach[3] = max(reach[3], bottom - max(o_top, top))
    return reach[0], reach[1], reach[2], reach[3]


def blend_weights(boxes: list[Box], size: tuple[int, int]) -> list[np.ndarray]:
    """Each tile's weight map (height × width of its box), normalised so that at every pixel
    of the picture the weights of the tiles covering it sum to 1."""
    raw = []
    for box in boxes:
        left, top, right, bottom = box
        reach_left, reach_top, reach_right, reach_bottom = _overlaps(box, boxes)
        along_x = _ramp(right - left, reach_left, reach_right)
        along_y = _ramp(bottom - top, reach_top, reach_bottom)
        raw.append(np.outer(along_y, along_x))
    total = np.zeros((size[1], size[0]), dtype=np.float64)
    for (left, top, right, bottom), weight in zip(boxes, raw, strict=True):
        total[top:bottom, left:right] += weight
    if not np.all(total > 0):
        raise ValueError("the tiles do not cover the picture")
    return [
        weight / total[top:bottom, left:right]
        for (left, top, right, bottom), weight in zip(boxes, raw, strict=True)
    ]


def blend(tiles: list[Image.Image], boxes: list[Box], size: tuple[int, int]) -> Image.Image:
    """Feathered pixel-space blend: linear ramps across each overlap, weights summing to 1
    everywhere; deterministic (the bot and the CLI call this same function, so their pixels
    are equal). A tile whose size differs from its box (the model worked at another size) is
    resized to the box with Lanczos first."""
    if len(tiles) != len(boxes):
        raise ValueError(f"{len(tiles)} tiles for {len(boxes)} boxes")
    # float32: a 2048 px canvas is 48 MiB, not 96, in the bot's process.
    canvas = np.zeros((size[1], size[0], 3), dtype=np.float32)
    for tile, box, weight in zip(tiles, boxes, blend_weights(boxes, size), strict=True):
        left, top, right, bottom = box
        box_size = (right - left, bottom - top)
        rgb = enlarge(tile, box_size)
        canvas[top:bottom, left:right] += np.asarray(rgb, dtype=np.float64) * weight[..., None]
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
