"""/style save|list|show|delete: named looks to reuse across many pictures.

A member saves their own styles; server styles need Manage Server, checked at run time
(not by default permissions: everyone may save and list their own). `style_autocomplete`
serves every command that takes a `style` option.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.models import model_autocomplete
from bot.errors import UserError
from bot.limits import CONTENT, clip, fit_lines, join_items
from bot.store.styles import StyleStore
from bot.styles import (
    BUILTINS,
    MAX_NAME_CHARS,
    MAX_PER_MEMBER,
    MAX_PER_SERVER,
    Style,
    check_name,
    check_strength,
    check_template,
    style_choices,
    unknown_style_text,
)
from bot.ui.styles import style_embed
from pipeline.request import (
    MAX_PROMPT_CHARS,
    MAX_STRENGTH,
    MIN_STRENGTH,
    InputError,
    check_prompt,
)

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]
NAME_SHOWN = MAX_NAME_CHARS + 8  # a typed name is echoed at most this long
STRUCTURE_CHOICES = [
    app_commands.Choice(name="off", value="off"),
    app_commands.Choice(name="edges (photos, products, buildings)", value="edges"),
    app_commands.Choice(name="lines (sketches, line art, floor plans)", value="lines"),
]
"""`structure:` on /img2img, /series and /style save (`pipeline.structure`)."""


def _can_manage(interaction: Interaction) -> bool:
    perms = interaction.permissions
    return bool(perms.manage_guild or perms.administrator)


def _need_manage(interaction: Interaction, hint: str) -> None:
    if not _can_manage(interaction):
        raise UserError(f"Server styles need the Manage Server permission. {hint}")


def _styles(interaction: Interaction) -> StyleStore:
    return interaction.client.styles  # type: ignore[attr-defined,no-any-return]


async def style_autocomplete(
    interaction: Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """The member's styles, the server's, then the built-ins, matching what was typed."""
    if interaction.guild_id is None:
        mine: list[Style] = []
        server: list[Style] = []
    else:
        mine, server = await _styles(interaction).both(interaction.guild_id, interaction.user.id)
    return [
        app_commands.Choice(name=label, value=value)
        for label, value in style_choices(current, mine, server)
    ]


def _lines(title: str, styles: list[Style], limit: int | None = None) -> list[str]:
    head = f"**{title}**" + (f" ({len(styles)} of {limit})" if limit is not None else "")
    if not styles:
        return [head, "• none yet"]
    rows = [
        f"• `{s.name}`"
        + (f" (strength {s.strength:.2f})" if s.strength is not None else "")
        + f": {s.description or s.template}"
        for s in styles
    ]
    return [head, *rows]


def _names(styles: list[Style]) -> str:
    """Style names for the short list, within a third of a message each."""
    return join_items([s.name for s in styles], CONTENT // 3) or "none"


@app_commands.guild_only()
class StylesCog(
    commands.GroupCog,
    group_name="style",
    group_description="Saved styles: one look for a whole series of pictures",
):
    def __init__(self, bot: ImgBot, styles: StyleStore) -> None:
        self.bot = bot
        self.styles = styles
        super().__init__()

    @app_commands.command(name="save", description="Save a style (prompt template) to reuse")
    @app_commands.describe(
        name=f"a–z, 0–9 and '-', at most {MAX_NAME_CHARS} characters",
        prompt="The template; {prompt} marks where the picture's own prompt goes",
        negative_prompt="What to avoid; added to the picture's own negative prompt",
        strength="Used when a picture gives no strength of its own",
        scope="Yours, or the whole server's (Manage Server)",
        loras="LoRAs it adds, e.g. pixel:0.8, ink (see /models); a picture's own tags win",
        model="The model it runs on (see /models); a picture's own model: wins",
        structure="Keep the input's structure: edges (photos) or lines (sketches); yours wins",
    )
    @app_commands.autocomplete(model=model_autocomplete)
    @app_commands.choices(structure=STRUCTURE_CHOICES)
    async def save(
        self,
        interaction: Interaction,
        name: app_commands.Range[str, 1, MAX_NAME_CHARS],
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        negative_prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] | None = None,
        strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
        scope: Literal["mine", "server"] = "mine",
        loras: app_commands.Range[str, 0, 200] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        structure: str | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        try:
            if scope == "server":
                _need_manage(interaction, "Save it as your own with `scope: mine` instead.")
            chosen = self.bot.jobs.models.entry(model).name if model else None
            style = Style(
                name=check_name(name),
                template=check_template(prompt),
                negative_prompt=check_prompt(
                    negative_prompt, field="negative prompt", required=False
                )
                or None,
                strength=check_strength(strength),
                scope=scope,
                loras=self.bot.loras.style_tags(loras, chosen),
                model=chosen,
                structure="" if structure in (None, "off") else str(structure),
            )
            replaced = await self.styles.save(interaction.guild_id, interaction.user.id, style)
        except (UserError, InputError) as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        whose = "your style" if scope == "mine" else "the server style"
        verb = "Replaced" if replaced else "Saved"
        await interaction.response.send_message(
            f"✅ {verb} {whose} `{style.name}`. Use it with `/img2img style:{style.name}`.",
            embed=style_embed(style),
            ephemeral=True,
        )

    @app_commands.command(name="list", description="Your styles, this server's and built-ins")
    async def list_styles(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        mine, server = await self.styles.both(interaction.guild_id, interaction.user.id)
        lines = [
            *_lines("Your styles", mine, MAX_PER_MEMBER),
            *_lines("This server's styles", server, MAX_PER_SERVER),
            *_lines("Built-in styles", list(BUILTINS.values())),
            "`/style show name` shows one in full; `/img2img style:name` uses it.",
        ]
        text = "\n".join(lines)
        if len(text) > CONTENT:  # 75 templates can pass Discord's limit: names only then
            text = fit_lines(
                [
                    f"**Your styles:** {_names(mine)}",
                    f"**This server's:** {_names(server)}",
                    f"**Built-in:** {_names(list(BUILTINS.values()))}",
                    "`/style show name` shows one in full.",
                ]
            )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="show", description="Show one style in full")
    @app_commands.describe(name="The style's name")
    @app_commands.autocomplete(name=style_autocomplete)
    async def show(self, interaction: Interaction, name: str) -> None:
        assert interaction.guild_id is not None
        style = await self.styles.resolve(interaction.guild_id, interaction.user.id, name)
        if style is None:
            await interaction.response.send_message(
                f"❌ {unknown_style_text(clip(name, NAME_SHOWN))}", ephemeral=True
            )
            return
        await interaction.response.send_message(embed=style_embed(style), ephemeral=True)

    @app_commands.command(name="delete", description="Delete one of your styles or the server's")
    @app_commands.describe(
        name="The style's name",
        scope="Whose style; by default yours if you have one of that name, else the server's",
    )
    @app_commands.autocomplete(name=style_autocomplete)
    async def delete(
        self,
        interaction: Interaction,
        name: str,
        scope: Literal["mine", "server"] | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        guild, user = interaction.guild_id, interaction.user.id
        key = clip(name.strip().lower(), NAME_SHOWN)  # typed freely: up to 6,000 characters
        try:
            if scope is None:
                mine, server = await self.styles.both(guild, user)
                in_server = any(s.name == key for s in server)
                scope = "server" if in_server and all(s.name != key for s in mine) else "mine"
            if scope == "server":
                _need_manage(interaction, "Ask a server manager to delete it.")
            deleted = await self.styles.delete(guild, scope, user, key)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        if deleted:
            whose = "your style" if scope == "mine" else "the server style"
            text = f"🗑️ Deleted {whose} `{key}`."
        elif key in BUILTINS:
            text = f"❌ `{key}` is a built-in style; built-in styles cannot be deleted."
        else:
            where = "You have" if scope == "mine" else "This server has"
            text = f"❌ {where} no style called `{key}`. `/style list` shows them."
        await interaction.response.send_message(text, ephemeral=True)


async def setup_styles(bot: ImgBot) -> StyleStore:
    """Open the style store on the bot's database and add the cog; returns the store."""
    styles = StyleStore(bot.store)
    await bot.add_cog(StylesCog(bot, styles))
    return styles
