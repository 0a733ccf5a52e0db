"""/series end to end: an album equal to single runs, all-or-nothing refusals, Open…."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot import uploads as uploads_module
from bot.app import ImgBot
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    buttons,
    embed_fields,
    image_bytes,
    slash_img2img,
    wait_result,
    worker_paused,
)
from tests.e2e.test_delivery_e2e import checker_says
from tests.fakediscord import FakeDiscord, InteractionHandle, Upload


def photo(n: int) -> bytes:
    """Three different photos: the gradient, flipped and rotated."""
    image = Image.open(io.BytesIO(image_bytes()))
    image = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image.rotate(180)][n]
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def send_series(
    fd: FakeDiscord, world: World, user: int, uploads: list[Upload], **options: Any
) -> InteractionHandle:
    files = {f"image{i}": u for i, u in enumerate(uploads, start=1)}
    return await fd.send_slash(
        world.guild, world.channel, user, "series", {"prompt": "a red fox", **options}, files
    )


async def private_text(handle: InteractionHandle) -> str:
    """The private answer once it is final (past "📥 Reading your pictures…")."""
    msg = await handle.wait_original(
        lambda m: not m["loading"] and not m["content"].startswith("📥"), timeout=60
    )
    assert msg["ephemeral"], msg["content"]
    return str(msg["content"])


async def wait_album(fd: FakeDiscord, handle: InteractionHandle) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for msg in fd.messages():
            content = msg["content"] or ""
            mine = msg["interaction_token"] == handle.token and content.startswith("🖼️ Series")
            if mine and "Finished:" in content:
                return msg
        return None

    return await fd.until(find, timeout=240, what="the finished album")


async def job_count(bot: ImgBot) -> int:
    row = await (await bot.store.db.execute("SELECT COUNT(*) FROM jobs")).fetchone()
    return int(row[0])


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def test_series_images_equal_single_runs_and_open_posts_a_result(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot()
    uploads = [Upload(f"photo{n}.png", photo(n), "image/png") for n in range(3)]
    handle = await send_series(fd, world, world.alice, uploads, seed=99, strength=0.6)
    assert "Queued a series of 3" in await private_text(handle)
    album = await wait_album(fd, handle)
    assert not album["ephemeral"]
    assert "Finished: 3 of 3 images made." in album["content"]
    assert [a["filename"] for a in album["attachments"]] == [
        f"series-0{i}-job{i}.png" for i in (1, 2, 3)
    ]
    lines = album["content"].splitlines()
    assert lines[2:5] == [f"{i}. photo{i - 1}.png: ✅ done" for i in (1, 2, 3)]

    for i in range(3):  # each image equals a single /img2img with the same settings
        single = await slash_img2img(
            fd, world.guild, world.channel, world.bob, "a red fox", data=photo(i), seed=99,
            strength=0.6,
        )  # fmt: skip
        result = await wait_result(fd, single)
        assert np.array_equal(
            pixels(fd.attachment_bytes(album, i)), pixels(fd.attachment_bytes(result))
        ), f"image{i + 1}"

    select = next(c for c in buttons(album) if c["type"] == 3)
    assert select["placeholder"] == "Open…" and len(select["options"]) == 3
    opened = await fd.click(album["id"], select["custom_id"], world.carol, values=["2"])
    msg = await opened.wait_original()
    assert not msg["ephemeral"] and msg["attachments"]
    assert embed_fields(msg)["Seed"] == "99" and embed_fields(msg)["Prompt"] == "a red fox"
    # the full set of buttons of a normal result (the last single run had the same strength)
    assert [b.get("label") for b in buttons(msg)] == [b.get("label") for b in buttons(result)]
    assert "Reroll" in [b.get("label") for b in buttons(msg)]
    assert np.array_equal(pixels(fd.attachment_bytes(msg)), pixels(fd.attachment_bytes(album, 1)))
    fd.assert_no_unknown_routes()


async def test_one_bad_photo_refuses_the_whole_series_naming_it(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    small = io.BytesIO()
    Image.new("RGB", (100, 80)).save(small, format="PNG")
    uploads = [
        Upload("ok.png", photo(0), "image/png"),
        Upload("tiny.png", small.getvalue(), "image/png"),
        Upload("ok2.png", photo(1), "image/png"),
    ]
    text = await private_text(await send_series(fd, world, world.alice, uploads))
    assert "image2:" in text and "short side" in text
    assert "image1" not in text and "image3" not in text
    assert await job_count(bot) == 0
    assert not any(m["attachments"] for m in fd.messages())


async def test_not_enough_quota_refuses_the_whole_series(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(quota_user_daily=2)
    uploads = [Upload(f"p{n}.png", photo(n), "image/png") for n in range(3)]
    text = await private_text(await send_series(fd, world, world.alice, uploads))
    assert "A series of 3 needs 3 images; you have 2 left today" in text
    assert await job_count(bot) == 0
    assert not any(c.path.startswith("/attachments") for c in fd.calls)  # nothing downloaded


async def test_a_series_longer_than_the_per_user_cap_is_one_entry(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(max_jobs_per_user=2, max_queue_per_guild=10, max_queue_total=20)
    uploads = [Upload(f"p{n}.png", photo(n % 3), "image/png") for n in range(4)]
    handle = await send_series(fd, world, world.alice, uploads, seed=5)
    assert "Queued a series of 4" in await private_text(handle)
    album = await wait_album(fd, handle)
    assert len(album["attachments"]) == 4
    assert await job_count(bot) == 4


async def test_cancel_the_rest_stops_images_that_have_not_started(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    uploads = [Upload(f"p{n}.png", photo(n), "image/png") for n in range(3)]
    with worker_paused(bot):
        handle = await send_series(fd, world, world.alice, uploads)
        assert "Queued a series of 3" in await private_text(handle)
        album = await fd.until(
            lambda: next(
                (m for m in fd.messages() if m["interaction_token"] == handle.token
                 and "⏳ waiting" in (m["content"] or "") and m["components"]),
                None,
            ),
            timeout=30, what="the album with a Cancel button",
        )  # fmt: skip
        cancel = button(album, "Cancel the rest")["custom_id"]
        refused = await fd.click(album["id"], cancel, world.bob)
        assert "Only the person" in (await refused.wait_original())["content"]
        ok = await fd.click(album["id"], cancel, world.alice)
        assert "Cancelled 2 images" in (await ok.wait_original())["content"]
    final = await wait_album(fd, handle)
    assert final["content"].count("✖️ cancelled") == 2
    rows = await (await bot.store.db.execute("SELECT state, counted FROM jobs")).fetchall()
    assert sorted(tuple(r) for r in rows) == [("cancelled", 0), ("cancelled", 0), ("done", 1)]


async def test_flagged_album_pictures_are_spoilers_and_removing_one_keeps_the_others(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Faults 3 and 4 (and 2 for Open…): an allowed flagged album is all spoilers, so is
    its Open… copy; /gallery remove of one picture edits the album and deletes its copy."""
    g, after_dark = world.guild, fd.add_channel(world.guild, "after-dark", nsfw=True)
    bot = await make_bot()
    data = bot.settings.data_dir
    allow = await fd.send_slash(g, world.channel, world.admin, "settings nsfw-channels",
                                {"mode": "allow"})  # fmt: skip
    assert "✅" in (await allow.response())["data"]["content"]
    checker_says(bot, withheld=False)
    uploads = {f"image{n + 1}": Upload(f"photo{n}.png", photo(n), "image/png") for n in range(2)}
    handle = await fd.send_slash(g, after_dark, world.alice, "series", {"prompt": "a fox"},
                                 uploads)  # fmt: skip
    album = await wait_album(fd, handle)
    assert [a["filename"] for a in album["attachments"]] == [
        "SPOILER_series-01-job1.png",
        "SPOILER_series-02-job2.png",
    ]
    select = next(c for c in buttons(album) if c["type"] == 3)
    opened = await (await fd.click(album["id"], select["custom_id"], world.carol,
                                   values=["1"])).wait_original()  # fmt: skip
    assert opened["attachments"][0]["filename"] == "SPOILER_img2img-1.png"
    # the gallery, browsed where it may show them, follows the same rule
    browse = await fd.send_slash(g, after_dark, world.bob, "gallery browse", {})
    page = await browse.wait_original()
    assert page["attachments"][0]["filename"].startswith("SPOILER_gallery-")
    assert "image" not in page["embeds"][0]  # an embed's image would not be blurred

    removed = await fd.send_slash(g, after_dark, world.alice, "gallery remove", {"job": 1})
    assert "Removed picture #1" in (await removed.response())["data"]["content"]
    edited = await fd.until(
        lambda: (m := fd.message(album["id"])) and len(m["attachments"]) == 1 and m,
        timeout=20, what="the album without picture 1",
    )  # fmt: skip
    assert not edited["deleted"]
    assert "1. photo0.png: 🗑️ deleted" in edited["content"]
    assert [a["filename"] for a in edited["attachments"]] == ["SPOILER_series-02-job2.png"]
    options = next(c for c in buttons(edited) if c["type"] == 3)["options"]
    assert [o["value"] for o in options] == ["2"]
    await fd.until(lambda: fd.message(opened["id"])["deleted"], what="the Open… copy deleted")
    jobs = [await bot.store.get_job(j) for j in (1, 2)]
    assert [j.state for j in jobs if j] == ["deleted", "done"]
    assert not (data / "outputs").joinpath(f"{jobs[0].id}.png").exists()  # type: ignore[union-attr]
    assert (data / str(jobs[1].output_path)).is_file()  # type: ignore[union-attr]
    assert len(bot.get_cog("SeriesCog")._album_locks) == 0  # type: ignore[union-attr]  # fault 12


async def test_a_series_burst_past_max_decodes_waits_for_slots_instead_of_refusing(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 6: with MAX_DECODES=1 and slow decodes, three series of two pictures at once
    decode one picture at a time; each says it is reading, none is refused as busy."""
    bot = await make_bot(max_decodes=1)
    bot.actions.decode_wait_s = 0.05  # a single upload would be refused as busy by now
    inside, most = [0], [0]
    real_load = uploads_module.load_input

    def counted_load(*args: Any, **kwargs: Any) -> Any:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.2)  # a 40 MP decode takes a while
            return real_load(*args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(uploads_module, "load_input", counted_load)
    with worker_paused(bot):
        handles = [
            await send_series(
                fd, world, user,
                [Upload(f"p{n}.png", photo(n), "image/png") for n in range(2)],
            )
            for user in (world.alice, world.bob, world.carol)
        ]  # fmt: skip
        for handle in handles:
            assert "Queued a series of 2" in await private_text(handle)
            said = [h.get("content") or "" for h in handle.original()["history"]]
            assert any(text.startswith("📥 Reading your 2 pictures") for text in said), said
        assert most[0] == 1
        rows = await (await bot.store.db.execute("SELECT state, input_path FROM jobs")).fetchall()
        assert len(rows) == 6 and {r[0] for r in rows} <= {"queued", "running"}
        stored = sorted(p.name for p in (bot.settings.data_dir / "inputs").glob("*.png"))
        assert stored == sorted(str(r[1]).split("/")[-1] for r in rows)
