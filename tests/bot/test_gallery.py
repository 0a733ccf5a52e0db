"""Gallery queries: newest first, anchored paging, filters, removal, and no server ever
seeing another's pictures."""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.db import Job, Store
from bot.store.gallery import (
    GalleryFilter,
    GalleryStore,
    message_url,
    normalize_search,
    search_words,
)
from bot.ui.gallery import (
    CUSTOM_ID_LIMIT,
    PAGE_TEMPLATE,
    describe,
    gallery_embed,
    page_custom_id,
    parse_direction,
)

GUILD_A, GUILD_B = 111, 222
ALICE, BOB = 1001, 1002
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "v1.sqlite3"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield store
    await store.close()


async def make_done_job(
    store: Store,
    *,
    guild_id: int = GUILD_A,
    user_id: int = ALICE,
    prompt: str = "a red fox",
    finished_at: float = 1000.0,
    negative_prompt: str | None = None,
    model: str | None = None,
) -> Job:
    async with store.transaction() as db:
        job_id = await store.insert_job(
            db,
            guild_id=guild_id, channel_id=guild_id + 1, user_id=user_id, prompt=prompt,
            negative_prompt=negative_prompt, strength=0.5, seed=42, steps=20, guidance=7.5,
            input_path="inputs/in.png", input_width=512, input_height=512, created_at=1.0,
            model=model,
        )  # fmt: skip
        await store.update_job_in(
            db,
            job_id,
            state="done",
            output_path=f"outputs/{job_id}.png",
            finished_at=finished_at,
            result_message_id=9000 + job_id,
        )
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def fill(gallery: GalleryStore, store: Store, n: int, **kwargs: object) -> list[Job]:
    jobs = []
    for i in range(n):
        job = await make_done_job(store, finished_at=1000.0 + i, **kwargs)  # type: ignore[arg-type]
        await gallery.add(job, job.finished_at or 0)
        jobs.append(job)
    return jobs


# -- pure helpers -------------------------------------------------------------------------
def test_search_words_fold_dedupe_and_cap() -> None:
    assert search_words("  Red FOX red  ") == ["red", "fox"]
    assert search_words("STRASSE Straße") == ["strasse"]  # casefold: ß == ss
    assert search_words(None) == []
    assert len(search_words(" ".join(f"w{i}" for i in range(20)))) == 5
    assert normalize_search("  Fox  red ") == "fox red"
    assert normalize_search("   ") is None


def test_custom_id_round_trip_and_limit() -> None:
    big = 2**63 - 1
    custom_id = page_custom_id("older", big, big, big)
    assert len(custom_id) <= CUSTOM_ID_LIMIT
    match = re.fullmatch(PAGE_TEMPLATE, custom_id)
    assert match is not None
    assert parse_direction(match["dir"]) == "older"
    assert int(match["anchor"]) == big and int(match["user"]) == big
    match = re.fullmatch(PAGE_TEMPLATE, page_custom_id("newer", 5, None, 0))
    assert match is not None and parse_direction(match["dir"]) == "newer"
    assert match["user"] == "0" and match["search"] == "0"
    # the job buttons' ids are not taken for gallery ones
    assert re.fullmatch(PAGE_TEMPLATE, "i2i:d:5") is None


def test_message_url() -> None:
    assert message_url(1, 2, 3) == "https://discord.com/channels/1/2/3"


def test_filter_description() -> None:
    assert describe(GalleryFilter()) == ""
    text = describe(GalleryFilter(ALICE, "fox"))
    assert f"<@{ALICE}>" in text and "fox" in text


# -- store queries ------------------------------------------------------------------------
async def test_add_is_idempotent_and_records_the_facts(store: Store) -> None:
    gallery = GalleryStore(store)
    job = await make_done_job(store, negative_prompt="blur")
    entry = await gallery.add(job, 1234.0)
    again = await gallery.add(job, 9999.0)
    assert entry is not None and again == entry
    assert entry.created_at == 1234.0 and entry.image_path == job.output_path
    assert (entry.prompt, entry.negative_prompt, entry.seed) == ("a red fox", "blur", 42)
    assert entry.url == f"https://discord.com/channels/{GUILD_A}/{GUILD_A + 1}/{9000 + job.id}"
    assert await gallery.count(GUILD_A, GalleryFilter()) == 1


async def test_pages_newest_first_and_anchor_paging(store: Store) -> None:
    gallery = GalleryStore(store)
    jobs = await fill(gallery, store, 4)
    newest_first = [j.id for j in reversed(jobs)]
    page = await gallery.page(GUILD_A, GalleryFilter())
    assert page is not None and page.entry.job_id == newest_first[0]
    assert (page.index, page.total, page.has_newer, page.has_older) == (1, 4, False, True)

    seen = [page.entry.job_id]
    while page.has_older:
        page = await gallery.page(GUILD_A, GalleryFilter(), page.entry.job_id, "older")
        assert page is not None
        seen.append(page.entry.job_id)
        assert page.index == len(seen)
    assert seen == newest_first
    # at the end, "older" stays put
    same = await gallery.page(GUILD_A, GalleryFilter(), seen[-1], "older")
    assert same is not None and same.entry.job_id == seen[-1] and not same.has_older
    back = await gallery.page(GUILD_A, GalleryFilter(), seen[-1], "newer")
    assert back is not None and back.entry.job_id == seen[-2] and back.index == 3


async def test_equal_times_are_ordered_by_job_id(store: Store) -> None:
    gallery = GalleryStore(store)
    jobs = [await make_done_job(store, finished_at=5.0) for _ in range(3)]
    for job in jobs:
        await gallery.add(job, 5.0)
    page = await gallery.page(GUILD_A, GalleryFilter())
    order = []
    while page is not None:
        order.append(page.entry.job_id)
        if not page.has_older:
            break
        page = await gallery.page(GUILD_A, GalleryFilter(), page.entry.job_id, "older")
    assert order == [j.id for j in reversed(jobs)]


async def test_new_results_do_not_move_an_open_page(store: Store) -> None:
    gallery = GalleryStore(store)
    jobs = await fill(gallery, store, 3)
    # someone looks at the middle picture, then a new one arrives
    newer = await make_done_job(store, finished_at=2000.0)
    await gallery.add(newer, 2000.0)
    page = await gallery.page(GUILD_A, GalleryFilter(), jobs[1].id, "older")
    assert page is not None and page.entry.job_id == jobs[0].id
    assert (page.index, page.total) == (4, 4)


async def test_filters_by_member_and_words(store: Store) -> None:
    gallery = GalleryStore(store)
    fox = await fill(gallery, store, 2, user_id=ALICE, prompt="A Red FOX in snow")
    cat = await fill(gallery, store, 1, user_id=BOB, prompt="a cat, red")
    uni = await fill(gallery, store, 1, user_id=BOB, prompt="Große Straße at night")

    async def ids(filt: GalleryFilter) -> list[int]:
        out, page = [], await gallery.page(GUILD_A, filt)
        while page is not None:
            out.append(page.entry.job_id)
            if not page.has_older:
                break
            page = await gallery.page(GUILD_A, filt, page.entry.job_id, "older")
        return sorted(out)

    assert await ids(GalleryFilter(user_id=ALICE)) == [j.id for j in fox]
    assert await ids(GalleryFilter(search="fox")) == [j.id for j in fox]
    assert await ids(GalleryFilter(search="RED")) == sorted(j.id for j in fox + cat)
    assert await ids(GalleryFilter(search="red snow")) == [j.id for j in fox]  # all words
    assert await ids(GalleryFilter(user_id=BOB, search="red")) == [j.id for j in cat]
    assert await ids(GalleryFilter(search="STRASSE")) == [j.id for j in uni]
    assert await ids(GalleryFilter(search="100%_")) == []  # no LIKE wildcards
    assert await gallery.page(GUILD_A, GalleryFilter(search="zebra")) is None
    assert await gallery.count(GUILD_A, GalleryFilter(search="red")) == 3


async def test_removed_entries_are_skipped_and_paged_past(store: Store) -> None:
    gallery = GalleryStore(store)
    jobs = await fill(gallery, store, 3)
    removed = await gallery.remove(jobs[1].id)
    assert removed is not None and removed.job_id == jobs[1].id and not removed.removed
    assert await gallery.remove(jobs[1].id) is None
    assert await gallery.get(GUILD_A, jobs[1].id) is None
    assert await gallery.count(GUILD_A, GalleryFilter()) == 2
    # a gallery message still showing the removed picture pages on from where it was
    older = await gallery.page(GUILD_A, GalleryFilter(), jobs[1].id, "older")
    assert older is not None and older.entry.job_id == jobs[0].id
    newer = await gallery.page(GUILD_A, GalleryFilter(), jobs[1].id, "newer")
    assert newer is not None and newer.entry.job_id == jobs[2].id
    # the oldest is removed while shown: "older" falls back to the next newer
    await gallery.remove(jobs[0].id)
    back = await gallery.page(GUILD_A, GalleryFilter(), jobs[0].id, "older")
    assert back is not None and back.entry.job_id == jobs[2].id and back.total == 1
    await gallery.remove(jobs[2].id)
    assert await gallery.page(GUILD_A, GalleryFilter(), jobs[2].id, "newer") is None


async def test_guilds_never_see_each_other(store: Store) -> None:
    gallery = GalleryStore(store)
    a_jobs = await fill(gallery, store, 2, guild_id=GUILD_A, prompt="fox")
    b_jobs = await fill(gallery, store, 2, guild_id=GUILD_B, prompt="fox")
    for guild, own, other in ((GUILD_A, a_jobs, b_jobs), (GUILD_B, b_jobs, a_jobs)):
        assert await gallery.count(guild, GalleryFilter()) == 2
        assert await gallery.count(guild, GalleryFilter(search="fox")) == 2
        for job in other:
            assert await gallery.get(guild, job.id) is None
            assert await gallery.get(guild, job.id, include_removed=True) is None
            # an anchor from the other server (a crafted button) falls back to this one's
            for direction in ("older", "newer", None):
                page = await gallery.page(guild, GalleryFilter(), job.id, direction)  # type: ignore[arg-type]
                assert page is not None and page.entry.guild_id == guild
                assert page.entry.job_id in {j.id for j in own}
        # walking the whole gallery stays at home
        page = await gallery.page(guild, GalleryFilter())
        while page is not None:
            assert page.entry.guild_id == guild
            if not page.has_older:
                break
            page = await gallery.page(guild, GalleryFilter(), page.entry.job_id, "older")


async def test_stored_searches_are_per_guild(store: Store) -> None:
    gallery = GalleryStore(store)
    a = await gallery.search_id(GUILD_A, "red fox")
    assert await gallery.search_id(GUILD_A, "red fox") == a
    b = await gallery.search_id(GUILD_B, "red fox")
    assert b != a
    assert await gallery.search_text(GUILD_A, a) == "red fox"
    assert await gallery.search_text(GUILD_B, a) is None  # another server's search id
    assert await gallery.search_text(GUILD_A, 999) is None


async def test_mark_pruned_and_shared(store: Store) -> None:
    gallery = GalleryStore(store)
    jobs = await fill(gallery, store, 3)
    await gallery.mark_pruned([jobs[0].output_path or "", "inputs/whatever.png"])
    flags = [(await gallery.get(GUILD_A, j.id)).pruned for j in jobs]  # type: ignore[union-attr]
    assert flags == [1, 0, 0]
    await gallery.set_shared(jobs[1].id, 77, 88)
    entry = await gallery.get(GUILD_A, jobs[1].id)
    assert entry is not None and (entry.shared_channel_id, entry.shared_message_id) == (77, 88)


async def test_upgrade_puts_done_jobs_of_older_databases_in_the_gallery(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    shutil.copy(FIXTURE_V1, path)
    with sqlite3.connect(path) as raw:  # the fixture's done job never had a file
        raw.execute("UPDATE jobs SET output_path='outputs/1.png' WHERE id=1 AND state='done'")
    raw.close()
    store = await Store.open(path)
    try:
        cursor = await store.db.execute("SELECT id, guild_id, state FROM jobs ORDER BY id")
        jobs = await cursor.fetchall()
        gallery = GalleryStore(store)
        for job_id, guild_id, state in jobs:
            entry = await gallery.get(guild_id, job_id)
            assert (entry is not None) == (state == "done"), (job_id, state)
        entry = await gallery.get(111, 1)
        assert entry is not None and entry.image_path == "outputs/1.png"
        assert await gallery.page(111, GalleryFilter(search="FOX")) is not None
    finally:
        await store.close()


# -- the embed ----------------------------------------------------------------------------
async def test_embed_shows_the_facts_and_says_when_the_file_is_gone(store: Store) -> None:
    gallery = GalleryStore(store)
    await fill(gallery, store, 1, negative_prompt="blurry")
    page = await gallery.page(GUILD_A, GalleryFilter(search="fox"))
    assert page is not None
    embed = gallery_embed(
        page.entry, image_filename="g.png", page=page, filt=GalleryFilter(search="fox")
    )
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Requester"] == f"<@{ALICE}>"
    assert fields["Prompt"] == "a red fox" and fields["Negative prompt"] == "blurry"
    assert fields["Strength"] == "0.50" and fields["Seed"] == "42"
    assert fields["Made"].startswith("<t:1000:")
    assert fields["Message"] == page.entry.url
    assert embed.image.url == "attachment://g.png"
    assert "Picture 1 of 1" in (embed.footer.text or "")
    assert "fox" in (embed.description or "")

    gone = gallery_embed(page.entry, image_filename=None)
    assert gone.image.url is None
    assert "gone" in {f.name: f.value for f in gone.fields}["Image"]
    assert {f.name: f.value for f in gone.fields}["Message"] == page.entry.url


# -- visibility follows the channel -----------------------------------------------------
async def make_job_in(
    store: Store, channel_id: int, *, public: int, nsfw: int = 0, finished_at: float = 1000.0
) -> Job:
    job = await make_done_job(store, finished_at=finished_at)
    await store.update_job(job.id, channel_id=channel_id, channel_public=public, channel_nsfw=nsfw)
    fresh = await store.get_job(job.id)
    assert fresh is not None
    return fresh


async def test_private_and_age_restricted_results_stay_in_their_channel(store: Store) -> None:
    gallery = GalleryStore(store)
    public = await make_job_in(store, 1, public=1, finished_at=1000.0)
    hidden = await make_job_in(store, 2, public=0, finished_at=1001.0)
    nsfw = await make_job_in(store, 3, public=1, nsfw=1, finished_at=1002.0)
    for job in (public, hidden, nsfw):
        await gallery.add(job, job.finished_at or 0)
    flags = {
        j.id: (await gallery.get(GUILD_A, j.id)).channel_public for j in (public, hidden, nsfw)
    }  # type: ignore[union-attr]
    assert flags == {public.id: 1, hidden.id: 0, nsfw.id: 0}

    async def ids(here: tuple[int, ...]) -> list[int]:
        filt = GalleryFilter(here=here)
        seen, page = [], await gallery.page(GUILD_A, filt)
        while page is not None:
            seen.append(page.entry.job_id)
            if not page.has_older:
                break
            page = await gallery.page(GUILD_A, filt, page.entry.job_id, "older")
        assert await gallery.count(GUILD_A, filt) == len(seen)
        return seen

    assert await ids(()) == [public.id]  # nowhere in particular (e.g. the mirror)
    assert await ids((1,)) == [public.id]  # another channel
    assert await ids((2,)) == [hidden.id, public.id]  # its own channel
    assert await ids((50, 3)) == [nsfw.id, public.id]  # a thread (50) of its channel
    # a hidden entry as anchor from elsewhere never shows itself
    page = await gallery.page(GUILD_A, GalleryFilter(here=(1,)), hidden.id)
    assert page is not None and page.entry.job_id == public.id


async def test_set_shared_says_when_the_entry_went_meanwhile(store: Store) -> None:
    gallery = GalleryStore(store)
    kept, gone = await fill(gallery, store, 2)
    assert await gallery.set_shared(kept.id, 77, 8001) is True
    await gallery.remove(gone.id)
    assert await gallery.set_shared(gone.id, 77, 8002) is False
    assert await gallery.set_shared(999, 77, 8003) is False  # no such entry (forgotten)
    entry = await gallery.get(GUILD_A, gone.id, include_removed=True)
    assert entry is not None and entry.shared_message_id is None


async def test_browse_by_model_shows_only_that_models_pictures_and_pages_keep_the_filter(
    store: Store,
) -> None:
    gallery = GalleryStore(store)
    base = await fill(gallery, store, 2, model="base")
    anime = await fill(gallery, store, 3, model="anime")
    filt = GalleryFilter(model="anime")
    page = await gallery.page(GUILD_A, filt)
    assert page is not None and (page.entry.job_id, page.total) == (anime[-1].id, 3)
    older = await gallery.page(GUILD_A, filt, page.entry.job_id, "older")
    assert older is not None and older.entry.job_id == anime[-2].id
    assert await gallery.count(GUILD_A, GalleryFilter(model="base")) == len(base)
    assert await gallery.count(GUILD_A, GalleryFilter(model="other")) == 0
    assert describe(filt) == "made with `anime`"
    custom_id = page_custom_id("older", 7, None, 0, "anime")
    match = re.fullmatch(PAGE_TEMPLATE, custom_id)
    assert match is not None and match["model"] == "anime"
    old = re.fullmatch(PAGE_TEMPLATE, page_custom_id("older", 7, None, 0))  # drawn before
    assert old is not None and old["model"] is None
