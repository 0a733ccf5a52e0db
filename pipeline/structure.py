"""Structure maps: what a ControlNet holds a picture to, made from the job's stored input.

A map is white strokes on black at the generated size (the convention of the SD canny and
lineart ControlNets), as an RGB picture:
- `edges`: a Canny edge map (Gaussian blur, Sobel gradient, non-maximum suppression,
  hysteresis between two thresholds) for photos, products and architecture photos;
- `lines`: the input's own dark strokes on a light ground (sketches, line art, floor plans),
  each pixel's darkness against its local background; an inverted sketch (light strokes on
  a dark ground) is detected by its mostly dark ground and flipped first.

numpy and Pillow only: the worker makes maps without another image library, and the bot
(which never makes one) imports nothing from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from pipeline.request import STRUCTURE_KINDS, InputError

THUMBNAIL_SIDE = 160
"""Long side of the map thumbnail a structure result carries (shown on the result)."""


@dataclass(frozen=True)
class MapSettings:
    """The map thresholds (STRUCTURE_EDGES_LOW, STRUCTURE_EDGES_HIGH, STRUCTURE_LINES_CONTRAST);
    the defaults suit pictures of any size the model generates."""

    edges_low: int = 40
    """Canny: a gradient above this is an edge where it touches a strong one. The scale:
    a (blurred) step from black to white is 255, so this is a step of 40 grey levels."""
    edges_high: int = 80
    """Canny: a gradient above this is always an edge (same scale)."""
    lines_contrast: int = 40
    """Lines: a pixel this much darker (0–255) than its local background is a stroke."""


def structure_map(
    image: Image.Image, kind: str, settings: MapSettings | None = None
) -> Image.Image:
    """The `kind` map of `image` (already at the generated size), RGB, white on black."""
    settings = settings or MapSettings()
    if kind not in STRUCTURE_KINDS:
        offered = ", ".join(STRUCTURE_KINDS)
        raise InputError(f"Structure {kind!r} is not offered. Use one of: {offered}.")
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    if kind == "edges":
        mask = canny(gray, settings.edges_low, settings.edges_high)
    else:
        mask = dark_lines(image.convert("L"), settings.lines_contrast)
    return Image.fromarray((mask * 255).astype(np.uint8), "L").convert("RGB")


def thumbnail(structure: Image.Image) -> Image.Image:
    """A small copy of a map for the result message (long side `THUMBNAIL_SIDE`)."""
    small = structure.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return small


def _gaussian(gray: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(gray, radius, mode="edge")
    rows = sum(k * padded[:, i : i + gray.shape[1]] for i, k in enumerate(kernel))
    return sum(k * rows[i : i + gray.shape[0], :] for i, k in enumerate(kernel))


def _sobel(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(smooth, 1, mode="edge")
    h, w = smooth.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return gx, gy


def _thin(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: keep a pixel only where it peaks across its edge."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(np.int8) % 4  # 0: E-W, 1: NE, 2: N-S, 3: NW
    p = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    neighbours = {0: ((0, 1), (0, -1)), 1: ((1, 1), (-1, -1)), 2: ((1, 0), (-1, 0)),
                  3: ((1, -1), (-1, 1))}  # fmt: skip
    keep = np.zeros_like(magnitude, dtype=bool)
    for s, (a, b) in neighbours.items():
        peak = (magnitude >= at(*a)) & (magnitude >= at(*b))
        keep |= (sector == s) & peak
    return np.where(keep, magnitude, 0.0)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def _step_peak() -> float:
    """The gradient a blurred black-to-white step peaks at (the scale's 255)."""
    step = np.zeros((16, 16), np.float32)
    step[:, 8:] = 255.0
    gx, gy = _sobel(_gaussian(step))
    return float(np.hypot(gx, gy).max())


_STEP_PEAK = _step_peak()


def canny(gray: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges of a 0–255 grey picture as a bool mask. The gradient is scaled so 255
    is a full black-to-white step, the scale `low` and `high` are given in."""
    gx, gy = _sobel(_gaussian(gray))
    magnitude = np.hypot(gx, gy) * (255.0 / _STEP_PEAK)
    thin = _thin(magnitude, gx, gy)
    weak = thin > low
    edges = thin > high
    while True:  # hysteresis: weak pixels joined to a strong one, transitively
        grown = _dilate(edges) & weak
        if (grown == edges).all():
            return edges
        edges = grown


def dark_lines(gray: Image.Image, contrast: int) -> np.ndarray:
    """Strokes darker than their local background by `contrast` as a bool mask; a mostly
    dark picture (light strokes on a dark ground) is inverted first."""
    pixels = np.asarray(gray, dtype=np.float32)
    if np.median(pixels) < 128:
        gray = Image.fromarray((255 - pixels).astype(np.uint8), "L")
        pixels = 255 - pixels
    side = max(3, (min(gray.size) // 16) | 1)  # a window wider than a stroke
    background = np.asarray(gray.filter(ImageFilter.MaxFilter(min(side, 15))), np.float32)
    blurred = np.asarray(gray.filter(ImageFilter.BoxBlur(side)), np.float32)
    background = np.maximum(background, blurred)
    return (background - pixels) > contrast
