"""/series end to end: an album equal to single runs, all-or-nothing refusals, Open…."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

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
    msg = await handle.wait_original(lambda m: not m["loading"], timeout=60)
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
