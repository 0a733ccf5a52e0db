"""Which jobs get live previews (issue 29): the bot side's rule, applied at dispatch.

A job's request asks the worker for previews (`GenerationRequest.preview`) when PREVIEW is
not off, its server did not turn them off (`/settings previews off`), and it has a status
message of its own to show them in (not an album's or a comparison's shared message, not
an upscale's tiles or its final check).
"""

from __future__ import annotations

from dataclasses import replace

from bot.jobs.redelivery import SHARED_KINDS
from bot.store.db import Job
from bot.upscale import FINAL_KIND, TILE_KIND
from pipeline.request import GenerationRequest

NO_PREVIEW_KINDS = (*SHARED_KINDS, TILE_KIND, FINAL_KIND)
"""Jobs shown on a message they share or on an upscale's: no live previews there."""


def previews_on(preview_setting: str, server_choice: str | None) -> bool:
    """PREVIEW is not off and the server did not turn previews off (`server_choice`: its
    `guild_settings.previews`, None where it has no settings row)."""
    return preview_setting != "off" and server_choice != "off"


def with_preview(request: GenerationRequest, job: Job, on: bool) -> GenerationRequest:
    """The request asking for previews where the job gets them. Its status message id may
    not be stored yet when it starts at once, so it is not asked for here."""
    if not on or job.kind in NO_PREVIEW_KINDS:
        return request
    return replace(request, preview=True)
