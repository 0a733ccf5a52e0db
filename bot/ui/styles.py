"""A saved style as members see it in `/style save` and `/style show`.

An embed rather than message content: a template and a negative prompt may each be 1,000
characters and the example repeats the template, which passes the 2,000 characters of a
message but fits an embed's fields (1,024 each); `fit_embed` keeps it inside the limits.
"""

from __future__ import annotations

import discord

from bot.limits import FIELD_VALUE, clip, fit_embed
from bot.loras import shown
from bot.styles import DEFAULT_STRENGTH, SCOPE_LABEL, Style, compose_prompt

EXAMPLE_PROMPT = "a cat"


def code(text: str, limit: int = FIELD_VALUE) -> str:
    """`text` as inline code that survives backticks in it, clipped to `limit` in all."""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    inner = clip(text, limit - 2 * (len(fence) + len(pad)))
    return f"{fence}{pad}{inner}{pad}{fence}"


def style_embed(style: Style) -> discord.Embed:
    """Name and whose it is, the template, negative prompt, strength and an example."""
    strength = (
        f"{style.strength:.2f}"
        if style.strength is not None
        else f"yours (default {DEFAULT_STRENGTH:.2f})"
    )
    embed = discord.Embed(
        title=f"{style.name} ({SCOPE_LABEL[style.scope]})",
        description=style.description or None,
        colour=discord.Colour.blurple(),
    )
    embed.add_field(name="Prompt", value=code(style.template), inline=False)
    if style.negative_prompt:
        embed.add_field(name="Negative prompt", value=code(style.negative_prompt), inline=False)
    embed.add_field(name="Strength", value=strength, inline=False)
    if style.model:
        embed.add_field(name="Model", value=style.model, inline=False)
    if style.structure:
        embed.add_field(name="Structure", value=style.structure, inline=False)
    if loras := shown(style.loras):
        embed.add_field(name="LoRA", value=clip(loras, FIELD_VALUE), inline=False)
    example = compose_prompt(style.template, EXAMPLE_PROMPT)
    head = f"“{EXAMPLE_PROMPT}” becomes “"
    embed.add_field(
        name="Example", value=head + clip(example, FIELD_VALUE - len(head) - 1) + "”", inline=False
    )
    return fit_embed(embed)
