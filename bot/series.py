"""/series as plain values: all-or-nothing refusals and the album's text.

A series is one job per image with one prompt, strength, steps and seed, so the set looks
consistent. These functions take values and return text; `bot.cogs.series` does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bot.ui.render import user_text

log = logging.getLogger(__name__)

MAX_IMAGES = 10
LABEL_CHARS = 40

STATE_MARK = {
    "queued": "⏳ waiting",
    "running": "🎨 making",
    "done": "✅ done",
    "failed": "❌ failed",
    "cancelled": "✖️ cancelled",
    "withheld": "🛡️ withheld by the safety filter",
    "deleted": "🗑️ deleted",
}
FINAL_STATES = frozenset({"done", "failed", "cancelled", "withheld", "deleted"})


@dataclass(frozen=True)
class Item:
    """One image of a series as the album shows it."""

    position: int  # 1-based, the input order
    label: str  # the uploaded file's name
    job_id: int
    state: str
    has_image: bool = False


def bad_images_text(problems: Sequence[tuple[int, str]]) -> str:
    """Name every refused image by its position, so the user can fix them all at once."""
    lines = [f"• image{pos}: {why}" for pos, why in problems]
    return "The series was not queued; nothing was counted. Fix these and send it again:\n" + (
        "\n".join(lines)
    )


def reading_text(size: int) -> str:
    """The private answer while a series' pictures wait for and go through the decoder."""
    return (
        f"📥 Reading your {size} picture{'s' if size != 1 else ''}… When the bot is busy "
        "reading other uploads this waits for a free turn; nothing is queued or counted yet."
    )


def quota_refusal(size: int, user_left: int | None, guild_left: int | None) -> str | None:
    """The whole series is refused if either budget cannot take all of it (None: fits)."""
    if user_left is not None and user_left < size:
        return (
            f"A series of {size} needs {size} images; you have {user_left} left today. "
            "Send fewer images, or try again later (`/quota` shows when)."
        )
    if guild_left is not None and guild_left < size:
        return (
            f"A series of {size} needs {size} images; this server has {guild_left} left "
            "today. Send fewer images, or try again later (`/quota` shows when)."
        )
    return None


def progress_line(items: Sequence[Item]) -> str:
    done = sum(1 for i in items if i.state == "done")
    ended = sum(1 for i in items if i.state in FINAL_STATES)
    if ended == len(items):
        return f"Finished: {done} of {len(items)} images made."
    return f"{done} of {len(items)} done, {len(items) - ended} to go."


def album_text(
    user_id: int, prompt: str, strength: float, seed: int, style: str | None, items: Sequence[Item]
) -> str:
    """The album message: who and what, one line per image in input order, progress."""
    head = f"🖼️ Series for <@{user_id}> · strength {strength:.2f} · seed {seed}"
    if style:
        head += f" · style `{style}`"
    lines = [head, f"“{user_text(prompt, 300)}”"]
    for item in sorted(items, key=lambda i: i.position):
        mark = STATE_MARK.get(item.state, item.state)
        lines.append(f"{item.position}. {user_text(item.label, LABEL_CHARS)}: {mark}")
    lines.append(progress_line(items))
    return "\n".join(lines)


def attachment_name(item: Item) -> str:
    """Files are named by position, so they sort and read in input order."""
    return f"series-{item.position:02d}-job{item.job_id}.png"
