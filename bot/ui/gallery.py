"""The gallery as members see it: the picture's embed, what a filter shows, and the ◀ ▶
buttons' custom_ids (direction, anchor job, filter), which route a click after a restart."""

from __future__ import annotations

import discord

from bot.store.gallery import Direction, GalleryEntry, GalleryFilter, Page
from bot.ui.render import truncate

CUSTOM_ID_LIMIT = 100  # Discord's limit on a component's custom_id

# ◀/▶ buttons: direction, anchor job id, filter user id (0 = anyone), stored search id (0 = none).
PAGE_TEMPLATE = (
    r"gal:(?P<dir>[no]):(?P<anchor>\d+):(?P<user>\d+):(?P<search>\d+)(?::(?P<model>[a-z0-9_.-]+))?"
)
"""The model part is optional: pages drawn before models had names still turn."""


def page_custom_id(
    direction: Direction, anchor: int, user_id: int | None, search_id: int, model: str | None = None
) -> str:
    custom_id = f"gal:{direction[0]}:{anchor}:{user_id or 0}:{search_id}"
    if model:
        custom_id += f":{model}"
    assert len(custom_id) <= CUSTOM_ID_LIMIT, custom_id
    return custom_id


def parse_direction(letter: str) -> Direction:
    return "newer" if letter == "n" else "older"


def describe(filt: GalleryFilter) -> str:
    """`by @someone with “words” in the prompt`; empty for the whole server."""
    parts = []
    if filt.user_id:
        parts.append(f"by <@{filt.user_id}>")
    if filt.search:
        parts.append(f"with “{truncate(filt.search, 60)}” in the prompt")
    if filt.model:
        parts.append(f"made with `{filt.model}`")
    return " ".join(parts)


def gallery_embed(
    entry: GalleryEntry,
    *,
    image_filename: str | None,
    page: Page | None = None,
    filt: GalleryFilter | None = None,
    spoiler: bool = False,
) -> discord.Embed:
    """A gallery picture with its facts; says so when the file was pruned. `spoiler`: the
    picture is attached below as a spoiler, since an embed's own image is never blurred."""
    embed = discord.Embed(colour=discord.Colour.dark_teal(), title="🖼️ Server gallery")
    if filt is not None and describe(filt):
        embed.description = f"Pictures {describe(filt)}"
    embed.add_field(name="Requester", value=f"<@{entry.user_id}>")
    embed.add_field(name="Strength", value=f"{entry.strength:.2f}")
    embed.add_field(name="Seed", value=str(entry.seed))
    embed.add_field(name="Prompt", value=truncate(entry.prompt, 1024), inline=False)
    if entry.negative_prompt:
        embed.add_field(
            name="Negative prompt", value=truncate(entry.negative_prompt, 1024), inline=False
        )
    made = int(entry.created_at)
    embed.add_field(name="Made", value=f"<t:{made}:f> (<t:{made}:R>)")
    embed.add_field(name="Message", value=entry.url or "not posted")
    if spoiler:
        embed.add_field(
            name="Image",
            value="Flagged by the safety filter: attached below as a spoiler.",
            inline=False,
        )
    elif image_filename:
        embed.set_image(url=f"attachment://{image_filename}")
    else:
        embed.add_field(
            name="Image",
            value="🧹 The image file is gone (pruned to save space); the message link above "
            "may still show it.",
            inline=False,
        )
    footer = f"job #{entry.job_id}"
    if page is not None:
        footer = f"Picture {page.index} of {page.total} · {footer}"
    embed.set_footer(text=footer)
    return embed
