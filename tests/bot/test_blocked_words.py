"""Blocked words: whole words, any case, after NFKC and case folding; the store and the
reserve hook refuse a prompt inside the job's transaction, so nothing is inserted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.blocked_words import (
    BlockedWords,
    find_blocked,
    normalize,
    normalize_entry,
    refusal_text,
    words_of,
)
from bot.errors import UserError
from bot.jobs.service import NewJob
from bot.store.db import Store

GUILD, OTHER_GUILD, ADMIN = 10, 20, 99


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fox", "fox"),
        ("ＦＯＸ", "fox"),  # full-width letters: NFKC
        ("Straße", "strasse"),  # case folding, not lower()
        ("ﬁre", "fire"),  # the fi ligature
        ("Ⅻ", "xii"),  # a Roman numeral character
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("prompt", "blocked", "found"),
    [
        ("a red fox", ["fox"], "fox"),
        ("a red FOX!", ["fox"], "fox"),
        ("a red ＦＯＸ", ["fox"], "fox"),
        ("fox, at dawn", ["FOX"], "fox"),
        ("foxglove in a vase", ["fox"], None),  # whole words only
        ("a firefox logo", ["fox"], None),
        ("STRASSE at night", ["straße"], "strasse"),
        ("a red fox", ["red fox"], "red fox"),  # several words, in order
        ("a fox, red", ["red fox"], None),
        ("", ["fox"], None),
        ("a red fox", [], None),
        ("a red fox", ["!!"], None),  # an entry without words never matches
        ("a cat and a dog", ["bird", "dog"], "dog"),
    ],
)
def test_find_blocked(prompt: str, blocked: list[str], found: str | None) -> None:
    assert find_blocked(prompt, blocked) == found


def test_words_of_splits_on_punctuation() -> None:
    assert words_of("Hello, wörld—again!") == ["hello", "wörld", "again"]


@pytest.mark.parametrize("bad", ["", "   ", "!!!", "x" * 60])
def test_normalize_entry_refuses_empty_or_long(bad: str) -> None:
    with pytest.raises(UserError):
        normalize_entry(bad)


def test_refusal_names_the_word_and_says_nothing_was_spent() -> None:
    text = refusal_text("fox")
    assert "“fox”" in text and "quota" in text and "Nothing was queued" in text


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield store
    await store.close()


def new_job(prompt: str, negative: str | None = None, guild: int = GUILD) -> NewJob:
    return NewJob(
        guild_id=guild, channel_id=1, user_id=5, prompt=prompt, negative_prompt=negative,
        strength=0.5, steps=4, guidance=7.5, input_path="inputs/x.png", input_width=64,
        input_height=64,
    )  # fmt: skip


async def test_store_add_remove_list_per_guild(store: Store) -> None:
    words = BlockedWords(store, [], clock=lambda: 1.0)
    async with store.transaction() as db:
        assert await words.add(db, GUILD, ADMIN, "  Ｆox ") == "fox"
        assert await words.add(db, GUILD, ADMIN, "Red  Cat") == "red cat"
    assert await words.list(GUILD) == ["fox", "red cat"]
    assert await words.list(OTHER_GUILD) == []
    with pytest.raises(UserError, match="already blocked"):
        async with store.transaction() as db:
            await words.add(db, GUILD, ADMIN, "FOX")
    async with store.transaction() as db:
        assert await words.remove(db, GUILD, "RED cat") == "red cat"
    with pytest.raises(UserError, match="not on"):
        async with store.transaction() as db:
            await words.remove(db, GUILD, "red cat")
    assert await words.list(GUILD) == ["fox"]


async def test_reserve_refuses_inside_the_transaction(store: Store) -> None:
    words = BlockedWords(store, ["Dragon"])
    async with store.transaction() as db:
        await words.add(db, GUILD, ADMIN, "fox")

    async def submit(new: NewJob) -> None:
        """What JobService.submit does: hooks, then the insert, in one transaction."""
        async with store.transaction() as db:
            await store.in_thread(lambda conn: words.reserve(conn, new, 0.0), db)
            await store.insert_job(
                db, guild_id=new.guild_id, channel_id=1, user_id=5, prompt=new.prompt,
                strength=0.5, seed=1, steps=4, guidance=7.5, input_path="inputs/x.png",
                input_width=64, input_height=64,
            )  # fmt: skip

    with pytest.raises(UserError, match="“fox”"):
        await submit(new_job("a sly FOX"))
    with pytest.raises(UserError, match="“dragon”"):  # the operator's list, on every server
        await submit(new_job("a dragon", guild=OTHER_GUILD))
    await submit(new_job("a cat", negative="fox"))  # negative prompts are not checked
    await submit(new_job("a fox", guild=OTHER_GUILD))  # another server's list
    rows = await (await store.db.execute("SELECT prompt FROM jobs ORDER BY id")).fetchall()
    assert [r[0] for r in rows] == ["a cat", "a fox"]
