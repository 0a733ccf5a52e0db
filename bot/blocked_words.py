"""Blocked words: a server's own list plus the operator's `BLOCKED_WORDS`, refused in prompts.

Matching is on whole words after Unicode NFKC normalisation and case folding, so `ＦＯＸ`
(full-width) and `Fox` both match a blocked `fox`, while `foxglove` does not. A blocked
entry may be several words (`red fox`): it matches those words in that order. The pure
functions here take values; `BlockedWords` reads and changes the `blocked_words` table and
is the job service's reserve hook, so every way of making a job (/img2img, variants, series,
later paths) is checked inside the transaction that would insert it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import aiosqlite

from bot.errors import UserError
from bot.store.db import Store

if TYPE_CHECKING:
    from bot.jobs.service import NewJob

log = logging.getLogger(__name__)

MAX_WORD_CHARS = 50
MAX_WORDS_PER_GUILD = 200
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """The form words are compared in: NFKC, then case-folded (NFKC again, as folding may
    produce characters that NFKC would still change)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def words_of(text: str) -> list[str]:
    """The words of a text in comparison form; punctuation and spaces separate them."""
    return _WORD.findall(normalize(text))


def normalize_entry(text: str) -> str:
    """A blocked entry as stored: its words in comparison form, one space apart.
    Raises `UserError` for an entry with no letters or digits, or one too long."""
    words = words_of(text)
    if not words:
        raise UserError("A blocked word needs at least one letter or digit.")
    entry = " ".join(words)
    if len(entry) > MAX_WORD_CHARS:
        raise UserError(f"A blocked word may be at most {MAX_WORD_CHARS} characters long.")
    return entry


def find_blocked(prompt: str, blocked: Iterable[str]) -> str | None:
    """The first blocked entry (as stored) that occurs in `prompt` as whole words, or None."""
    words = words_of(prompt)
    if not words:
        return None
    for entry in blocked:
        target = words_of(entry)
        if not target:
            continue
        n = len(target)
        if any(words[i : i + n] == target for i in range(len(words) - n + 1)):
            return " ".join(target)
    return None


def refusal_text(word: str) -> str:
    return (
        f"Your prompt contains “{word}”, a word that is not allowed here. Nothing was queued "
        "and nothing was taken from your quota; try again without it."
    )


def words_in(conn: sqlite3.Connection, guild_id: int) -> list[str]:
    """The server's blocked words (in the database thread)."""
    rows = conn.execute(
        "SELECT word FROM blocked_words WHERE guild_id=? ORDER BY word", (guild_id,)
    ).fetchall()
    return [str(r[0]) for r in rows]


class BlockedWords:
    """A server's blocked words in SQLite, and the reserve hook that refuses prompts."""

    def __init__(
        self, store: Store, operator_words: Iterable[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.operator_words = [normalize_entry(w) for w in operator_words if words_of(w)]
        self.clock = clock

    async def list(self, guild_id: int, db: aiosqlite.Connection | None = None) -> list[str]:
        return await self.store.in_thread(lambda conn: words_in(conn, guild_id), db)

    async def add(self, db: aiosqlite.Connection, guild_id: int, actor_id: int, text: str) -> str:
        """Add an entry inside the caller's (audited) transaction; returns it as stored."""
        word = normalize_entry(text)
        current = await self.list(guild_id, db)
        if word in current:
            raise UserError(f"“{word}” is already blocked in this server.")
        if len(current) >= MAX_WORDS_PER_GUILD:
            raise UserError(
                f"This server already blocks {MAX_WORDS_PER_GUILD} words; remove some first."
            )
        await db.execute(
            "INSERT INTO blocked_words (guild_id, word, added_by, added_at) VALUES (?, ?, ?, ?)",
            (guild_id, word, actor_id, self.clock()),
        )
        return word

    async def remove(self, db: aiosqlite.Connection, guild_id: int, text: str) -> str:
        word = normalize_entry(text)
        cursor = await db.execute(
            "DELETE FROM blocked_words WHERE guild_id=? AND word=?", (guild_id, word)
        )
        if cursor.rowcount == 0:
            raise UserError(f"“{word}” is not on this server's list of blocked words.")
        return word

    async def check(
        self, guild_id: int, prompt: str, db: aiosqlite.Connection | None = None
    ) -> None:
        """Raise `UserError` naming the word if `prompt` holds a blocked one."""
        self._refuse(guild_id, prompt, await self.list(guild_id, db))

    def _refuse(self, guild_id: int, prompt: str, words: list[str]) -> None:
        word = find_blocked(prompt, [*self.operator_words, *words])
        if word is not None:
            log.info("refused a prompt with a blocked word in guild %d", guild_id)
            raise UserError(refusal_text(word))

    def reserve(self, conn: sqlite3.Connection, new: NewJob, now: float) -> None:
        """`JobService.hooks.reserve` (in the database thread): the prompt only; negative
        prompts are not checked."""
        self._refuse(new.guild_id, new.prompt, words_in(conn, new.guild_id))
