"""How a stored picture is attached to a message: one rule for every place that posts one.

A picture the safety checker flagged is stored and posted only in an age-restricted channel
whose server allows it (`/settings nsfw-channels allow`); everywhere else it is withheld
before it reaches the bot. Such a picture is always posted as a spoiler, whether it is a
single result, a comparison, an album, or a copy made by "Use" or "Open…", so no member sees
it without a click.
"""

from __future__ import annotations

from pathlib import Path

import discord

from bot.store.db import Job


def spoilered(job: Job) -> bool:
    """True for a picture the safety checker flagged (only stored where it is allowed)."""
    return bool(job.nsfw)


def picture_file(path: Path, filename: str, job: Job) -> discord.File:
    """`job`'s stored picture as an attachment named `filename`, a spoiler if flagged."""
    return discord.File(path, filename=filename, spoiler=spoilered(job))
