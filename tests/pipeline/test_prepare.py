"""Input preparation: every bad upload gets its own clear message; good ones come out RGB."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from pipeline.prepare import (
    ACCEPTED_FORMATS,
    MAX_PIXELS,
    check_declared_size,
    fit_to_resolution,
    load_input,
    target_size,
)
from pipeline.request import InputError

MAX_BYTES = 10_000_000
MIN_SIDE = 256


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def load(data: bytes) -> Image.Image:
    return load_input(data, max_bytes=MAX_BYTES, min_side=MIN_SIDE)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width×height (1-bit gray) but whose pixel data is junk:
    decoding it would fail with a different error, so the size check must fire first."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"not zlib data")
        + png_chunk(b"IEND", b"")
    )


def rgb(size: tuple[int, int] = (320, 300), color: tuple[int, int, int] = (10, 120, 200)):
    return Image.new("RGB", size, color)


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (encode(rgb(), "GIF"), "GIF"),
        (encode(rgb(), "BMP"), "BMP"),
        (encode(rgb(), "TIFF"), "TIFF"),
        (b"this is not an image at all" * 10, None),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, None),  # PNG signature, broken header
    ],
    ids=["gif", "bmp", "tiff", "garbage", "broken-png-header"],
)
def test_unsupported_format_names_accepted_formats(data: bytes, named: str | None) -> None:
    with pytest.raises(InputError) as err:
        load(data)
    msg = str(err.value)
    assert "PNG, JPEG or WebP" in msg
    assert ", ".join(ACCEPTED_FORMATS) in msg
    if named:
        assert f"a {named} file" in msg


def test_empty_file() -> None:
    with pytest.raises(InputError, match="empty"):
        load(b"")


def test_file_over_byte_limit_is_rejected_before_decoding() -> None:
    data = encode(rgb(), "PNG")
    with pytest.raises(InputError, match=r"the limit is 0\.0 MB|limit is") as err:
        load_input(data, max_bytes=len(data) - 1, min_side=MIN_SIDE)
    assert "smaller image" in str(err.value)


def test_declared_size_check() -> None:
    check_declared_size(MAX_BYTES, max_bytes=MAX_BYTES)
    with pytest.raises(InputError) as err:
        check_declared_size(12_345_678, max_bytes=MAX_BYTES)
    assert "12.3 MB" in str(err.value) and "10.0 MB" in str(err.value)


@pytest.mark.parametrize(
    ("width", "height"),
    [(10_000, 4_001), (8_000, 8_000), (10_000, 10_000), (20_000, 20_000)],
    ids=["just-over-40MP", "64MP", "100MP-pillow-warns", "400MP-pillow-bomb-limit"],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_many_pixels_is_rejected_from_the_header(width: int, height: int) -> None:
    assert width * height > MAX_PIXELS
    with pytest.raises(InputError) as err:
        load(png_claiming(width, height))
    assert "40 megapixels" in str(err.value)


def test_header_claim_within_limit_then_fails_decoding() -> None:
    """The control for the test above: same junk pixel data, allowed size → decode error."""
    with pytest.raises(InputError, match="could not be decoded"):
        load(png_claiming(1000, 1000))


def test_truncated_jpeg_is_a_clear_error() -> None:
    data = encode(rgb((600, 400)), "JPEG")
    with pytest.raises(InputError, match="could not be decoded"):
        load(data[: len(data) // 2])


@pytest.mark.parametrize("size", [(300, 200), (255, 1000), (1000, 100)])
def test_short_side_too_small(size: tuple[int, int]) -> None:
    with pytest.raises(InputError) as err:
        load(encode(rgb(size), "PNG"))
    msg = str(err.value)
    assert f"{size[0]}×{size[1]}" in msg
    assert "at least 256 px" in msg and "512×512" in msg


def test_short_side_exactly_at_limit_is_accepted() -> None:
    assert load(encode(rgb((256, 256)), "PNG")).size == (256, 256)


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_load_as_rgb_at_original_size(fmt: str) -> None:
    image = load(encode(rgb((451, 300)), fmt))
    assert image.mode == "RGB" and image.size == (451, 300)
    r, g, b = image.getpixel((200, 150))
    assert abs(r - 10) < 8 and abs(g - 120) < 8 and abs(b - 200) < 8


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (400, 300), (255, 0, 0))
    stored.paste((0, 0, 255), (200, 0, 400, 300))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = load(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (300, 400)
    top, bottom = image.getpixel((150, 50)), image.getpixel((150, 350))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (300, 300), (255, 0, 0, 0))  # invisible red
    image.paste((0, 0, 0, 255), (0, 0, 150, 300))  # opaque black left half
    image.paste((0, 0, 0, 128), (150, 0, 300, 150))  # half-transparent black
    out = load(encode(image, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((250, 250)) == (255, 255, 255)
    assert out.getpixel((50, 50)) == (0, 0, 0)
    assert all(120 <= c <= 135 for c in out.getpixel((250, 50)))


def test_transparent_webp_and_la_are_flattened() -> None:
    webp = load(encode(Image.new("RGBA", (300, 300), (0, 255, 0, 0)), "WEBP", lossless=True))
    assert webp.getpixel((10, 10)) == (255, 255, 255)
    la = load(encode(Image.new("LA", (300, 300), (0, 0)), "PNG"))
    assert la.mode == "RGB" and la.getpixel((10, 10)) == (255, 255, 255)


def test_palette_with_transparency_is_flattened() -> None:
    pal = Image.new("P", (300, 300), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 150, 300))
    out = load(encode(pal, "PNG", transparency=0))
    assert out.getpixel((250, 10)) == (255, 255, 255)
    assert out.getpixel((10, 10)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("mode", "color", "fmt", "expected"),
    [
        ("L", 100, "PNG", (100, 100, 100)),
        ("L", 100, "JPEG", (100, 100, 100)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),
        ("I;16", 32768, "PNG", (128, 128, 128)),
    ],
    ids=["gray-png", "gray-jpeg", "1bit", "cmyk-jpeg", "gray16-png"],
)
def test_modes_are_converted_to_rgb(mode: str, color: object, fmt: str, expected: tuple) -> None:
    out = load(encode(Image.new(mode, (300, 280), color), fmt))  # type: ignore[arg-type]
    assert out.mode == "RGB" and out.size == (300, 280)
    assert all(abs(a - b) <= 3 for a, b in zip(out.getpixel((20, 20)), expected, strict=True))


def test_plain_palette_converted() -> None:
    pal = Image.new("P", (300, 300), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert load(encode(pal, "PNG")).getpixel((5, 5)) == (10, 200, 30)


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (300, 300), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = load(data)
    assert out.size == (300, 300)
    assert out.getpixel((150, 150)) == (255, 0, 0)


# --- sizing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "resolution", "expected"),
    [
        ((451, 300), 512, (512, 344)),
        ((300, 451), 512, (344, 512)),
        ((600, 400), 512, (512, 344)),
        ((512, 512), 512, (512, 512)),
        ((4000, 3000), 512, (512, 384)),
        ((1920, 1080), 1024, (1024, 576)),
        ((451, 300), 256, (256, 168)),
        ((300, 300), 768, (768, 768)),
        ((5000, 10), 512, (512, 8)),  # never below 8
        ((451, 300), 500, (504, 336)),  # resolution itself rounded to a multiple of 8
    ],
)
def test_target_size(size: tuple[int, int], resolution: int, expected: tuple[int, int]) -> None:
    assert target_size(*size, resolution) == expected


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (600, 400), (257, 1999), (1023, 767)])
@pytest.mark.parametrize("resolution", [512, 768, 1024])
def test_target_size_keeps_aspect(size: tuple[int, int], resolution: int) -> None:
    width, height = size
    out_w, out_h = target_size(width, height, resolution)
    assert out_w % 8 == 0 and out_h % 8 == 0
    assert abs(max(out_w, out_h) - resolution) <= 4
    scale = resolution / max(width, height)
    assert abs(out_w - width * scale) <= 4 and abs(out_h - height * scale) <= 4


def test_fit_to_resolution() -> None:
    image = rgb((600, 400))
    fitted = fit_to_resolution(image, 512)
    assert fitted.size == (512, 344) and fitted.mode == "RGB"
    already = rgb((512, 344))
    assert fit_to_resolution(already, 512) is already


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((3000, 1000), 2048, (2048, 683)),
        ((1000, 3000), 2048, (683, 2048)),
        ((4096, 4096), 2048, (2048, 2048)),
        ((2048, 1536), 2048, (2048, 1536)),  # at the limit: untouched
        ((900, 600), 512, (512, 341)),
    ],
)
def test_large_inputs_are_stored_no_larger_than_max_side(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    data = encode(rgb(size), "PNG")
    image = load_input(data, max_bytes=MAX_BYTES, min_side=MIN_SIDE, max_side=max_side)
    assert image.size == expected and image.mode == "RGB"
    assert image.getpixel((expected[0] // 2, expected[1] // 2)) == (10, 120, 200)


def test_default_max_side_is_2048() -> None:
    image = load(encode(rgb((2600, 1300)), "JPEG", quality=95))
    assert image.size == (2048, 1024)
