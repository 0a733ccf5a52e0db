"""/gallery: every finished result of a server, browsable by the members of that server.

`/gallery browse [user] [search] [public]` shows one picture per page, newest first, with
◀ ▶ buttons; `/gallery remove job` deletes a result (its message, its gallery entry and its
copy in the gallery channel); `/gallery forget-me` deletes everything of the member in the
server after a confirmation button.

Visibility: a result made in a channel that @everyone cannot view, or an age-restricted one,
is browsable only from inside that channel (and its threads) and never mirrored. Discord
cannot run a command group by itself, so browsing is the `browse` subcommand.

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
- the gallery is by definition every public result of the server (`/gallery browse` shows
  them, and the result itself was posted publicly), so mirroring reveals nothing new, while
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
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.models import model_autocomplete
from bot.copies import delete_message, remove_copies, remove_forgotten
from bot.errors import UserError
from bot.forget import forget_member, preview
from bot.inpaint_masks import remove_with_input
from bot.store.db import Job
from bot.store.files import Pruner, max_bytes
from bot.store.gallery import (
    MAX_SEARCH_CHARS,
    Direction,
    GalleryEntry,
    GalleryFilter,
    GalleryStore,
    Page,
    normalize_search,
)
from bot.store.picture_messages import Kind, PictureMessages
from bot.ui.gallery import describe, gallery_embed
from bot.ui.gallery_buttons import ForgetButton, GalleryPageButton
from bot.ui.pictures import Picture, spoilered, upload_limit
from bot.ui.tips import lineage
from pipeline.request import structure_map_path

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

Interaction = discord.Interaction[Any]
NO_MENTIONS = discord.AllowedMentions.none()


REMOVED_PAGE_TEXT = "🗑️ The picture shown here was removed. Use /gallery browse to look again."


class GalleryCog(commands.Cog, name="Gallery"):
    gallery = app_commands.Group(
        name="gallery", description="This server's gallery of results", guild_only=True
    )
    picture_kind: Kind = "gallery"  # `bot.copies` has a public page of a removed one redrawn

    def __init__(self, bot: ImgBot) -> None:
        self.bot = bot
        self.data_dir = bot.settings.data_dir
        self.entries = GalleryStore(bot.store)
        self.shown = PictureMessages(bot.store)
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
        model="Only pictures made with this model (see /models)",
    )
    @app_commands.autocomplete(model=model_autocomplete)
    async def browse(
        self,
        interaction: Interaction,
        user: discord.User | None = None,
        search: app_commands.Range[str, 1, MAX_SEARCH_CHARS] | None = None,
        public: bool = False,
        model: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        guild_id = self._guild(interaction)
        words = normalize_search(search)
        name = self.bot.jobs.models.entry(model).name if model else None
        filt = GalleryFilter(user.id if user else None, words, _here(interaction), name)
        search_id = await self.entries.search_id(guild_id, words) if words else 0
        page = await self.entries.page(guild_id, filt)
        if page is None:
            text = f"No pictures {describe(filt)} yet." if describe(filt) else "No pictures yet."
            await interaction.response.send_message(
                f"🖼️ {text}", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        embed, files, view = await self._render(page, filt, search_id, await self._spoiler(page))
        await self._add_lineage(embed, page.entry)
        await interaction.response.send_message(
            embed=embed, files=files, view=view, ephemeral=not public
        )
        if public and files:  # a public page showing a picture follows it when removed
            message = await interaction.original_response()
            await self._record_page(interaction, message.id, page.entry.job_id)

    @gallery.command(name="remove", description="Delete one of the gallery's pictures")
    @app_commands.describe(job="The picture's job number (job #N under it)")
    async def remove(self, interaction: Interaction, job: app_commands.Range[int, 1]) -> None:
        guild_id = self._guild(interaction)
        entry = await self.entries.get(guild_id, job)
        visible = entry is not None and (
            entry.channel_public or entry.channel_id in _here(interaction)
        )
        mine = entry is not None and entry.user_id == interaction.user.id
        if entry is None or not (visible or mine):
            raise UserError(f"There is no picture #{job} in this server's gallery.")
        if not mine and not _can_manage_in(interaction, entry.channel_id):
            raise UserError(
                "Only the person who made this picture, or someone with Manage Messages in "
                "the channel where it was made, can remove it."
            )
        await interaction.response.send_message(
            f"🗑️ Removed picture #{job} from the gallery and from every message that showed "
            "it (an album or a comparison keeps its other pictures).",
            ephemeral=True,
        )
        row = await self.bot.store.get_job(job)
        if row is not None:
            # The hooks: on_deleted (file, entry, gallery-channel copy), then
            # `remove_copies` (its result message, Use/Open… copies, albums, comparisons).
            await self.bot.jobs.mark_deleted(row)
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
        model: str | None = None,
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
        filt = GalleryFilter(user_id, search, _here(interaction), model)
        page = await self.entries.page(guild_id, filt, anchor, direction)
        if page is None:
            await interaction.response.edit_message(
                content="🖼️ No pictures left here.", embed=None, attachments=[], view=None
            )
            await self._record_page(interaction, None, None)
            return
        embed, files, view = await self._render(page, filt, search_id, await self._spoiler(page))
        await self._add_lineage(embed, page.entry)
        await interaction.response.edit_message(
            content=None, embed=embed, attachments=files, view=view
        )
        await self._record_page(interaction, None, page.entry.job_id if files else None)

    async def _record_page(
        self, interaction: Interaction, message_id: int | None, job_id: int | None
    ) -> None:
        """Remember which picture a public gallery message shows now (none: forget it).
        Ephemeral pages are left out: only their opener sees them, and only for 15 min."""
        message = interaction.message
        if message_id is None:
            if message is None or message.flags.ephemeral:
                return
            message_id = message.id
            await self.shown.forget_message(message_id)
        if job_id is not None and interaction.guild_id is not None:
            await self.shown.record(
                interaction.guild_id, interaction.channel_id or 0, message_id, [job_id], "gallery"
            )

    async def rerender(self, message_id: int) -> None:
        """A public page showing a removed picture says so; paging starts anew."""
        place = await self.shown.place(message_id)
        if place is None:
            return
        channel = self.bot.get_partial_messageable(place[1], guild_id=place[0])
        try:
            await channel.get_partial_message(message_id).edit(
                content=REMOVED_PAGE_TEXT, embed=None, attachments=[], view=None
            )
        except discord.HTTPException as exc:
            log.info("could not update gallery page %d (%s)", message_id, exc)
        await self.shown.forget_message(message_id)

    async def _add_lineage(self, embed: discord.Embed, entry: GalleryEntry) -> None:
        """`from #N` for a picture made from another (refine, variant, compare…)."""
        job = await self.bot.store.get_job(entry.job_id)
        if job is not None and (source := lineage(job)):
            embed.add_field(name="From", value=source, inline=False)

    async def _spoiler(self, page: Page) -> bool:
        """The one spoiler rule (`bot.ui.pictures`), from the picture's job."""
        job = await self.bot.store.get_job(page.entry.job_id)
        return job is not None and spoilered(job)

    async def _render(
        self, page: Page, filt: GalleryFilter, search_id: int, spoiler: bool = False
    ) -> tuple[discord.Embed, list[discord.File], discord.ui.View]:
        """The embed, the picture re-uploaded from DATA_DIR (never a CDN URL), the buttons.
        A spoiler is attached below the embed, not shown in it (an embed image is not
        blurred)."""
        entry = page.entry
        files = await self._image_files(entry, spoiler=spoiler)
        embed = gallery_embed(
            entry,
            image_filename=files[0].filename if files else None,
            page=page,
            filt=filt,
            spoiler=spoiler and bool(files),
        )
        view = discord.ui.View(timeout=None)
        view.add_item(
            GalleryPageButton(
                "newer",
                entry.job_id,
                filt.user_id,
                search_id,
                disabled=not page.has_newer,
                model=filt.model,
            )
        )
        view.add_item(
            GalleryPageButton(
                "older",
                entry.job_id,
                filt.user_id,
                search_id,
                disabled=not page.has_older,
                model=filt.model,
            )
        )
        if entry.url:
            view.add_item(discord.ui.Button(label="Open message", url=entry.url))
        return embed, files, view

    async def _image_files(
        self, entry: GalleryEntry, *, spoiler: bool = False
    ) -> list[discord.File]:
        """The picture as every result goes out (`bot.ui.pictures`: PNG, else lossless
        WebP, else JPEG 95 under the server's upload limit)."""
        path = self.data_dir / entry.image_path
        if entry.pruned or not path.is_file():
            return []
        limit = upload_limit(guild=self.bot.get_guild(entry.guild_id))
        name = f"gallery-{entry.job_id}.png"
        picture = await Picture.prepare(path, name, spoiler=spoiler, limit=limit)
        return [picture.file()]

    # -- job hooks --------------------------------------------------------------------
    async def on_finished(self, job: Job) -> None:
        """A result was delivered: into the gallery (and channel), then keep under the cap."""
        try:
            if job.state == "done" and job.kind != "tile":  # a tile is part of an upscale
                entry = await self.entries.add(job, job.finished_at or time.time())
                if entry is not None and entry.shared_message_id is None:
                    await self._post_to_channel(entry)
        except Exception:
            log.exception("adding job %d to the gallery failed", job.id)
        await self.pruner.run()

    async def on_deleted(self, job: Job) -> None:
        """A result was deleted: out of the gallery, its copy, its file and the member's
        upload gone too (the upload stays while another job that is not deleted uses it:
        a variant someone made from it, or one still waiting)."""
        if job.output_path:
            await asyncio.to_thread((self.data_dir / job.output_path).unlink, missing_ok=True)
            thumb = self.data_dir / structure_map_path(job.output_path)  # a structure map's
            await asyncio.to_thread(thumb.unlink, missing_ok=True)
        cursor = await self.bot.store.db.execute(
            "SELECT count(*) FROM jobs WHERE input_path=? AND id!=? AND state!='deleted'",
            (job.input_path, job.id),
        )
        row = await cursor.fetchone()
        if job.input_path and row is not None and row[0] == 0:  # /imagine's has none
            await asyncio.to_thread((self.data_dir / job.input_path).unlink, missing_ok=True)
            await asyncio.to_thread(remove_with_input, self.data_dir, job.input_path)
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
        """Mirror a public result; a copy whose entry went while it uploaded is deleted."""
        channel_id = await self.gallery_channel_id(entry.guild_id)
        if not channel_id or channel_id == entry.channel_id or not entry.channel_public:
            return
        guild = getattr(self.bot.get_channel(channel_id), "guild", None)
        if guild is not None and guild.id != entry.guild_id:
            log.warning("gallery channel %d is not in guild %d", channel_id, entry.guild_id)
            return
        files = await self._image_files(entry)
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
        if not await self.entries.set_shared(entry.job_id, channel_id, message.id):
            log.info("job %d was deleted while its copy uploaded; deleting the copy", entry.job_id)
            await self._delete_message(entry.guild_id, channel_id, message.id)

    # -- forget-me --------------------------------------------------------------------
    @gallery.command(
        name="forget-me", description="Delete all your pictures and uploads in this server"
    )
    async def forget_me(self, interaction: Interaction) -> None:
        guild_id = self._guild(interaction)
        jobs, entries = await preview(self.bot.store, guild_id, interaction.user.id)
        if not jobs:
            await interaction.response.send_message(
                "🧹 There is nothing of yours to delete in this server.", ephemeral=True
            )
            return
        view = discord.ui.View(timeout=None)
        view.add_item(ForgetButton(guild_id, interaction.user.id))
        await interaction.response.send_message(
            f"⚠️ This deletes every picture you made in this server ({entries} in the "
            f"gallery, {jobs} jobs in all), the images you uploaded, their messages and "
            "their gallery-channel copies. It cannot be undone. Images made in the last "
            "24 hours still count toward your quota.",
            view=view,
            ephemeral=True,
        )

    async def confirm_forget(self, interaction: Interaction, guild_id: int, user_id: int) -> None:
        if interaction.user.id != user_id or interaction.guild_id != guild_id:
            await interaction.response.send_message(
                "❌ Only the member who asked can confirm this.", ephemeral=True
            )
            return
        try:
            await preview(self.bot.store, guild_id, user_id)
        except UserError as exc:
            await interaction.response.send_message(f"❌ {exc}", ephemeral=True)
            return
        await interaction.response.edit_message(content="🧹 Deleting…", view=None)
        try:
            gone = await forget_member(self.bot.store, guild_id, user_id)
        except UserError as exc:
            await interaction.edit_original_response(content=f"❌ {exc}")
            return
        await remove_forgotten(self.bot, guild_id, gone)
        await interaction.edit_original_response(content=gone.summary())

    # -- helpers ----------------------------------------------------------------------
    def _guild(self, interaction: Interaction) -> int:
        if interaction.guild_id is None:
            raise UserError("The gallery belongs to a server; use it there.")
        return interaction.guild_id

    async def _delete_message(self, guild_id: int, channel_id: int, message_id: int) -> bool:
        """True if this call deleted it; gone already or undeletable: False."""
        return await delete_message(self.bot, guild_id, channel_id, message_id)


def _here(interaction: Interaction) -> tuple[int, ...]:
    """The viewer's channel ids: the channel, and a thread's parent (threads follow it)."""
    ids = [interaction.channel_id] if interaction.channel_id else []
    parent = getattr(interaction.channel, "parent_id", None)
    if parent:
        ids.append(parent)
    return tuple(ids)


def _can_manage_in(interaction: Interaction, channel_id: int) -> bool:
    """Manage Messages in the result's own channel, from the cache; a channel the bot no
    longer knows: nobody but the requester."""
    guild = interaction.guild
    member = interaction.user
    if guild is None or not isinstance(member, discord.Member):
        return False
    channel = guild.get_channel_or_thread(channel_id)
    if channel is None:
        return False
    return channel.permissions_for(member).manage_messages


async def setup_gallery(bot: ImgBot) -> None:
    """Register the gallery: commands, page buttons that survive restarts, job hooks."""
    cog = GalleryCog(bot)
    await bot.add_cog(cog)
    bot.add_dynamic_items(GalleryPageButton, ForgetButton)
    bot.jobs.hooks.finished.append(cog.on_finished)
    bot.jobs.hooks.deleted.append(cog.on_deleted)
    bot.jobs.hooks.deleted.append(lambda job: remove_copies(bot, job))
