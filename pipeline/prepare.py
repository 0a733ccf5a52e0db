"""Turn an uploaded file into a clean RGB image the model can use (Pillow only, no torch).

Every rejection is an `InputError` whose message tells the user what to send instead. The
checks run cheapest first: byte size, then the header (format and declared size, so a
decompression bomb is refused before a single pixel is decoded), then the decode.
"""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.request import InputError

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 40_000_000
MAX_STORED_SIDE = 2048
RECOMMENDED_SIDE = 512
WHITE = (255, 255, 255)

_ACCEPTED_TEXT = "PNG, JPEG or WebP"
# Magic numbers of formats people commonly try, only to name them in the error message.
_KNOWN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def check_declared_size(size: int, *, max_bytes: int) -> None:
    """Refuse a file that is too large before downloading or reading it."""
    if size > max_bytes:
        raise InputError(
            f"The file is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}. "
            "Send a smaller image (a JPEG or WebP export is usually well under the limit)."
        )


def _sniff_format(data: bytes) -> str | None:
    head = data[:32]
    for magic, name in _KNOWN_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1"):
        return "HEIC"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    return None


def _unsupported(data: bytes) -> InputError:
    found = _sniff_format(data)
    what = f"a {found} file" if found else "not an image this bot can read"
    return InputError(
        f"That file is {what}. Send a {_ACCEPTED_TEXT} image "
        f"(accepted formats: {', '.join(ACCEPTED_FORMATS)})."
    )


def _too_many_pixels(width: int | None = None, height: int | None = None) -> InputError:
    size = f" ({width}×{height})" if width and height else ""
    return InputError(
        f"The image is too large{size}: the limit is {MAX_PIXELS // 1_000_000} megapixels. "
        f"Resize it to about {RECOMMENDED_SIDE * 2}×{RECOMMENDED_SIDE * 2} and send it again."
    )


def _open_header(data: bytes) -> Image.Image:
    """Open lazily (header only) among the accepted formats; no pixel data is decoded."""
    try:
        # Pillow's own guard only raises above ~179 MP (it merely warns above ~89 MP); the
        # stricter MAX_PIXELS check in `load_input` runs on the header size right after.
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise _too_many_pixels() from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _unsupported(data) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any alpha onto white and convert every mode (L, P, CMYK, I;16 …) to RGB."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale: scale to 8 bits instead of clipping everything to white.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_input(
    data: bytes, *, max_bytes: int, min_side: int, max_side: int = MAX_STORED_SIDE
) -> Image.Image:
    """Validate an upload and return it as an RGB image no larger than needed.

    EXIF orientation is applied, transparency is flattened onto white, and an animated
    file gives its first frame. A long side above `max_side` is scaled down to it (aspect
    kept, LANCZOS): models work at 512–1024 px, so a 40 MP photo would only fill the disk.
    """
    check_declared_size(len(data), max_bytes=max_bytes)
    if not data:
        raise InputError(f"The file is empty. Send a {_ACCEPTED_TEXT} image.")
    image = _open_header(data)
    try:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise _too_many_pixels(width, height)
        if min(width, height) < min_side:
            raise InputError(
                f"The image is {width}×{height} px; its short side must be at least "
                f"{min_side} px. Use an image of at least {RECOMMENDED_SIDE}×{RECOMMENDED_SIDE} "
                "for good results."
            )
        try:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)  # a copy of the current (first) frame
            rgb = _to_rgb(upright)
        except Image.DecompressionBombError:
            raise _too_many_pixels(width, height) from None
        except (OSError, SyntaxError, ValueError) as exc:
            log.info("could not decode %s image: %s", image.format, exc)
            raise InputError(
                f"The {image.format} file could not be decoded (it may be truncated or "
                f"damaged). Save it again as {_ACCEPTED_TEXT} and send it."
            ) from None
    finally:
        image.close()
    return shrink_to(rgb, max_side)


def shrink_to(image: Image.Image, max_side: int) -> Image.Image:
    """Scale down (LANCZOS, aspect kept) so the long side is at most `max_side`."""
    long_side = max(image.size)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    size = tuple(max(1, round(n * scale)) for n in image.size)
    # Long side exact: rounding must not leave it a pixel over (or under) the limit.
    size = (max_side, size[1]) if image.width >= image.height else (size[0], max_side)
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def target_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Size for the model: long side = `resolution`, aspect kept, both sides multiples of 8.

    Each side is rounded to the nearest multiple of 8 (at least 8), so the aspect ratio is
    off by at most the rounding; nothing is cropped or stretched beyond that.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    scale = resolution / max(width, height)

    def side(n: int) -> int:
        return max(8, int(n * scale / 8 + 0.5) * 8)

    return side(width), side(height)


def fit_to_resolution(image: Image.Image, resolution: int) -> Image.Image:
    """Resize (LANCZOS) to `target_size`; the image itself is never cropped."""
    size = target_size(image.width, image.height, resolution)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)
