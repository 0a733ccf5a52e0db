"""/gallery: every finished result of a server, browsable by the members of that server.

`/gallery browse [user] [search] [public]` shows one picture per page, newest first, with
◀ ▶ buttons; `/gallery remove job` deletes a result (its message, its gallery entry and its
copy in the gallery channel). Discord cannot run a command group by itself, so browsing is the
`browse` subcommand.

Page buttons are `DynamicItem`s whose custom_id holds the direction, the job shown (the
anchor), the member filter and the id of the stored search words (`gallery_searches`): a
gallery message keeps paging after a restart, and any search fits Discord's 100 characters.
Every query is scoped to the guild of the interaction, so a button can never show another
server's picture.

Who may page: on an ephemeral gallery only its opener sees the buttons; a public gallery may
be paged by anyone who sees it. It shows nothing that `/gallery browse` would not show them,
and requiring ownership would only make others open their own copy.

Gallery channel: when an admin sets one (`/settings`, `guild_settings.gallery_channel_id`),
every finished result is also posted there, with a link back to its message. Chosen over a
"Share to gallery" button because:
- the gallery is by definition every result of the server (`/gallery browse` shows them all,
  and the result itself was posted publicly), so mirroring reveals nothing new to anyone, while
  a share button would make the channel and `/gallery` disagree about what "the gallery" is;
- setting the channel is the admin's opt-in for the whole server, and leaving it unset keeps
  the server quiet; a member who does not want a picture there deletes it (Delete button or
  `/gallery remove`), which deletes the copy too;
- it needs no fifth button under every result and no extra click to make the channel useful.
A result made in the gallery channel itself is not posted twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.gallery import (
    MAX_SEARCH_CHARS,
    PAGE_TEMPLATE,
    Direction,
    GalleryEntry,
    GalleryFilter,
    GalleryStore,
    Page,
    gallery_embed,
    normalize_search,
    page_custom_id,
    parse_direction,
)
from bot.storage import Pruner, max_bytes
from bot.store import Job

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]
NO_MENTIONS = discord.AllowedMentions.none()


def _cog(interaction: Interaction) -> GalleryCog:
    cog = cast("ImgBot", interaction.client).get_cog(GalleryCog.__cog_name__)
    assert isinstance(cog, GalleryCog)
    return cog


class GalleryPageButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=PAGE_TEMPLATE):
    """◀ / ▶ under a gallery message; everything it needs is in its custom_id."""

    def __init__(
        self,
        direction: Direction,
        anchor: int,
        user_id: int | None,
        search_id: int,
        *,
        disabled: bool = False,
    ) -> None:
        super().__init__(
            discord.ui.Button(
                label="◀ Newer" if direction == "newer" else "Older ▶",
                style=discord.ButtonStyle.secondary,
                custom_id=page_custom_id(direction, anchor, user_id, search_id),
                disabled=disabled,
            )
        )
        self.direction, self.anchor = direction, anchor
        self.user_id, self.search_id = user_id, search_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: Interaction,
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> GalleryPageButton:
        return cls(
            parse_direction(match["dir"]),
            int(match["anchor"]),
            int(match["user"]) or None,
            int(match["search"]),
        )

    async def callback(self, interaction: Interaction) -> None:
        await _cog(interaction).turn_page(
            interaction, self.direction, self.anchor, self.user_id, self.search_id
        )


class GalleryCog(commands.Cog, name="Gallery"):
    gallery = app_commands.Group(
        name="gallery", description="This server's gallery of results", guild_only=True
    )

    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot
        self.data_dir = bot.settings.data_dir
        self.entries = GalleryStore(bot.store)
        self.pruner = Pruner(
            bot.store,
            self.data_dir,
            max_bytes(bot.settings.storage_max_gb),
            on_pruned=self.entries.mark_pruned,
        )

    async def cog_load(self) -> None:
        """Results that finished just before a restart (hook never ran) join the gallery."""
        cursor = await self.bot.store.db.execute(
            "SELECT jobs.* FROM jobs LEFT JOIN gallery ON gallery.job_id = jobs.id "
            "WHERE jobs.state = 'done' AND gallery.job_id IS NULL"
        )
        for row in await cursor.fetchall():
            job = Job.from_row(row)
            await self.entries.add(job, job.finished_at or job.created_at)

    # -- commands ---------------------------------------------------------------------
    @gallery.command(name="browse", description="Browse this server's pictures, newest first")
    @app_commands.describe(
        user="Only pictures this member asked for",
        search="Only pictures whose prompt has these words",
        public="Show the gallery to the channel (default: only you)",
    )
    async def browse(
        self,
        interaction: Interaction,
        user: discord.User | None = None,
        search: app_commands.Range[str, 1, MAX_SEARCH_CHARS] | None = None,
        public: bool = False,
    ) -> None:
        guild_id = self._guild(interaction)
        words = normalize_search(search)
        filt = GalleryFilter(user.id if user else None, words)
        search_id = await self.entries.search_id(guild_id, words) if words else 0
        page = await self.entries.page(guild_id, filt)
        if page is None:
            text = f"No pictures {filt.describe()} yet." if filt.describe() else "No pictures yet."
            await interaction.response.send_message(
                f"🖼️ {text}", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        embed, files, view = self._render(page, filt, search_id)
        await interaction.response.send_message(
            embed=embed, files=files, view=view, ephemeral=not public
        )

    @gallery.command(name="remove", description="Delete one of the gallery's pictures")
    @app_commands.describe(job="The picture's job number (job #N under it)")
    async def remove(self, interaction: Interaction, job: app_commands.Range[int, 1]) -> None:
        guild_id = self._guild(interaction)
        entry = await self.entries.get(guild_id, job)
        if entry is None:
            raise UserError(f"There is no picture #{job} in this server's gallery.")
        if entry.user_id != interaction.user.id and not interaction.permissions.manage_messages:
            raise UserError(
                "Only the person who made this picture, or someone with Manage Messages, "
                "can remove it."
            )
        await interaction.response.send_message(
            f"🗑️ Removed picture #{job} from the gallery and deleted its message.", ephemeral=True
        )
        row = await self.bot.store.get_job(job)
        if row is not None:
            await self.bot.jobs.mark_deleted(row)  # runs on_deleted through the hook
        else:
            await self.on_deleted_entry(job)
        if entry.message_id:
            await self._delete_message(entry.guild_id, entry.channel_id, entry.message_id)

    # -- paging -----------------------------------------------------------------------
    async def turn_page(
        self,
        interaction: Interaction,
        direction: Direction,
        anchor: int,
        user_id: int | None,
        search_id: int,
    ) -> None:
        """Edit the gallery message in place to show the next picture that way."""
        try:
            guild_id = self._guild(interaction)
            search = await self.entries.search_text(guild_id, search_id) if search_id else None
            if search_id and search is None:
                raise UserError("This gallery is out of date; open a new one with /gallery browse.")
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        filt = GalleryFilter(user_id, search)
        page = await self.entries.page(guild_id, filt, anchor, direction)
        if page is None:
            await interaction.response.edit_message(
                content="🖼️ No pictures left here.", embed=None, attachments=[], view=None
            )
            return
        embed, files, view = self._render(page, filt, search_id)
        await interaction.response.edit_message(
            content=None, embed=embed, attachments=files, view=view
        )

    def _render(
        self, page: Page, filt: GalleryFilter, search_id: int
    ) -> tuple[discord.Embed, list[discord.File], discord.ui.View]:
        """The embed, the picture re-uploaded from DATA_DIR (never a CDN URL), the buttons."""
        entry = page.entry
        files = self._image_files(entry)
        embed = gallery_embed(
            entry, image_filename=files[0].filename if files else None, page=page, filt=filt
        )
        view = discord.ui.View(timeout=None)
        view.add_item(
            GalleryPageButton(
                "newer", entry.job_id, filt.user_id, search_id, disabled=not page.has_newer
            )
        )
        view.add_item(
            GalleryPageButton(
                "older", entry.job_id, filt.user_id, search_id, disabled=not page.has_older
            )
        )
        if entry.url:
            view.add_item(discord.ui.Button(label="Open message", url=entry.url))
        return embed, files, view

    def _image_files(self, entry: GalleryEntry) -> list[discord.File]:
        path = self.data_dir / entry.image_path
        if entry.pruned or not path.is_file():
            return []
        return [discord.File(path, filename=f"gallery-{entry.job_id}.png")]

    # -- job hooks --------------------------------------------------------------------
    async def on_finished(self, job: Job) -> None:
        """A result was delivered: into the gallery (and channel), then keep under the cap."""
        try:
            if job.state == "done":
                entry = await self.entries.add(job, job.finished_at or time.time())
                if entry is not None and entry.shared_message_id is None:
                    await self._post_to_channel(entry)
        except Exception:
            log.exception("adding job %d to the gallery failed", job.id)
        await self.pruner.run()

    async def on_deleted(self, job: Job) -> None:
        """A result was deleted: out of the gallery, its copy and its file gone too."""
        if job.output_path:
            await asyncio.to_thread((self.data_dir / job.output_path).unlink, missing_ok=True)
        await self.on_deleted_entry(job.id)

    async def on_deleted_entry(self, job_id: int) -> None:
        entry = await self.entries.remove(job_id)
        if entry is not None and entry.shared_channel_id and entry.shared_message_id:
            await self._delete_message(
                entry.guild_id, entry.shared_channel_id, entry.shared_message_id
            )

    async def gallery_channel_id(self, guild_id: int) -> int | None:
        cursor = await self.bot.store.db.execute(
            "SELECT gallery_channel_id FROM guild_settings WHERE guild_id=?", (guild_id,)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row and row[0] else None

    async def _post_to_channel(self, entry: GalleryEntry) -> None:
        channel_id = await self.gallery_channel_id(entry.guild_id)
        if not channel_id or channel_id == entry.channel_id:
            return
        guild = getattr(self.bot.get_channel(channel_id), "guild", None)
        if guild is not None and guild.id != entry.guild_id:
            log.warning("gallery channel %d is not in guild %d", channel_id, entry.guild_id)
            return
        files = self._image_files(entry)
        if not files:
            return
        view = discord.ui.View(timeout=None)
        if entry.url:
            view.add_item(discord.ui.Button(label="Open message", url=entry.url))
        channel = self.bot.get_partial_messageable(channel_id, guild_id=entry.guild_id)
        message = await channel.send(
            content=f"🖼️ New picture by <@{entry.user_id}>"
            + (f" · {entry.url}" if entry.url else ""),
            embed=gallery_embed(entry, image_filename=files[0].filename),
            file=files[0],
            view=view,
            allowed_mentions=NO_MENTIONS,
        )
        await self.entries.set_shared(entry.job_id, channel_id, message.id)

    # -- helpers ----------------------------------------------------------------------
    def _guild(self, interaction: Interaction) -> int:
        if interaction.guild_id is None:
            raise UserError("The gallery belongs to a server; use it there.")
        return interaction.guild_id

    async def _delete_message(self, guild_id: int, channel_id: int, message_id: int) -> None:
        channel = self.bot.get_partial_messageable(channel_id, guild_id=guild_id)
        try:
            await channel.get_partial_message(message_id).delete()
        except discord.NotFound:
            pass
        except discord.HTTPException as exc:
            log.warning("could not delete message %d: %s", message_id, exc)


async def setup_gallery(bot: ImgBot) -> None:
    """Register the gallery: commands, page buttons that survive restarts, job hooks."""
    cog = GalleryCog(bot)
    await bot.add_cog(cog)
    bot.add_dynamic_items(GalleryPageButton)
    bot.jobs.hooks.finished.append(cog.on_finished)
    bot.jobs.hooks.deleted.append(cog.on_deleted)
