"""Masks for inpainting: reading them, checking them, feathering, crop boxes, compositing.

Pure Pillow/numpy (no torch), so the bot validates a mask at the door with the same code
the worker uses. A mask is a mode "L" image the size of the picture: white (255) repaints,
black (0) keeps, grey blends the result over the input at that opacity.

The promise the worker keeps with these helpers: the result is `composite`d over the input
through `feather(mask, blur)`, whose reach is at most `blur` px, so every pixel farther
than `blur` from the mask is the input's exact value.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from pipeline.prepare import ACCEPTED_FORMATS, MAX_PIXELS, check_declared_size
from pipeline.request import InputError

log = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.02
"""A mask whose width/height ratio is more than 2 % off the picture's is refused."""
SNAP = 8
"""Values within this of black/white snap to it, so JPEG noise neither repaints a kept
area faintly nor keeps a speck of a repainted one."""
CROP_BELOW = 0.25
"""`crop: auto` crops when the mask covers less than this share of the picture."""
CROP_PADDING = 32
"""Context (px of the result) kept around the feathered mask in a crop box."""
MIN_CROP_SIDE = 128
"""A crop box's long side is at least this (px of the result): a tiny mask is not
upscaled beyond sense."""
CROP_MODES = ("auto", "on", "off")


class MaskError(InputError):
    """A mask the job cannot use; the message says how to fix it."""


class MaskUnreadable(MaskError):
    """The mask file is not an image this bot can read."""


class MaskShapeMismatch(MaskError):
    """The mask's aspect ratio differs from the picture's by more than 2 %."""


class MaskEmpty(MaskError):
    """The mask repaints nothing."""


class MaskFull(MaskError):
    """The mask repaints everything: that is img2img."""


class RegionNotFound(MaskError):
    """CLIPSeg found nothing matching the region words."""


def _snap(mask: Image.Image) -> Image.Image:
    return mask.point(lambda v: 0 if v < SNAP else 255 if v > 255 - SNAP else v)


def _to_l(image: Image.Image) -> Image.Image:
    """Any mode → L: alpha is flattened onto black (transparent keeps), 16-bit scaled."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        black.alpha_composite(rgba)
        image = black
    return image if image.mode == "L" else image.convert("L")


def mask_from_upload(
    data: bytes, input_size: tuple[int, int], *, max_bytes: int | None = None
) -> Image.Image:
    """Read an uploaded mask (PNG/JPEG/WebP, any mode) as an L mask of `input_size`.

    Raises `MaskUnreadable` or `MaskShapeMismatch` (the sizes named) for a mask that cannot
    be used; coverage is checked separately (`check_coverage`)."""
    if max_bytes is not None:
        check_declared_size(len(data), max_bytes=max_bytes)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise MaskUnreadable(
            "The mask is not an image this bot can read. Send a PNG, JPEG or WebP picture the "
            "size of your image: white where to repaint, black where to keep."
        ) from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise MaskUnreadable(
                f"The mask is too large ({width}×{height}). Send it at your image's size."
            )
        try:
            image.load()
            mask = _to_l(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise MaskUnreadable(
                "The mask file could not be decoded (it may be damaged). Save it again as "
                "PNG and send it."
            ) from None
    in_w, in_h = input_size
    ratio = (mask.width / mask.height) / (in_w / in_h)
    if abs(ratio - 1) > ASPECT_TOLERANCE:
        raise MaskShapeMismatch(
            f"The mask is {mask.width}×{mask.height} but the image is {in_w}×{in_h}: their "
            "shapes differ. Send a mask with the same proportions as the image (best: the "
            "same size)."
        )
    if mask.size != (in_w, in_h):
        mask = mask.resize((in_w, in_h), Image.Resampling.BILINEAR)
    return _snap(mask)


def mask_from_alpha(image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image | None:
    """The transparent pixels of an upload as a mask (fully transparent → white, partly
    transparent → grey); None when nothing is transparent. EXIF orientation is applied,
    as for the stored input; `size` resizes the mask to the stored input's size."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return None
    alpha = ImageOps.exif_transpose(image).convert("RGBA").getchannel("A")
    mask = _snap(ImageOps.invert(alpha))
    if mask.getbbox() is None:
        return None
    if size is not None and mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return mask


def check_coverage(mask: Image.Image) -> float:
    """Return the share of pixels the mask repaints at all (0–1).

    Raises `MaskEmpty` when it repaints nothing and `MaskFull` when it repaints every
    pixel completely."""
    values = np.asarray(mask.convert("L"))
    if not values.any():
        raise MaskEmpty(
            "The mask repaints nothing: it is all black. Paint the area to change white "
            "(black keeps, grey blends), or describe it with `region` instead."
        )
    if values.min() == 255:
        raise MaskFull(
            "The mask repaints everything: it is all white. To change the whole picture use "
            "/img2img; for inpainting leave the parts to keep black."
        )
    return float(np.count_nonzero(values)) / values.size


def dilate(mask: Image.Image, px: int) -> Image.Image:
    """Grow the white area by `px` in every direction (square structuring element)."""
    if px <= 0:
        return mask
    values = np.asarray(mask.convert("L"))
    k = 2 * px + 1
    padded = np.pad(values, ((0, 0), (px, px)))
    rows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1).max(axis=-1)
    padded = np.pad(rows, ((px, px), (0, 0)))
    grown = np.lib.stride_tricks.sliding_window_view(padded, k, axis=0).max(axis=-1)
    return Image.fromarray(np.ascontiguousarray(grown, dtype=np.uint8), mode="L")


def region_mask(
    probs: np.ndarray, size: tuple[int, int], *, threshold: float, dilate_px: int
) -> Image.Image:
    """Turn CLIPSeg's per-pixel probabilities (0–1, any grid) into a mask of `size`.

    The grid is scaled to `size` (bilinear), a pixel is in the region where the probability
    is at least `threshold`, and the region is grown by `dilate_px`. Empty and full masks
    are returned as they are: the caller decides what they mean."""
    field = Image.fromarray(np.asarray(probs, dtype=np.float32), mode="F")
    field = field.resize(size, Image.Resampling.BILINEAR)
    inside = np.asarray(field) >= threshold
    mask = Image.fromarray(np.where(inside, 255, 0).astype(np.uint8), mode="L")
    return dilate(mask, dilate_px)


def feather(mask: Image.Image, blur: int) -> Image.Image:
    """Soften the mask's edge by at most `blur` px outward (two box blurs of radius
    blur/2: a tent kernel, exact reach), so pixels farther away stay exactly 0."""
    if blur <= 0:
        return mask
    first, second = blur // 2, blur - blur // 2
    out = mask
    for radius in (first, second):
        if radius:
            out = out.filter(ImageFilter.BoxBlur(radius))
    return out


def should_crop(crop: str, coverage: float) -> bool:
    """`on`/`off` as asked; `auto` crops a mask covering under a quarter of the picture."""
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    return crop == "on" or (crop == "auto" and coverage < CROP_BELOW)


def _span(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """A [start, start+length) window of [0, limit) centred on [lo, hi), covering it."""
    length = min(max(length, hi - lo), limit)
    start = (lo + hi - length) // 2
    start = max(0, min(start, limit - length))
    start = min(start, lo)  # cover the span even where rounding pulled the window right
    start = max(start, hi - length)
    return start, start + length


def crop_box(
    bbox: tuple[int, int, int, int],
    image_size: tuple[int, int],
    *,
    padding: int = CROP_PADDING,
    min_side: int = MIN_CROP_SIDE,
) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) to generate in "only masked" mode.

    `bbox` (of the feathered mask) grown by `padding` on every side, widened to the
    picture's aspect ratio (so the crop is generated at the model's full resolution
    without distortion) and to `min_side`, then moved, never shrunk, to lie inside the
    picture. Always contains `bbox`; the whole picture where the box would not fit."""
    width, height = image_size
    left, top, right, bottom = bbox
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"bbox {bbox} is not inside a {width}×{height} picture")
    x0, y0 = max(0, left - padding), max(0, top - padding)
    x1, y1 = min(width, right + padding), min(height, bottom + padding)
    aspect = width / height
    fit_w, fit_h = float(x1 - x0), float(y1 - y0)
    if fit_w / fit_h < aspect:
        fit_w = fit_h * aspect
    else:
        fit_h = fit_w / aspect
    scale = max(1.0, min_side / max(fit_w, fit_h))
    # One rounding, at the end: the box stays within a pixel of the picture's shape.
    box_w, box_h = math.ceil(fit_w * scale - 1e-9), math.ceil(fit_h * scale - 1e-9)
    if box_w >= width or box_h >= height:
        return 0, 0, width, height
    bx0, bx1 = _span(x0, x1, box_w, width)
    by0, by1 = _span(y0, y1, box_h, height)
    return bx0, by0, bx1, by1


def paste_crop(
    canvas: Image.Image, generated: Image.Image, box: tuple[int, int, int, int]
) -> Image.Image:
    """A copy of `canvas` with `generated` scaled to `box` and pasted there."""
    out = canvas.copy()
    size = (box[2] - box[0], box[3] - box[1])
    patch = (
        generated if generated.size == size else generated.resize(size, Image.Resampling.LANCZOS)
    )
    out.paste(patch.convert(out.mode), box[:2])
    return out


def composite(generated: Image.Image, original: Image.Image, feathered: Image.Image) -> Image.Image:
    """`generated` over `original` through `feathered`: where it is 0, the original's exact
    pixel; where 255, the generated one; in between, a blend."""
    if not (generated.size == original.size == feathered.size):
        raise ValueError(
            f"sizes differ: generated {generated.size}, original {original.size}, "
            f"mask {feathered.size}"
        )
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), feathered)
