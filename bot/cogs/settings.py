"""/settings: a server's limits, channels, gallery channel, role limits, usage resets,
age-restricted channels and blocked words.

Only for members with Manage Server: Discord hides the group from others by default
permissions, and every subcommand checks the permission again at run time because a server
can override command permissions. Every change is audited; `/settings show` lists them.
`setup_quotas` wires the whole quota feature into the bot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.blocked_words import MAX_WORD_CHARS, BlockedWords
from bot.cogs.models import model_autocomplete
from bot.cogs.quota import QuotaCog, member_role_ids
from bot.errors import UserError
from bot.limits import CONTENT, fit_lines, join_items
from bot.models import server_model
from bot.quota import WINDOW_S, plural
from bot.safety_notice import runs_unfiltered, unfiltered_text
from bot.store.quotas import QuotaStore

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]
Count = app_commands.Range[int, 0, None]
Word = app_commands.Range[str, 1, MAX_WORD_CHARS]
NO_MENTIONS = discord.AllowedMentions.none()
# /settings show gives an unbounded list this much of its 2,000 characters, then "…and N more"
CHANNELS_CHARS = 500
ROLES_CHARS = 600


async def _done(interaction: Interaction, change: str) -> None:
    await interaction.response.send_message(
        f"✅ Changed: {change}.", ephemeral=True, allowed_mentions=NO_MENTIONS
    )


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class SettingsCog(
    commands.GroupCog,
    group_name="settings",
    group_description="The image bot's settings for this server (Manage Server)",
):
    blocked_words = app_commands.Group(
        name="blocked-words", description="Words refused in prompts in this server"
    )

    def __init__(self, bot: ImgBot, quotas: QuotaStore, blocked: BlockedWords) -> None:
        self.bot = bot
        self.quotas = quotas
        self.blocked = blocked
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:
        """Default permissions only hide the command; a server may show it to anyone."""
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage("Use this command in a server.")
        perms = interaction.permissions
        if not (perms.manage_guild or perms.administrator):
            raise app_commands.CheckFailure(
                "Only members with the Manage Server permission can see or change the image "
                "bot's settings."
            )
        return True

    @app_commands.command(name="show", description="This server's settings and recent changes")
    async def show(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        q = self.quotas
        gs = await q.guild_settings(interaction.guild_id)
        user_limit, guild_limit = q.limits(gs)
        s = q.settings
        channels = (
            "every channel"
            if gs.allowed_channels is None
            else join_items([f"<#{c}>" for c in gs.allowed_channels], CHANNELS_CHARS)
        )
        user_note = "" if gs.user_daily is not None else " (default)"
        guild_note = "" if gs.guild_daily is not None else " (default)"
        gallery = f"<#{gs.gallery_channel_id}>" if gs.gallery_channel_id else "none"
        nsfw = (
            "results allowed unfiltered (posted as spoilers)"
            if gs.nsfw_channels == "allow"
            else "filtered like every channel (default)"
        )
        withheld = await q.withheld_count(interaction.guild_id, q.clock() - WINDOW_S)
        unchecked = await q.unfiltered_count(interaction.guild_id, q.clock() - WINDOW_S)
        words = await self.blocked.list(interaction.guild_id)
        lines = [
            "**Image bot settings**",
            f"• Per member: {plural(user_limit, 'image')} per 24 h{user_note}; "
            f"most allowed {s.quota_user_ceiling}",
            f"• Whole server: {plural(guild_limit, 'image')} per 24 h{guild_note}; "
            f"most allowed {s.quota_guild_ceiling}",
            f"• Channels: {channels}",
            f"• Gallery channel: {gallery}",
            f"• Age-restricted channels: {nsfw}",
            f"• Default model: {await self._model_line(interaction.guild_id)}",
            "• Live previews: "
            + (
                "off for every server (the operator's PREVIEW=off)"
                if s.preview == "off"
                else gs.previews + (" (default)" if gs.previews == "on" else "")
            ),
            f"• Withheld by the safety filter in the last 24 h: {plural(withheld, 'image')}",
            f"• Not checked by a safety filter in the last 24 h: {plural(unchecked, 'image')}",
            f"• Blocked words: {len(words)} of this server"
            + (
                f", {len(self.blocked.operator_words)} of the bot's operator"
                if self.blocked.operator_words
                else ""
            )
            + " (`/settings blocked-words list`)",
        ]
        roles = []
        if runs_unfiltered(self.bot.jobs.worker):
            lines.insert(1, f"⚠️ {unfiltered_text(unchecked)}")
        for rule in await q.role_limits(interaction.guild_id):
            what = "no per-member limit" if rule.exempt else plural(rule.user_daily or 0, "image")
            roles.append(f"• Role <@&{rule.role_id}>: {what}")
        if roles:
            lines.append(fit_lines(roles, ROLES_CHARS, noun="roles"))
        audit = await q.audit_log(interaction.guild_id)
        lines.append("**Recent changes**" if audit else "No changes yet.")
        for entry in audit:
            lines.append(f"• <t:{int(entry.at)}:R> by <@{entry.user_id}>: {entry.change}")
        await interaction.response.send_message(
            fit_lines(lines), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(
        name="nsfw-channels", description="Unfiltered results in age-restricted channels?"
    )
    @app_commands.describe(mode="allow: unfiltered there, as spoilers; filter: as everywhere")
    @app_commands.choices(
        mode=[
            app_commands.Choice(name="allow (age-restricted channels only)", value="allow"),
            app_commands.Choice(name="filter (default)", value="filter"),
        ]
    )
    async def nsfw_channels(self, interaction: Interaction, mode: str) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.set_nsfw_channels(
            interaction.guild_id, interaction.user.id, mode
        )
        await _done(interaction, change)

    async def _model_line(self, guild_id: int) -> str:
        models = self.bot.jobs.models
        name = await server_model(self.bot.store.db, guild_id)
        entry = models.pick(None, None, name)
        note = "" if name == entry.name else " (the bot's default)"
        return f"`{entry.name}`{note}"

    @app_commands.command(name="model", description="The model this server's pictures use")
    @app_commands.describe(
        name="A model from /models; members may still pick another with model:"
    )
    @app_commands.autocomplete(name=model_autocomplete)
    async def model(
        self, interaction: Interaction, name: app_commands.Range[str, 1, 100]
    ) -> None:
        assert interaction.guild_id is not None
        try:
            entry = self.bot.jobs.models.entry(name)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        change = f"default model → `{entry.name}`"
        q = self.quotas
        async with self.bot.store.transaction() as db:
            await q.set_guild_values(db, interaction.guild_id, model=entry.name)
            await q.record(db, interaction.guild_id, interaction.user.id, change)
        await _done(interaction, change)

    @app_commands.command(name="previews", description="Live previews of running jobs?")
    @app_commands.describe(mode="on: a small picture forms in the status message; off: the bar")
    @app_commands.choices(
        mode=[
            app_commands.Choice(name="on (default)", value="on"),
            app_commands.Choice(name="off", value="off"),
        ]
    )
    async def previews(self, interaction: Interaction, mode: str) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.set_previews(interaction.guild_id, interaction.user.id, mode)
        await _done(interaction, change)

    @blocked_words.command(name="add", description="Refuse prompts with this word")
    @app_commands.describe(word="A word (or a few words) to refuse, any case")
    async def blocked_add(self, interaction: Interaction, word: Word) -> None:
        assert interaction.guild_id is not None
        async with self.bot.store.transaction() as db:
            stored = await self.blocked.add(db, interaction.guild_id, interaction.user.id, word)
            change = f"blocked word “{stored}” added"
            await self.quotas.record(db, interaction.guild_id, interaction.user.id, change)
        await _done(interaction, change)

    @blocked_words.command(name="remove", description="Allow a blocked word again")
    @app_commands.describe(word="The blocked word to take off the list")
    async def blocked_remove(self, interaction: Interaction, word: Word) -> None:
        assert interaction.guild_id is not None
        async with self.bot.store.transaction() as db:
            stored = await self.blocked.remove(db, interaction.guild_id, word)
            change = f"blocked word “{stored}” removed"
            await self.quotas.record(db, interaction.guild_id, interaction.user.id, change)
        await _done(interaction, change)

    @blocked_words.command(name="list", description="The words refused in this server")
    async def blocked_list(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        words = await self.blocked.list(interaction.guild_id)
        lines = [
            "**Blocked words in this server**" if words else "No blocked words of this server."
        ]
        lines += [f"• {discord.utils.escape_markdown(w)}" for w in words]
        if self.blocked.operator_words:
            count = plural(len(self.blocked.operator_words), "word")
            lines.append(f"The bot's operator also blocks {count} on every server.")
        if self.blocked.operator_words:  # the operator's note must survive the cut
            note = lines.pop()
            text = fit_lines(lines, CONTENT - len(note) - 1, noun="words") + "\n" + note
        else:
            text = fit_lines(lines, noun="words")
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="limits", description="Images per member and per server (24 h)")
    @app_commands.describe(
        user="Images each member may make in 24 hours", guild="Images the whole server may make"
    )
    async def limits(
        self, interaction: Interaction, user: Count | None = None, guild: Count | None = None
    ) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.set_limits(
            interaction.guild_id, interaction.user.id, user, guild
        )
        await _done(interaction, change)

    @app_commands.command(name="channel-allow", description="Let the bot work in this channel")
    @app_commands.describe(channel="A channel where images may be made")
    async def channel_allow(
        self, interaction: Interaction, channel: app_commands.AppCommandChannel
    ) -> None:
        assert interaction.guild_id is not None
        if channel.type == discord.ChannelType.category:
            await interaction.response.send_message(
                "❌ Choose a channel, not a category.", ephemeral=True
            )
            return
        change = await self.quotas.allow_channel(
            interaction.guild_id, interaction.user.id, channel.id
        )
        await _done(interaction, f"{change}; the bot now works only in the allowed channels")

    @app_commands.command(
        name="channel-disallow", description="Take a channel off the allowed channels"
    )
    @app_commands.describe(channel="The channel to take off the list")
    async def channel_disallow(
        self, interaction: Interaction, channel: app_commands.AppCommandChannel
    ) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.disallow_channel(
            interaction.guild_id, interaction.user.id, channel.id
        )
        await _done(interaction, change)

    @app_commands.command(name="channel-all", description="Let the bot work in every channel")
    async def channel_all(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.allow_all_channels(interaction.guild_id, interaction.user.id)
        await _done(interaction, change)

    @app_commands.command(name="gallery-channel", description="Where finished images are collected")
    @app_commands.describe(channel="The gallery channel; leave empty for no gallery")
    async def gallery_channel(
        self, interaction: Interaction, channel: app_commands.AppCommandChannel | None = None
    ) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.set_gallery_channel(
            interaction.guild_id, interaction.user.id, channel.id if channel else None
        )
        await _done(interaction, change)

    @app_commands.command(name="role-limit", description="A role's own per-member limit")
    @app_commands.describe(
        role="The role",
        limit="Images per member with this role in 24 hours (empty: the server's limit)",
        exempt="Members with this role have no per-member limit",
    )
    async def role_limit(
        self,
        interaction: Interaction,
        role: discord.Role,
        limit: Count | None = None,
        exempt: bool = False,
    ) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.set_role_limit(
            interaction.guild_id, interaction.user.id, role.id, limit, exempt
        )
        await _done(interaction, change)

    @app_commands.command(name="reset-usage", description="Start a member's 24 h count afresh")
    @app_commands.describe(member="The member whose images so far stop counting")
    async def reset_usage(self, interaction: Interaction, member: discord.User) -> None:
        assert interaction.guild_id is not None
        change = await self.quotas.reset_usage(interaction.guild_id, interaction.user.id, member.id)
        await _done(interaction, change)


async def setup_quotas(bot: ImgBot) -> QuotaStore:
    """Add /quota and /settings, the reserve hook, and the channel and quota prechecks."""
    quotas = QuotaStore(bot.store, bot.settings, clock=bot.jobs.clock)
    blocked = BlockedWords(bot.store, bot.settings.blocked_word_list, clock=bot.jobs.clock)

    async def channel_precheck(interaction: Interaction) -> None:
        if interaction.guild_id is None:
            return
        parent = getattr(interaction.channel, "parent_id", None)
        await quotas.check_channel(interaction.guild_id, interaction.channel_id, parent)

    async def quota_precheck(interaction: Interaction) -> None:
        if interaction.guild_id is None:
            return
        await quotas.check(interaction.guild_id, interaction.user.id, member_role_ids(interaction))

    bot.prechecks.extend([channel_precheck, quota_precheck])
    # Blocked words first: a refused prompt is told about its word, not about the quota.
    bot.jobs.hooks.reserve.extend([blocked.reserve, quotas.reserve])
    await bot.add_cog(QuotaCog(bot, quotas))
    await bot.add_cog(SettingsCog(bot, quotas, blocked))
    return quotas
