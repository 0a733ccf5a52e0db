"""Styles in SQLite: scopes, replace vs. new, limits inside the transaction, reopen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.errors import UserError
from bot.store.db import Store
from bot.store.styles import StyleStore
from bot.styles import BUILTINS, MAX_PER_MEMBER, MAX_PER_SERVER, Style

GUILD, OTHER_GUILD, ALICE, BOB = 10, 20, 1, 2


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


def mine(name: str, template: str = "{prompt}, mine", **kw: object) -> Style:
    return Style(name, template, scope="mine", **kw)  # type: ignore[arg-type]


def server(name: str, template: str = "{prompt}, server", **kw: object) -> Style:
    return Style(name, template, scope="server", **kw)  # type: ignore[arg-type]


async def test_scopes_are_separate_and_ordered(store: Store) -> None:
    styles = StyleStore(store)
    assert (
        await styles.save(GUILD, ALICE, mine("winter", negative_prompt="x", strength=0.3)) is False
    )
    await styles.save(GUILD, ALICE, mine("autumn"))
    await styles.save(GUILD, BOB, mine("bobs"))
    await styles.save(GUILD, ALICE, server("winter"))
    await styles.save(OTHER_GUILD, ALICE, mine("elsewhere"))

    a_mine, a_server = await styles.both(GUILD, ALICE)
    assert [s.name for s in a_mine] == ["autumn", "winter"]
    assert a_mine[1] == mine("winter", negative_prompt="x", strength=0.3)
    assert a_server == [server("winter")]
    assert [s.name for s in await styles.in_scope(GUILD, "mine", BOB)] == ["bobs"]
    assert [s.name for s in await styles.in_scope(OTHER_GUILD, "mine", ALICE)] == ["elsewhere"]

    # lookup order: the member's, the server's, the built-ins
    assert (await styles.resolve(GUILD, ALICE, "winter")) == a_mine[1]
    assert (await styles.resolve(GUILD, BOB, "winter")) == server("winter")
    assert (await styles.resolve(OTHER_GUILD, BOB, "winter")) == BUILTINS["winter"]
    assert await styles.resolve(GUILD, BOB, "autumn") is None  # Alice's, not Bob's


async def test_save_replaces_by_name(store: Store) -> None:
    styles = StyleStore(store)
    await styles.save(GUILD, ALICE, mine("oily", "{prompt}, oil"))
    assert await styles.save(GUILD, ALICE, mine("oily", "{prompt}, more oil", strength=0.6))
    assert await styles.in_scope(GUILD, "mine", ALICE) == [
        mine("oily", "{prompt}, more oil", strength=0.6)
    ]


@pytest.mark.parametrize(
    ("make", "limit"), [(mine, MAX_PER_MEMBER), (server, MAX_PER_SERVER)], ids=["member", "server"]
)
async def test_limits_refuse_new_but_allow_replacing(
    store: Store, make: object, limit: int
) -> None:
    styles = StyleStore(store)
    for i in range(limit):
        await styles.save(GUILD, ALICE, make(f"s{i:02d}"))  # type: ignore[operator]
    with pytest.raises(UserError, match=f"most allowed is {limit}"):
        await styles.save(GUILD, ALICE, make("one-more"))  # type: ignore[operator]
    assert await styles.save(GUILD, ALICE, make("s00", "{prompt}, new"))  # type: ignore[operator]
    scope = "mine" if make is mine else "server"
    assert len(await styles.in_scope(GUILD, scope, ALICE)) == limit  # type: ignore[arg-type]
    # another member (or server) has room of their own
    await styles.save(OTHER_GUILD, ALICE, make("fresh"))  # type: ignore[operator]


async def test_delete_only_in_its_scope(store: Store) -> None:
    styles = StyleStore(store)
    await styles.save(GUILD, ALICE, mine("winter"))
    await styles.save(GUILD, ALICE, server("winter"))
    assert await styles.delete(GUILD, "mine", BOB, "winter") is False
    assert await styles.delete(GUILD, "mine", ALICE, "winter") is True
    assert (await styles.resolve(GUILD, ALICE, "winter")) == server("winter")
    assert await styles.delete(GUILD, "server", BOB, "winter") is True
    assert (await styles.resolve(GUILD, ALICE, "winter")) == BUILTINS["winter"]


async def test_apply_unknown_and_known(store: Store) -> None:
    styles = StyleStore(store)
    await styles.save(
        GUILD, ALICE, mine("oily", "{prompt}, oil painting", negative_prompt="blurry")
    )
    assert await styles.apply(GUILD, ALICE, "nope", "a cat", None, None) is None
    plain = await styles.apply(GUILD, ALICE, None, "a cat", "text", None)
    assert plain is not None and (plain.prompt, plain.negative_prompt, plain.style) == (
        "a cat",
        "text",
        None,
    )
    got = await styles.apply(GUILD, ALICE, "oily", "a cat", "text", 0.4)
    assert got is not None
    assert (got.prompt, got.negative_prompt, got.strength, got.style) == (
        "a cat, oil painting",
        "text, blurry",
        0.4,
        "oily",
    )


async def test_styles_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    first = await Store.open(path)
    await StyleStore(first).save(GUILD, ALICE, mine("kept", strength=0.45, loras="<lora:ink:1>"))
    await first.close()
    second = await Store.open(path)
    try:
        assert await StyleStore(second).in_scope(GUILD, "mine", ALICE) == [
            mine("kept", strength=0.45, loras="<lora:ink:1>")
        ]
        got = await StyleStore(second).apply(GUILD, ALICE, "kept", "a cat", None, None)
        assert got is not None and got.loras == "<lora:ink:1>"
    finally:
        await second.close()


async def test_a_style_keeps_its_model_loras_and_structure(store: Store) -> None:
    from bot.styles import apply_style, structure_for

    styles = StyleStore(store)
    saved = mine("sketchy", loras="<lora:ink:0.5>", model="anime", structure="lines")
    await styles.save(GUILD, ALICE, saved)
    found = await styles.resolve(GUILD, ALICE, "sketchy")
    assert found == saved
    composed = apply_style(found, "a castle", None, None)
    assert (composed.structure, composed.loras) == ("lines", "<lora:ink:0.5>")
    assert structure_for(None, composed, ("lines",)) == "lines"
    assert structure_for("off", composed, ("lines",)) == "off"  # the member's choice wins
    assert structure_for(None, composed, ("edges",)) is None  # not served: runs without


def test_a_style_structure_the_model_lacks_is_skipped_and_the_result_says_so() -> None:
    from bot.store.db import Job
    from bot.styles import apply_style, structure_skipped
    from bot.ui.render import result_embed

    composed = apply_style(BUILTINS["concept-art"], "a castle", None, None)
    assert structure_skipped(None, composed, ("edges",)) == "lines"
    assert structure_skipped(None, composed, ("lines",)) is None  # it runs with it
    assert structure_skipped("off", composed, ()) is None  # the member chose
    assert structure_skipped(None, composed, None) is None  # no worker ready yet
    job = Job(
        1, 2, 3, 4, "new", None, "a castle", None, 0.7, 5, 20, 7.5, "in.png", 64, 64,
        "out.png", "done", 1, None, 20, 20, 1.0, "default", None, None, None, None, None,
        None, None, 0.0, None, None, style="concept-art", structure_skipped="lines",
    )  # fmt: skip
    fields = {f.name: f.value for f in result_embed(job).fields}
    assert fields["Structure"] == "none (no lines here)"
