"""How a stored picture is attached to a message: one rule for every place that posts one.

A picture the safety checker flagged is stored and posted only in an age-restricted channel
whose server allows it (`/settings nsfw-channels allow`); everywhere else it is withheld
before it reaches the bot. Such a picture is always posted as a spoiler, whether it is a
single result, a comparison, an album, or a copy made by "Use" or "Open…", so no member sees
it without a click.

Every result goes out as PNG when it fits the upload limit Discord gives for that
interaction or channel, else as lossless WebP, else as JPEG quality 95 (an upscale at
2048 px can pass 10 MiB as PNG); the result's embed says which (`bot.ui.render`).
"""

from __future__ import annotations

import asyncio
import io
import struct
from pathlib import Path
from typing import Any

import discord
from PIL import Image

from bot.store.db import Job

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
"""Discord's upload limit for a server without boosts; used when none is known."""
SUFFIXES = {"PNG": ".png", "WebP": ".webp", "JPEG": ".jpg"}
JPEG_QUALITY = 95


def spoilered(job: Job) -> bool:
    """True for a picture the safety checker flagged (only stored where it is allowed)."""
    return bool(job.nsfw)


def upload_limit(interaction: Any = None, guild: Any = None) -> int:
    """Bytes one attachment may have: the interaction's limit (Discord sends it with every
    interaction), else the server's, else `DEFAULT_UPLOAD_LIMIT`."""
    for source in (interaction, guild):
        limit = getattr(source, "filesize_limit", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return DEFAULT_UPLOAD_LIMIT


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path | bytes) -> tuple[int, int] | None:
    """A stored PNG's (width, height) from its header (24 bytes, no decoding); None if the
    file is not a PNG. `path` may be the file's bytes, read already."""
    if isinstance(path, bytes):
        head = path[:24]
    else:
        with path.open("rb") as f:
            head = f.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def fit_upload(path: Path, limit: int) -> tuple[bytes | None, str]:
    """The picture as it can be uploaded: (None, "PNG") when the stored PNG fits `limit`,
    else lossless WebP if that fits, else JPEG quality 95. Blocking: run it in a thread."""
    if path.stat().st_size <= limit:
        return None, "PNG"
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="WEBP", lossless=True)
    if out.tell() <= limit:
        return out.getvalue(), "WebP"
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), "JPEG"


READ_AT_ONCE_MAX = 2 * 1024 * 1024
"""A stored PNG up to this size (a 1024 px result) is read in the event loop when it is
posted: it was written moments ago, so it comes from the page cache in well under a
millisecond, and one read replaces the header read, the open and the thread hop aiohttp
takes to read a file attachment. A larger one is read by aiohttp, in its thread."""


class Picture:
    """A stored result made ready to post once (`prepare`); `file()` makes a fresh
    attachment each time a post is tried (discord.py closes a File once it was sent)."""

    def __init__(self, path: Path, filename: str, spoiler: bool, data: bytes | None, fmt: str):
        self.path, self.spoiler, self.data, self.format = path, spoiler, data, fmt
        self.filename = str(Path(filename).with_suffix(SUFFIXES[fmt]))
        # the stored picture's size, whatever format it goes out as
        self.size = png_size(data if data is not None and fmt == "PNG" else path)

    @classmethod
    async def prepare(
        cls, path: Path, filename: str, *, spoiler: bool, limit: int = DEFAULT_UPLOAD_LIMIT
    ) -> Picture:
        """`spoiler`: `spoilered(job)` of the picture's job, the one spoiler rule."""
        size = path.stat().st_size
        if size <= min(limit, READ_AT_ONCE_MAX):  # the usual case: no thread, no encoding
            return cls(path, filename, spoiler, path.read_bytes(), "PNG")
        if size <= limit:
            return cls(path, filename, spoiler, None, "PNG")
        data, fmt = await asyncio.to_thread(fit_upload, path, limit)
        return cls(path, filename, spoiler, data, fmt)

    def file(self) -> discord.File:
        source: Path | io.BytesIO = self.path if self.data is None else io.BytesIO(self.data)
        return discord.File(source, filename=self.filename, spoiler=self.spoiler)


async def picture_file(
    path: Path, filename: str, job: Job, *, limit: int = DEFAULT_UPLOAD_LIMIT
) -> tuple[discord.File, str]:
    """`job`'s stored picture as an attachment named `filename` (its suffix follows the
    format), a spoiler if flagged, and the format's name: the one helper every posted
    result goes through (`Picture` where a post may be tried again)."""
    picture = await Picture.prepare(path, filename, spoiler=spoilered(job), limit=limit)
    return picture.file(), picture.format
