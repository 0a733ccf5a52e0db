"""Uploads on the bot's side: read, checked, normalised and stored under `DATA_DIR`, a few
at a time, and removed again when their job was not queued.

A mixin of `bot.actions.Actions` (every command that takes an upload comes through it);
split from it by concern: this is the part that touches files and image bytes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import discord

from bot.errors import UserError
from bot.inpaint_masks import remove_with_input
from config import Settings
from pipeline.prepare import load_input

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
DECODE_WAIT_S = 5.0  # how long an upload may wait for a free decode slot
BUSY_TEXT = (
    "The bot is busy reading other uploads right now. Nothing was queued and nothing "
    "counted against your quota; please try again in a moment."
)
STORAGE_FULL_TEXT = (
    "The bot's storage is full, so your image could not be saved. Nothing was queued and "
    "nothing counted against your quota; please try again later (the bot's operator has "
    "been told in the log)."
)


class Uploads:
    """Mixin: `Actions.__init__` sets `bot`, `_decodes` (MAX_DECODES slots) and
    `decode_wait_s`."""

    bot: ImgBot
    _decodes: asyncio.Semaphore
    decode_wait_s: float

    @property
    def settings(self) -> Settings:
        return self.bot.settings

    async def decode_and_store(
        self, image: discord.Attachment, *, wait: bool = False
    ) -> tuple[str, int, int]:
        """Download, decode and store one upload, at most MAX_DECODES at once: a burst of
        10 MB uploads each decoding to 40 MP must not grow memory without bound. Returns
        (path under DATA_DIR, width, height); raises `InputError` for a bad image and
        `UserError` when busy (unless `wait`) or when the disk is full. Every command
        taking uploads comes through here."""
        _, stored, width, height = await self._read_and_store(image, wait=wait)
        return stored, width, height

    async def _read_and_store(
        self, image: discord.Attachment, *, wait: bool = False
    ) -> tuple[bytes, str, int, int]:
        """`decode_and_store`, also returning the upload's own bytes."""
        async with self.decode_slot(wait=wait):
            data = await image.read()
            return (data, *await asyncio.to_thread(self._store_input, data))

    @asynccontextmanager
    async def decode_slot(self, *, wait: bool = False) -> AsyncIterator[None]:
        """One of the MAX_DECODES slots for reading an image; `UserError` when none is
        free within `decode_wait_s`. `wait`: queue for a slot however long it takes (a
        series, whose member was told its pictures are being read, is not refused)."""
        try:
            if wait:
                await self._decodes.acquire()
            else:
                await asyncio.wait_for(self._decodes.acquire(), self.decode_wait_s)
        except TimeoutError:
            raise UserError(BUSY_TEXT) from None
        try:
            yield
        finally:
            self._decodes.release()

    def _store_input(self, data: bytes) -> tuple[str, int, int]:
        """Validate and normalize an upload, keep it as PNG under DATA_DIR (runs in a thread).

        Written under a temporary name and renamed, so a failed write (a full disk) leaves
        no partial file that a job could later read."""
        image = load_input(
            data,
            max_bytes=self.settings.max_input_bytes,
            min_side=self.settings.min_input_side,
            max_side=self.settings.max_stored_side,
        )
        name = uuid.uuid4().hex
        folder = self.settings.data_dir / "inputs"
        tmp = folder / f".{name}.png.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # zlib level 1: lossless like any level, and a 512 px photo is stored in 32 ms of
            # CPU instead of 73 (level 6), no larger: a photo's noise does not compress
            image.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, folder / f"{name}.png")
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                log.error("cannot store an upload: %s is full (%s)", folder, exc.strerror)
                raise UserError(STORAGE_FULL_TEXT) from None
            raise
        return f"inputs/{name}.png", image.width, image.height

    def discard(self, rel: str | None) -> None:
        """Remove an upload (and its mask) stored for a job that was then not queued."""
        if rel is not None:
            (self.settings.data_dir / rel).unlink(missing_ok=True)
            remove_with_input(self.settings.data_dir, rel)

    async def discard_unused(self, rel: str | None) -> bool:
        """Remove a stored input (and its mask) unless a job that is not deleted uses it:
        an error after its job was queued must not take the job's input away. True if
        removed."""
        if rel is None:
            return False
        cursor = await self.bot.store.db.execute(
            "SELECT 1 FROM jobs WHERE input_path=? AND state != 'deleted' LIMIT 1", (rel,)
        )
        if await cursor.fetchone() is not None:
            log.info("kept %s: a job still uses it", rel)
            return False
        await asyncio.to_thread(self.discard, rel)
        return True
