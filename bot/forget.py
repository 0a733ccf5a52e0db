"""`/gallery forget-me`: a member's pictures, inputs, job rows and gallery entries, gone.

Everything of the member in one server is deleted in one write transaction, so a half
forgotten member never exists. Their quota units are copied into `usage_kept` first, so
forgetting never resets a budget. Other members' rows that point at the member's jobs
(`jobs.parent_id` of a variant someone else made from their result) are unlinked first, and
an input another member's live job still uses is kept. Files and Discord messages are
removed after the commit by the caller, from the lists this returns: every public message
showing one of the member's pictures (`picture_messages`: Use and Open… copies, anyone's
comparison made from their result) is deleted, or re-rendered without it when it is
another member's album or comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bot.errors import UserError
from bot.store.db import ACTIVE_STATES, Store
from bot.store.picture_messages import Kind, PictureMessages

log = logging.getLogger(__name__)


@dataclass
class Forgotten:
    """What one forget-me removed (or, from `preview`, would remove)."""

    jobs: int = 0
    pictures: list[str] = field(default_factory=list)  # output files, relative to DATA_DIR
    inputs: list[str] = field(default_factory=list)  # uploaded inputs no one else uses
    gallery: int = 0
    messages: list[tuple[int, int]] = field(default_factory=list)  # (channel, message)
    copies: list[tuple[int, int]] = field(default_factory=list)  # gallery-channel copies
    redraw: list[tuple[Kind, int]] = field(default_factory=list)  # others' shared messages
    kept_units: int = 0

    def summary(self) -> str:
        if not self.jobs:
            return "There was nothing of yours to delete in this server."
        parts = [
            _count(len(self.pictures), "picture"),
            _count(len(self.inputs), "uploaded image"),
            _count(self.jobs, "job record"),
            _count(self.gallery, "gallery entry", "gallery entries"),
            _count(len(self.messages), "result message"),
            _count(len(self.copies), "gallery-channel copy", "gallery-channel copies"),
        ]
        return (
            f"🧹 Deleted {', '.join(parts[:-1])} and {parts[-1]}. Images you made in the last "
            "24 hours still count toward your quota."
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _in(values: list[int]) -> str:
    return ", ".join("?" for _ in values)


async def _check_idle(store: Store, guild_id: int, user_id: int) -> None:
    marks = _in(list(ACTIVE_STATES))
    cursor = await store.db.execute(
        f"SELECT count(*) FROM jobs WHERE guild_id=? AND user_id=? AND state IN ({marks})",
        (guild_id, user_id, *ACTIVE_STATES),
    )
    row = await cursor.fetchone()
    if row and row[0]:
        raise UserError(
            "You have images waiting or being made. Cancel them or wait until they finish, "
            "then use /gallery forget-me again."
        )


async def preview(store: Store, guild_id: int, user_id: int) -> tuple[int, int]:
    """(jobs, gallery entries) forget-me would delete; refuses while a job is active."""
    await _check_idle(store, guild_id, user_id)
    jobs = await (
        await store.db.execute(
            "SELECT count(*) FROM jobs WHERE guild_id=? AND user_id=?", (guild_id, user_id)
        )
    ).fetchone()
    entries = await (
        await store.db.execute(
            "SELECT count(*) FROM gallery WHERE guild_id=? AND user_id=?", (guild_id, user_id)
        )
    ).fetchone()
    return int(jobs[0]) if jobs else 0, int(entries[0]) if entries else 0


async def forget_member(store: Store, guild_id: int, user_id: int) -> Forgotten:
    """Delete the member's rows in this server (one transaction); return what to remove.
    The caller removes the files and messages and may narrow the lists to what existed."""
    await _check_idle(store, guild_id, user_id)
    out = Forgotten()
    member = (guild_id, user_id)
    async with store.transaction() as db:
        rows = await (
            await db.execute("SELECT * FROM jobs WHERE guild_id=? AND user_id=?", member)
        ).fetchall()
        if any(r["state"] in ACTIVE_STATES for r in rows):  # queued since the check
            raise UserError("You have images waiting or being made; try again once they end.")
        ids = [int(r["id"]) for r in rows]
        out.jobs = len(ids)
        if not ids:
            return out
        cursor = await db.execute(
            "INSERT INTO usage_kept (guild_id, user_id, created_at, counted) "
            "SELECT guild_id, user_id, created_at, counted FROM jobs "
            "WHERE guild_id=? AND user_id=? AND counted=1",
            member,
        )
        out.kept_units = cursor.rowcount
        # Other members' variants of this member's results: keep them, unlinked.
        await db.execute(
            f"UPDATE jobs SET parent_id=NULL WHERE parent_id IN ({_in(ids)}) "
            "AND NOT (guild_id=? AND user_id=?)",
            (*ids, *member),
        )
        entries = await (
            await db.execute(
                f"SELECT job_id, removed, shared_channel_id, shared_message_id FROM gallery "
                f"WHERE job_id IN ({_in(ids)})",
                ids,
            )
        ).fetchall()
        out.gallery = sum(1 for e in entries if not e["removed"])
        out.copies = [
            (int(e["shared_channel_id"]), int(e["shared_message_id"]))
            for e in entries
            if e["shared_channel_id"] and e["shared_message_id"]
        ]
        await db.execute(f"DELETE FROM gallery WHERE job_id IN ({_in(ids)})", ids)
        await db.execute(f"DELETE FROM series_items WHERE job_id IN ({_in(ids)})", ids)
        series = await (
            await db.execute(
                "SELECT id, channel_id, message_id FROM series WHERE guild_id=? AND user_id=?",
                member,
            )
        ).fetchall()
        for s in series:
            await db.execute("DELETE FROM series_items WHERE series_id=?", (s["id"],))
            if s["message_id"]:
                out.messages.append((int(s["channel_id"]), int(s["message_id"])))
        await db.execute("DELETE FROM series WHERE guild_id=? AND user_id=?", member)
        # Their upscales: the pictures they enlarged and the progress messages go too.
        upscales = await (
            await db.execute(
                "SELECT channel_id, message_id, source_path FROM upscales "
                "WHERE guild_id=? AND user_id=?",
                member,
            )
        ).fetchall()
        for u in upscales:
            if u["message_id"] and (u["channel_id"], u["message_id"]) not in out.messages:
                out.messages.append((int(u["channel_id"]), int(u["message_id"])))
        await db.execute(
            "DELETE FROM upscale_tiles WHERE upscale_id IN "
            "(SELECT id FROM upscales WHERE guild_id=? AND user_id=?)",
            member,
        )
        await db.execute("DELETE FROM upscales WHERE guild_id=? AND user_id=?", member)
        await db.execute("DELETE FROM jobs WHERE guild_id=? AND user_id=?", member)
        # Inputs still used by someone else's job that is not deleted stay.
        used = {
            str(r[0])
            for r in await (
                await db.execute("SELECT DISTINCT input_path FROM jobs WHERE state != 'deleted'")
            ).fetchall()
        }
        sources = dict.fromkeys(str(u["source_path"]) for u in upscales)  # Reroll shares one
        out.inputs += [path for path in sources if path not in used | set(out.inputs)]
        seen_messages: set[tuple[int, int]] = set(out.messages)
        for r in rows:
            if r["output_path"] and r["output_path"] not in out.pictures:
                out.pictures.append(r["output_path"])
            if r["input_path"] and r["input_path"] not in used | set(out.inputs):
                out.inputs.append(r["input_path"])
            for column in ("result_message_id", "status_message_id"):
                if r[column] and (r["channel_id"], r[column]) not in seen_messages:
                    seen_messages.add((int(r["channel_id"]), int(r[column])))
                    out.messages.append((int(r["channel_id"]), int(r[column])))
        # Messages elsewhere showing their pictures: copies go, others' albums and
        # comparisons are drawn again without them (their own messages go above).
        shown = PictureMessages(store)
        for m in await shown.of_jobs_in(db, ids):
            where = (m.channel_id, m.message_id)
            if where in seen_messages:
                continue
            if m.kind == "single":
                seen_messages.add(where)
                out.messages.append(where)
            elif (m.kind, m.message_id) not in out.redraw:
                out.redraw.append((m.kind, m.message_id))
        await shown.forget_in(db, ids)
    log.info(
        "forgot member %d in guild %d: %d jobs, %d units kept", user_id, guild_id, out.jobs,
        out.kept_units,
    )  # fmt: skip
    return out
