"""Masks for /inpaint on the bot side: which of the three ways says what to repaint, where a
job's mask is stored, and the small thumbnail shown with a result.

A mask is stored next to its input as `inputs/NAME.mask.png` (mode L, the stored input's
size; white repaints, black keeps), so whatever removes an input (Delete, pruning,
forget-me) finds its mask by name and removes it too. Every way of making a job keeps that
pairing: a variant or Edit shares the parent's input and so its mask; Refine and the
Inpaint button copy the picture into a new input and store its mask beside it.

Masks are checked here, at the door, with `pipeline.mask`'s rules (no torch), so a bad mask
costs neither a place in the queue nor quota. Region words become a mask only in the worker.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline.mask import check_coverage, mask_from_alpha, mask_from_upload
from pipeline.request import InputError

log = logging.getLogger(__name__)

MASK_SUFFIX = ".mask.png"
THUMBNAIL_SIDE = 128
MAX_REGION_CHARS = 100
CROP_CHOICES = ("auto", "on", "off")
SOURCE_MASK = "mask"
SOURCE_ALPHA = "transparent area"

NO_MASK_TEXT = (
    "Nothing says what to repaint. Add a `mask` image (white = repaint, black = keep), "
    "upload a PNG or WebP whose area to repaint is transparent, or describe it in `region` "
    "(e.g. “the sky”). Nothing was queued and nothing counted against your quota."
)
NO_REGION_TEXT = (
    "Region words cannot be used right now: the bot's mask model is not loaded. Use a "
    "`mask` image (white = repaint, black = keep) or a PNG with a transparent area instead. "
    "Nothing was queued and nothing counted against your quota."
)
MASK_GONE_TEXT = (
    "The mask of this picture is no longer stored (old files are removed to save space), so "
    "it cannot be re-run. Use /inpaint with the image and a mask again."
)


@dataclass(frozen=True)
class MaskChoice:
    """What a job repaints: a mask image to store, or region words for the worker."""

    source: str  # shown with the result: "mask", "transparent area" or the region words
    mask: Image.Image | None = None  # mode L, the stored input's size
    region: str | None = None


def mask_path_for(input_rel: str) -> str:
    """`inputs/abc.png` → `inputs/abc.mask.png`: a mask lives and dies with its input."""
    stem = input_rel[: -len(".png")] if input_rel.endswith(".png") else input_rel
    return stem + MASK_SUFFIX


def is_mask(rel: str) -> bool:
    return rel.endswith(MASK_SUFFIX)


def input_of(mask_rel: str) -> str:
    """`inputs/abc.mask.png` → `inputs/abc.png` (the inverse of `mask_path_for`)."""
    return mask_rel[: -len(MASK_SUFFIX)] + ".png"


def check_region(words: str | None) -> str | None:
    """Region words stripped, or None when empty; too long → `InputError`."""
    text = " ".join((words or "").split())
    if not text:
        return None
    if len(text) > MAX_REGION_CHARS:
        raise InputError(
            f"The region is {len(text)} characters long; the limit is {MAX_REGION_CHARS}. "
            "Name the part to repaint in a few words, e.g. “the sky”."
        )
    return text


def transparency_mask(data: bytes, size: tuple[int, int]) -> Image.Image | None:
    """The transparent pixels of the ORIGINAL upload (upright, scaled to the stored input's
    `size`) as a mask, or None when it has none. The stored input is flattened to RGB, so
    this must read the upload's own bytes."""
    with Image.open(io.BytesIO(data)) as image:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        return mask_from_alpha(image, size)


def choose_mask(
    image_data: bytes | None,
    size: tuple[int, int],
    *,
    mask_data: bytes | None,
    region: str | None,
) -> MaskChoice:
    """The first of: a mask upload, the input's transparency, region words. Raises
    `InputError` for none of them, a mask of the wrong shape, or one that repaints nothing
    or everything (`pipeline.mask.check_coverage`'s messages). Blocking: run in a thread."""
    if mask_data is not None:
        mask = mask_from_upload(mask_data, size)
        check_coverage(mask)
        return MaskChoice(SOURCE_MASK, mask=mask)
    if image_data is not None:
        alpha = transparency_mask(image_data, size)
        if alpha is not None:
            check_coverage(alpha)
            return MaskChoice(SOURCE_ALPHA, mask=alpha)
    words = check_region(region)
    if words is not None:
        return MaskChoice(words, region=words)
    raise InputError(NO_MASK_TEXT)


def write_mask(data_dir: Path, input_rel: str, mask: Image.Image) -> str:
    """Store `mask` beside its input (temporary name, then rename: never a partial file);
    returns its path relative to DATA_DIR. Blocking: run in a thread."""
    rel = mask_path_for(input_rel)
    target = data_dir / rel
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mask.convert("L").save(tmp, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rel


def copy_mask(data_dir: Path, mask_rel: str, input_rel: str, size: tuple[int, int]) -> str:
    """A parent's mask for a new input (Refine: the result, possibly another size)."""
    with Image.open(data_dir / mask_rel) as source:
        mask = source.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return write_mask(data_dir, input_rel, mask)


def remove_with_input(data_dir: Path, input_rel: str) -> None:
    """Remove an input's mask (if any); call wherever the input itself is removed."""
    (data_dir / mask_path_for(input_rel)).unlink(missing_ok=True)


def thumbnail_png(path: Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small PNG of a mask for the result's embed."""
    with Image.open(path) as mask:
        small = mask.convert("L")
        small.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    small.save(out, format="PNG")
    return out.getvalue()
