"""Discord's size limits: the helpers cut at line or item boundaries and say what they left
out, and the bot's growing texts (a style, the help pages) stay inside every limit."""

from __future__ import annotations

import discord
import pytest

from bot.limits import (
    CONTENT,
    EMBED_DESCRIPTION,
    EMBED_FIELDS,
    EMBED_TITLE,
    EMBED_TOTAL,
    FIELD_NAME,
    FIELD_VALUE,
    clip,
    embed_size,
    fit_embed,
    fit_lines,
    join_items,
)
from bot.styles import Style
from bot.ui.styles import style_embed


def assert_within_limits(embed: discord.Embed) -> None:
    assert len(embed.title or "") <= EMBED_TITLE
    assert len(embed.description or "") <= EMBED_DESCRIPTION
    assert len(embed.fields) <= EMBED_FIELDS
    for field in embed.fields:
        assert 0 < len(field.name or "") <= FIELD_NAME
        assert 0 < len(field.value or "") <= FIELD_VALUE
    assert embed_size(embed) <= EMBED_TOTAL


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("short", 10, "short"), ("exactly10!", 10, "exactly10!"), ("eleven chars", 10, "eleven ch…")],
)
def test_clip(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected


def test_fit_lines_keeps_whole_lines_and_counts_the_rest() -> None:
    lines = [f"• Role <@&{1000 + i}>: 5 images" for i in range(200)]
    text = fit_lines(lines, 300, noun="roles")
    assert len(text) <= 300
    kept = text.split("\n")
    assert kept[:-1] == lines[: len(kept) - 1]  # whole lines, in order
    assert kept[-1] == f"…and {200 - (len(kept) - 1)} more roles"
    assert fit_lines(lines[:3], 300) == "\n".join(lines[:3])  # fits: unchanged


def test_fit_lines_clips_a_first_line_that_alone_is_too_long() -> None:
    assert fit_lines(["x" * 5000]) == "x" * (CONTENT - 1) + "…"
    text = fit_lines(["x" * 5000, "second"], 100)
    assert len(text) <= 100 and text.endswith("\n…and 1 more") and text.startswith("xxx")


def test_join_items_counts_what_it_left_out() -> None:
    channels = [f"<#{10**17 + i}>" for i in range(150)]
    text = join_items(channels, 500)
    assert len(text) <= 500
    shown, note = text.rsplit(" …", 1)
    count = len(shown.split(", "))
    assert shown.split(", ") == channels[:count]
    assert note == f"and {150 - count} more"
    assert join_items(channels[:2], 500) == ", ".join(channels[:2])


def test_fit_embed_keeps_an_oversized_embed_inside_every_limit() -> None:
    embed = discord.Embed(title="t" * 300, description="d" * 5000)
    for i in range(40):
        embed.add_field(name=f"field {i}" + "n" * 300, value="v" * 2000)
    embed.set_footer(text="f" * 3000)
    fitted = fit_embed(embed)
    assert_within_limits(fitted)
    assert fitted.fields[-1].value == "…and 16 more"  # 24 kept, the 25th says so


def test_a_style_at_every_length_limit_is_shown_in_full() -> None:
    """A 1,000-character template and negative prompt: about 3,000 characters with the
    example, past a message's 2,000 (Discord refused `/style save` and `/style show` with
    50035); the embed shows the template and the negative prompt whole."""
    template = ("{prompt}, " + "oil painting, impressionist, " * 40)[:999] + "!"
    negative = ("blurry, low quality, " * 60)[:1000]
    style = Style(name="n" * 32, template=template, negative_prompt=negative, strength=0.6,
                  scope="mine")  # fmt: skip
    embed = style_embed(style)
    assert_within_limits(embed)
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Prompt"] == f"`{template}`"
    assert fields["Negative prompt"] == f"`{negative}`"
    assert fields["Example"].startswith("“a cat” becomes “a cat, oil painting")
    assert embed_size(embed) > CONTENT  # would not have fitted a message


def test_a_template_with_backticks_stays_code() -> None:
    style = Style(name="ticks", template="{prompt} in `quotes`", scope="mine")
    prompt = {f.name: f.value for f in style_embed(style).fields}["Prompt"]
    assert prompt == "`` {prompt} in `quotes` ``"


def _cut_lines(parts: list[str], keep: int) -> str:
    return "\n".join([*parts[:keep], f"…and {len(parts) - keep} more"])


def _cut_items(parts: list[str], keep: int) -> str:
    return f"{', '.join(parts[:keep])} …and {len(parts) - keep} more"


@pytest.mark.parametrize("limit", [15, 40, 97, 300, 2000])
@pytest.mark.parametrize("count", [1, 2, 9, 10, 11, 120])
def test_the_most_whole_lines_and_items_that_fit_are_kept(limit: int, count: int) -> None:
    """Whatever the sizes: within the limit, a prefix in order with the right count, and
    one more whole line (or item) would not have fitted."""
    parts = [f"part {i} " + "x" * (i * 7 % 23) for i in range(count)]
    for text, whole, cut in (
        (fit_lines(parts, limit), "\n".join(parts), _cut_lines),
        (join_items(parts, limit), ", ".join(parts), _cut_items),
    ):
        assert len(text) <= limit
        if text == whole:
            assert len(whole) <= limit
            continue
        kept = next((k for k in range(1, count) if cut(parts, k) == text), 0)
        if kept == 0:  # not even one whole part fitted with the note
            assert len(cut(parts, 1)) > limit
        else:
            assert kept + 1 == count or len(cut(parts, kept + 1)) > limit
