"""The pure mask rules: reading, coverage, feathering reach, crop boxes, compositing."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.mask import (
    MaskEmpty,
    MaskFull,
    MaskShapeMismatch,
    MaskUnreadable,
    check_coverage,
    composite,
    crop_box,
    dilate,
    feather,
    mask_from_alpha,
    mask_from_upload,
    paste_crop,
    region_mask,
    should_crop,
)
from pipeline.request import InputError


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _distance_from(mask: Image.Image) -> np.ndarray:
    """Chebyshev distance of every pixel from the nearest non-zero mask pixel (brute force
    over the mask's pixels; the masks here are small)."""
    values = np.asarray(mask)
    ys, xs = np.nonzero(values)
    gy, gx = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
    dist = np.full(values.shape, np.inf)
    for y, x in zip(ys, xs, strict=True):
        dist = np.minimum(dist, np.maximum(abs(gy - y), abs(gx - x)))
    return dist


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "white", "fmt"),
    [
        ("L", 255, "PNG"),
        ("1", 1, "PNG"),
        ("RGB", (255, 255, 255), "PNG"),
        ("RGB", (255, 255, 255), "JPEG"),
        ("RGBA", (255, 255, 255, 255), "PNG"),
        ("LA", (255, 255), "WEBP"),
        ("I;16", 65535, "PNG"),
        ("P", 1, "PNG"),
    ],
)
def test_mask_from_upload_reads_any_mode_as_l(mode: str, white: object, fmt: str) -> None:
    src = Image.new(mode, (64, 64), 0)
    if mode == "P":
        src.putpalette([0, 0, 0, 255, 255, 255])
    ImageDraw.Draw(src).rectangle((16, 16, 47, 47), fill=white)  # type: ignore[arg-type]
    mask = mask_from_upload(_encode(src, fmt), (64, 64))
    assert mask.mode == "L" and mask.size == (64, 64)
    values = np.asarray(mask)
    assert values[32, 32] == 255 and values[2, 2] == 0  # white repaints, black keeps


def test_transparent_mask_pixels_keep() -> None:
    src = Image.new("RGBA", (64, 64), (255, 255, 255, 0))  # white but fully transparent
    ImageDraw.Draw(src).rectangle((0, 0, 15, 15), fill=(255, 255, 255, 255))
    values = np.asarray(mask_from_upload(_encode(src), (64, 64)))
    assert values[5, 5] == 255 and values[40, 40] == 0


def test_mask_is_scaled_to_the_input_size_within_two_percent() -> None:
    src = _square_mask((100, 50), (0, 0, 49, 49))
    mask = mask_from_upload(_encode(src), (404, 200))  # 2.02 vs 2.0: 1 % off
    assert mask.size == (404, 200)
    assert np.asarray(mask)[100, 50] == 255 and np.asarray(mask)[100, 350] == 0


@pytest.mark.parametrize(
    ("mask_size", "input_size"), [((100, 100), (512, 384)), ((300, 200), (600, 420))]
)
def test_mask_of_another_shape_is_refused_with_both_sizes(
    mask_size: tuple[int, int], input_size: tuple[int, int]
) -> None:
    with pytest.raises(MaskShapeMismatch) as err:
        mask_from_upload(_encode(Image.new("L", mask_size, 255)), input_size)
    message = str(err.value)
    assert "{}×{}".format(*mask_size) in message and "{}×{}".format(*input_size) in message


@pytest.mark.parametrize("data", [b"", b"not an image", b"GIF89a" + b"\0" * 40])
def test_unreadable_mask(data: bytes) -> None:
    with pytest.raises(MaskUnreadable):
        mask_from_upload(data, (64, 64))


def test_mask_over_the_byte_limit_is_refused() -> None:
    with pytest.raises(InputError, match="limit"):
        mask_from_upload(_encode(Image.new("L", (64, 64))), (64, 64), max_bytes=10)


def test_jpeg_noise_snaps_to_black_and_white() -> None:
    src = Image.new("RGB", (64, 64), (3, 3, 3))
    ImageDraw.Draw(src).rectangle((0, 0, 31, 63), fill=(251, 251, 251))
    values = np.asarray(mask_from_upload(_encode(src), (64, 64)))
    assert set(np.unique(values)) == {0, 255}


# -- transparency ----------------------------------------------------------------------------


def test_mask_from_alpha_marks_transparent_pixels() -> None:
    image = Image.new("RGBA", (40, 30), (10, 20, 30, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 9, 9), fill=(0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((20, 0, 29, 9), fill=(0, 0, 0, 128))
    values = np.asarray(mask_from_alpha(image))
    assert values[5, 5] == 255  # transparent: repaint
    assert 100 < values[5, 25] < 160  # half transparent: blend
    assert values[20, 20] == 0  # opaque: keep


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (8, 8)),
        Image.new("RGBA", (8, 8), (1, 2, 3, 255)),
        Image.new("LA", (8, 8), (5, 255)),
    ],
)
def test_mask_from_alpha_is_none_when_nothing_is_transparent(image: Image.Image) -> None:
    assert mask_from_alpha(image) is None


def test_mask_from_alpha_palette_transparency_and_resize() -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 200, 100, 50])
    ImageDraw.Draw(image).rectangle((10, 0, 19, 19), fill=1)
    image.info["transparency"] = 1
    mask = mask_from_alpha(image, size=(40, 40))
    assert mask is not None and mask.size == (40, 40)
    values = np.asarray(mask)
    assert values[20, 35] == 255 and values[20, 5] == 0


# -- coverage --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "error"),
    [(Image.new("L", (16, 16), 0), MaskEmpty), (Image.new("L", (16, 16), 255), MaskFull)],
)
def test_coverage_errors_are_distinct(mask: Image.Image, error: type[Exception]) -> None:
    with pytest.raises(error) as err:
        check_coverage(mask)
    assert isinstance(err.value, InputError)
    if error is MaskFull:
        assert "/img2img" in str(err.value)
    else:
        assert "nothing" in str(err.value)


@pytest.mark.parametrize(
    ("box", "expected"), [((0, 0, 7, 15), 0.5), ((0, 0, 3, 3), 1 / 16), ((4, 4, 4, 4), 1 / 256)]
)
def test_coverage_is_the_share_of_repainted_pixels(
    box: tuple[int, int, int, int], expected: float
) -> None:
    assert check_coverage(_square_mask((16, 16), box)) == pytest.approx(expected)


def test_an_all_grey_mask_is_neither_empty_nor_full() -> None:
    assert check_coverage(Image.new("L", (8, 8), 128)) == 1.0


# -- feather, dilate, region -----------------------------------------------------------------


@pytest.mark.parametrize("blur", [0, 1, 4, 7, 8, 13])
@pytest.mark.parametrize("box", [(20, 20, 30, 35), (0, 0, 5, 5), (50, 40, 63, 47)])
def test_feather_reaches_at_most_blur_pixels(blur: int, box: tuple[int, int, int, int]) -> None:
    mask = _square_mask((64, 48), box)
    soft = np.asarray(feather(mask, blur))
    dist = _distance_from(mask)
    assert not soft[dist > blur].any()  # beyond the feather: exactly 0
    if blur:
        assert soft[(dist > 0) & (dist <= blur - blur // 2)].min() > 0  # the edge softens
    assert soft.max() > 0


@pytest.mark.parametrize("px", [0, 1, 3, 10])
def test_dilate_grows_by_exactly_px(px: int) -> None:
    mask = _square_mask((40, 40), (15, 18, 20, 22))
    grown = np.asarray(dilate(mask, px))
    dist = _distance_from(mask)
    assert (grown[dist <= px] == 255).all() and not grown[dist > px].any()


def test_region_mask_thresholds_scales_and_dilates() -> None:
    probs = np.zeros((8, 8), dtype=np.float32)
    probs[2:4, 2:4] = 0.9
    probs[6, 6] = 0.3  # under the threshold
    mask = region_mask(probs, (64, 64), threshold=0.4, dilate_px=0)
    values = np.asarray(mask)
    assert values[24, 24] == 255 and values[52, 52] == 0 and values[5, 60] == 0
    grown = np.asarray(region_mask(probs, (64, 64), threshold=0.4, dilate_px=4))
    assert np.count_nonzero(grown) > np.count_nonzero(values)
    empty = region_mask(probs, (64, 64), threshold=0.95, dilate_px=4)
    assert empty.getbbox() is None


# -- crop ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crop", "coverage", "expected"),
    [
        ("auto", 0.1, True),
        ("auto", 0.2499, True),
        ("auto", 0.25, False),
        ("auto", 0.9, False),
        ("on", 0.9, True),
        ("off", 0.01, False),
    ],
)
def test_should_crop(crop: str, coverage: float, expected: bool) -> None:
    assert should_crop(crop, coverage) is expected


def test_should_crop_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="crop"):
        should_crop("maybe", 0.1)


@pytest.mark.parametrize(
    ("bbox", "size", "expected"),
    [
        # centred, square picture: padded by 32 → 84×84, raised to 128×128, centred
        ((230, 230, 250, 250), (512, 512), (176, 176, 304, 304)),
        # top-left corner: moved inside, not shrunk
        ((0, 0, 10, 10), (512, 512), (0, 0, 128, 128)),
        # bottom-right corner
        ((500, 500, 512, 512), (512, 512), (384, 384, 512, 512)),
        # landscape 2:1: the box is widened to 2:1
        ((300, 100, 340, 140), (512, 256), (216, 68, 424, 172)),
        # portrait 1:2 near the right edge: heightened to 1:2 and moved left
        ((240, 10, 256, 30), (256, 512), (192, 0, 256, 128)),
        # a mask too big for any smaller box: the whole picture
        ((10, 10, 500, 200), (512, 256), (0, 0, 512, 256)),
    ],
)
def test_crop_box_table(
    bbox: tuple[int, int, int, int], size: tuple[int, int], expected: tuple[int, int, int, int]
) -> None:
    assert crop_box(bbox, size) == expected


def test_crop_box_properties_on_random_masks() -> None:
    rng = random.Random(7)
    for _ in range(500):
        w, h = rng.randint(64, 1024), rng.randint(64, 1024)
        x0, y0 = rng.randrange(w), rng.randrange(h)
        bbox = (x0, y0, rng.randint(x0 + 1, w), rng.randint(y0 + 1, h))
        box = crop_box(bbox, (w, h), padding=rng.randint(0, 40), min_side=rng.randint(8, 200))
        assert 0 <= box[0] <= bbox[0] and box[2] >= bbox[2] and box[2] <= w
        assert 0 <= box[1] <= bbox[1] and box[3] >= bbox[3] and box[3] <= h
        bw, bh = box[2] - box[0], box[3] - box[1]
        if (bw, bh) != (w, h):  # a real crop keeps the picture's shape (to rounding)
            assert abs(bw / bh - w / h) <= (1 + w / h) / bh + 1e-9


def test_crop_box_refuses_a_bbox_outside_the_picture() -> None:
    with pytest.raises(ValueError):
        crop_box((0, 0, 600, 10), (512, 512))


# -- paste and composite ---------------------------------------------------------------------


def test_paste_crop_scales_into_the_box_only() -> None:
    canvas = Image.new("RGB", (100, 60), (10, 10, 10))
    patch = Image.new("RGB", (64, 32), (200, 0, 0))
    out = np.asarray(paste_crop(canvas, patch, (40, 20, 80, 40)))
    assert (out[20:40, 40:80] == (200, 0, 0)).all()
    outside = np.ones(out.shape[:2], bool)
    outside[20:40, 40:80] = False
    assert (out[outside] == (10, 10, 10)).all()
    assert np.asarray(canvas).max() == 10  # the canvas itself is untouched


def test_composite_keeps_the_original_exactly_where_the_mask_is_zero() -> None:
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    generated = Image.new("RGB", (64, 48), (128, 128, 128))
    mask = feather(_square_mask((64, 48), (20, 10, 40, 30)), 4)
    out = np.asarray(composite(generated, original, mask))
    zero = np.asarray(mask) == 0
    assert (out[zero] == np.asarray(original)[zero]).all()
    full = np.asarray(mask) == 255
    assert (out[full] == 128).all()


def test_composite_refuses_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match="sizes differ"):
        composite(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9)), Image.new("L", (8, 8)))
