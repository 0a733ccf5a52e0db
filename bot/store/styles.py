"""Saved styles in SQLite (table `styles`, migration v5), so they survive a restart.

A member's styles belong to them in one server; a server's styles to the server (owner 0).
Limits are checked inside the write transaction, so two saves at once cannot pass them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from bot.store.db import Store
from bot.styles import Composed, Scope, Style, apply_style, check_room, resolve

log = logging.getLogger(__name__)

SERVER_OWNER = 0


def _owner(scope: Scope, user_id: int) -> int:
    return user_id if scope == "mine" else SERVER_OWNER


def _style(row: sqlite3.Row) -> Style:
    return Style(
        name=row["name"],
        template=row["template"],
        negative_prompt=row["negative_prompt"],
        strength=row["strength"],
        scope="server" if row["owner_id"] == SERVER_OWNER else "mine",
        loras=row["loras"],
        model=row["model"],
        structure=row["structure"],
    )


class StyleStore:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def in_scope(self, guild_id: int, scope: Scope, user_id: int = 0) -> list[Style]:
        """One scope's styles, by name."""
        cursor = await self.store.db.execute(
            "SELECT * FROM styles WHERE guild_id=? AND owner_id=? ORDER BY name",
            (guild_id, _owner(scope, user_id)),
        )
        return [_style(r) for r in await cursor.fetchall()]

    async def both(self, guild_id: int, user_id: int) -> tuple[list[Style], list[Style]]:
        """(the member's styles, the server's styles)."""
        return await self.in_scope(guild_id, "mine", user_id), await self.in_scope(
            guild_id, "server"
        )

    async def resolve(self, guild_id: int, user_id: int, name: str) -> Style | None:
        """The style a member means by `name`: theirs, then the server's, then built-in."""
        mine, server = await self.both(guild_id, user_id)
        return resolve(name, mine, server)

    async def apply(
        self,
        guild_id: int,
        user_id: int,
        name: str | None,
        prompt: str,
        negative_prompt: str | None,
        strength: float | None,
    ) -> Composed | None:
        """Compose a job's prompt with the named style (or none); None: no such style.

        Raises `UserError` when the composed prompt would be too long."""
        style = None
        if name:
            style = await self.resolve(guild_id, user_id, name)
            if style is None:
                return None
        return apply_style(style, prompt, negative_prompt, strength)

    async def save(self, guild_id: int, user_id: int, style: Style) -> bool:
        """Insert or replace a style of `style.scope`; True if it replaced one.

        Raises `UserError` when a new style would pass the scope's limit."""
        owner = _owner(style.scope, user_id)
        now = self.clock()
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "SELECT name FROM styles WHERE guild_id=? AND owner_id=?", (guild_id, owner)
            )
            names = {r[0] for r in await cursor.fetchall()}
            replaced = style.name in names
            if not replaced:
                check_room(len(names), style.scope)
            await db.execute(
                """
                INSERT INTO styles (guild_id, owner_id, name, template, negative_prompt,
                    strength, loras, model, structure, created_by, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (guild_id, owner_id, name) DO UPDATE SET
                    template=excluded.template, negative_prompt=excluded.negative_prompt,
                    strength=excluded.strength, loras=excluded.loras, model=excluded.model,
                    structure=excluded.structure,
                    created_by=excluded.created_by, updated_at=excluded.updated_at
                """,
                (
                    guild_id, owner, style.name, style.template, style.negative_prompt,
                    style.strength, style.loras, style.model, style.structure, user_id, now, now,
                ),
            )  # fmt: skip
        log.info("style %s saved (guild %d, owner %d)", style.name, guild_id, owner)
        return replaced

    async def delete(self, guild_id: int, scope: Scope, user_id: int, name: str) -> bool:
        """Delete one style; False if there was none of that name in that scope."""
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM styles WHERE guild_id=? AND owner_id=? AND name=?",
                (guild_id, _owner(scope, user_id), name),
            )
            return cursor.rowcount > 0
