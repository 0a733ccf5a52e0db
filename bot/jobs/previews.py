"""Which jobs get live previews (issue 29): the bot side's rule, applied at dispatch.

A job's request asks the worker for previews (`GenerationRequest.preview`) when PREVIEW is
not off, its server did not turn them off (`/settings previews off`), and it has a status
message of its own to show them in (not an album's or a comparison's shared message, not
an upscale's tiles or its final check).
"""

from __future__ import annotations

from dataclasses import replace

import aiosqlite

from bot.jobs.redelivery import SHARED_KINDS
from bot.store.db import Job
from bot.upscale import FINAL_KIND, TILE_KIND
from pipeline.request import GenerationRequest

NO_PREVIEW_KINDS = (*SHARED_KINDS, TILE_KIND, FINAL_KIND)
"""Jobs shown on a message they share or on an upscale's: no live previews there."""


async def previews_on(db: aiosqlite.Connection, preview_setting: str, guild_id: int) -> bool:
    """PREVIEW is not off and the server did not turn previews off."""
    if preview_setting == "off":
        return False
    rows = list(
        await db.execute_fetchall(
            "SELECT previews FROM guild_settings WHERE guild_id=?", (guild_id,)
        )
    )
    return not rows or rows[0][0] != "off"


def with_preview(request: GenerationRequest, job: Job, on: bool) -> GenerationRequest:
    """The request asking for previews where the job gets them. Its status message id may
    not be stored yet when it starts at once, so it is not asked for here."""
    if not on or job.kind in NO_PREVIEW_KINDS:
        return request
    return replace(request, preview=True)
