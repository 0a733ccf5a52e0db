"""Discord's size limits on what the bot sends, and the one way to stay inside them.

A message past a limit is refused whole (400, code 50035), after the work it reports was done,
so the member hears "something went wrong" about something that worked. Every text built
from values that can grow (templates, lists of channels, roles or changes) goes through
`fit_lines`, `join_items` or `fit_embed`: they cut at a line or item boundary and say what
was left out ("…and N more") instead of cutting mid-word where they can.
"""

from __future__ import annotations

from collections.abc import Sequence

import discord

CONTENT = 2000  # message content
EMBED_TITLE = 256
EMBED_DESCRIPTION = 4096
EMBED_FIELDS = 25
FIELD_NAME = 256
FIELD_VALUE = 1024
FOOTER = 2048
AUTHOR = 256
EMBED_TOTAL = 6000  # title + description + field names and values + footer + author
ELLIPSIS = "…"


def more_text(count: int, noun: str = "") -> str:
    """`…and 3 more` (or `…and 3 more roles`): what a cut list says it left out."""
    return f"{ELLIPSIS}and {count} more" + (f" {noun}" if noun else "")


def clip(text: str, limit: int) -> str:
    """`text` at most `limit` characters, ending in `…` when cut."""
    if limit <= 0:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def fit_lines(lines: Sequence[str], limit: int = CONTENT, noun: str = "") -> str:
    """The lines joined by newlines within `limit`: as many whole lines as fit, then
    `…and N more`. When not even the first line fits whole it is clipped instead, so the
    answer always starts with something."""
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    keep = _most_that_fit([len(line) for line in lines], 1, limit, noun)
    if keep:
        return "\n".join([*lines[:keep], more_text(len(lines) - keep, noun)])
    if len(lines) == 1:
        return clip(lines[0], limit)
    note = more_text(len(lines) - 1, noun)
    return clip(lines[0], limit - len(note) - 1) + "\n" + note


def join_items(items: Sequence[str], limit: int, sep: str = ", ", noun: str = "") -> str:
    """Items joined by `sep` within `limit`: as many whole items as fit, then `…and N more`;
    e.g. a server's hundred allowed channels as mentions."""
    text = sep.join(items)
    if len(text) <= limit:
        return text
    keep = _most_that_fit([len(item) for item in items], len(sep), limit, noun)
    if keep:
        return f"{sep.join(items[:keep])} {more_text(len(items) - keep, noun)}"
    return clip(more_text(len(items), noun), limit)


def _most_that_fit(lengths: Sequence[int], sep: int, limit: int, noun: str) -> int:
    """How many leading parts (joined by `sep` characters) fit in `limit` together with the
    one-character gap and the `…and N more` note for the rest; 0 if not even one."""
    best, used = 0, 0
    for keep, length in enumerate(lengths[:-1], start=1):
        used += length + (sep if keep > 1 else 0)
        if used > limit:
            break
        if used + 1 + len(more_text(len(lengths) - keep, noun)) <= limit:
            best = keep
    return best


def embed_size(embed: discord.Embed) -> int:
    """What Discord counts toward the 6,000 characters of one embed."""
    size = len(embed.title or "") + len(embed.description or "")
    size += sum(len(f.name or "") + len(f.value or "") for f in embed.fields)
    size += len(embed.footer.text or "") + len(embed.author.name or "")
    return size


def fit_embed(embed: discord.Embed) -> discord.Embed:
    """Clip every part of `embed` to its limit, keep at most 25 fields (the last one says
    how many were left out) and shorten the longest values until the whole fits 6,000."""
    if embed.title:
        embed.title = clip(embed.title, EMBED_TITLE)
    if embed.description:
        embed.description = clip(embed.description, EMBED_DESCRIPTION)
    if embed.footer.text:
        embed.set_footer(text=clip(embed.footer.text, FOOTER), icon_url=embed.footer.icon_url)
    fields = [
        (clip(f.name or "", FIELD_NAME), clip(f.value or "", FIELD_VALUE), bool(f.inline))
        for f in embed.fields
    ]
    if len(fields) > EMBED_FIELDS:
        left_out = len(fields) - EMBED_FIELDS + 1
        fields = [*fields[: EMBED_FIELDS - 1], (ELLIPSIS, more_text(left_out), False)]
    embed.clear_fields()
    for name, value, inline in fields:
        embed.add_field(name=name, value=value, inline=inline)
    while (over := embed_size(embed) - EMBED_TOTAL) > 0 and _shorten_longest(embed, over):
        pass
    return embed


def _shorten_longest(embed: discord.Embed, over: int) -> bool:
    """Take `over` characters (or all but one) off the longest part: the description, the
    footer, a field's name or value. False when nothing is left to shorten."""
    parts: list[tuple[int, str, int]] = [
        (len(embed.description or ""), "description", -1),
        (len(embed.footer.text or ""), "footer", -1),
    ]
    for i, f in enumerate(embed.fields):
        parts += [(len(f.value or ""), "value", i), (len(f.name or ""), "name", i)]
    length, kind, index = max(parts)
    if length <= 1:
        return False
    keep = max(1, length - over)
    if kind == "description":
        embed.description = clip(embed.description or "", keep)
    elif kind == "footer":
        embed.set_footer(text=clip(embed.footer.text or "", keep), icon_url=embed.footer.icon_url)
    else:
        f = embed.fields[index]
        name, value = f.name or "", f.value or ""
        if kind == "name":
            name = clip(name, keep)
        else:
            value = clip(value, keep)
        embed.set_field_at(index, name=name, value=value, inline=bool(f.inline))
    return True
