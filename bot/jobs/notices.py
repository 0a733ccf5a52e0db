"""The words of a job's final messages, fit for members: no exception text, no server
path, nobody pinged but the requester (used by `bot.jobs.delivery`)."""

from __future__ import annotations

import logging
import re

import discord

from bot.store.db import Job

log = logging.getLogger(__name__)

WITHHELD_PUBLIC = "🛡️ The picture was withheld by the safety filter, so it was not posted."
CANCELLED_TEXT = "✖️ Cancelled."
GENERIC_FAILURE = "Something went wrong on our side while making this image."
POST_PERMISSIONS = (
    ("view_channel", "View Channel"),
    ("send_messages", "Send Messages"),
    ("attach_files", "Attach Files"),
    ("embed_links", "Embed Links"),
)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?")
_EXCEPTION = re.compile(r"\b(?:Traceback|[A-Z]\w*(?:Error|Exception))\b")


def withheld_notice(job: Job) -> str:
    """What the requester alone is told when the safety filter withheld their picture."""
    return (
        f"🛡️ The safety filter flagged the picture made for job #{job.id}, so it was not "
        "posted, saved or added to the gallery. It counted against your quota, because the "
        "picture was made. To get a different result, try another prompt or another seed, "
        "or a lower strength to stay closer to your image."
    )


def plain_text(message: str) -> str:
    """A failure text fit for users: anything that reads like an exception or names a file
    on the server becomes a plain sentence instead."""
    if not message.strip() or _PATH.search(message) or _EXCEPTION.search(message):
        if message.strip():
            log.warning("hid a failure text from users: %r", message)
        return GENERIC_FAILURE
    return message


def ping(user_id: int) -> discord.AllowedMentions:
    """Allowed mentions for the requester's fallback ping: that user, nobody else."""
    return discord.AllowedMentions(
        everyone=False, users=[discord.Object(user_id)], roles=False, replied_user=False
    )
