"""Every public message showing a picture follows it: Use and Open… copies, a comparison
that re-uploads someone else's result, an album. Delete, `/gallery remove` and forget-me
delete the copies and edit the album or comparison to drop just that picture."""

from __future__ import annotations

from typing import Any

import pytest

from bot.app import ImgBot
from bot.store.picture_messages import PictureMessages
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    buttons,
    slash_img2img,
    wait_result,
)
from tests.e2e.test_gallery_e2e import browse, eventually, job_state
from tests.e2e.test_safety_e2e import slash_text
from tests.e2e.test_series_e2e import photo, send_series, wait_album
from tests.fakediscord import FakeDiscord, Upload

pytestmark = pytest.mark.e2e


def uses(msg: dict[str, Any]) -> list[str]:
    return [b["label"] for b in buttons(msg)]


async def recorded(bot: ImgBot, message_id: int) -> list[tuple[int, str]]:
    cursor = await bot.store.db.execute(
        "SELECT job_id, kind FROM picture_messages WHERE message_id=? ORDER BY job_id",
        (message_id,),
    )
    return [(int(r[0]), str(r[1])) for r in await cursor.fetchall()]


async def forget(fd: FakeDiscord, world: World, user: int) -> str:
    """/gallery forget-me and its confirmation; the summary text."""
    ask = await fd.send_slash(world.guild, world.channel, user, "gallery forget-me", {})
    prompt = await ask.wait_original()
    click = await fd.click(prompt["id"], button(prompt, "Delete everything")["custom_id"], user)
    assert (await click.response())["type"] == 7
    done = await fd.until(
        lambda: (m := fd.message(prompt["id"])) and "Deleted" in m["content"] and m,
        timeout=20, what="forget-me summary",
    )  # fmt: skip
    return str(done["content"])


async def test_copies_and_comparisons_follow_the_picture_they_show(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    data = bot.settings.data_dir
    g, c = world.guild, world.channel
    original = await wait_result(fd, await slash_img2img(fd, g, c, world.alice, seed=11))
    # bob's comparison re-uploads alice's picture (job 1) beside his two (jobs 2 and 3)
    click = await fd.click(original["id"], button(original, "Compare")["custom_id"], world.bob)
    comparison = await fd.until(
        lambda: (m := click.original()) and len(m["attachments"]) == 3 and m["components"] and m,
        timeout=120, what="the comparison",
    )  # fmt: skip
    expected = [(1, "comparison"), (2, "comparison"), (3, "comparison")]
    await eventually(lambda: recorded(bot, comparison["id"]), expected)  # trails the edit
    # carol posts copies of alice's picture and of bob's 0.65
    copies = {}
    for label in ("Use 0.50", "Use 0.65"):
        use = await fd.click(comparison["id"], button(comparison, label)["custom_id"], world.carol)
        copies[label] = await use.wait_original()
        assert not copies[label]["ephemeral"] and copies[label]["attachments"]
    assert await recorded(bot, copies["Use 0.50"]["id"]) == [(1, "single")]
    # and a public gallery page showing alice's picture
    _, page = await browse(fd, g, c, world.carol, user=world.alice, public=True)
    assert not page["ephemeral"] and page["attachments"]
    await eventually(lambda: recorded(bot, page["id"]), [(1, "gallery")])

    # alice removes her picture: her result and carol's copy of it go, bob's comparison
    # loses that picture and keeps his two, the copy of his picture stays
    text = await slash_text(fd, g, c, world.alice, "gallery remove", job=1)
    assert "Removed picture #1" in text
    edited = await fd.until(
        lambda: (m := fd.message(comparison["id"])) and len(m["attachments"]) == 2 and m,
        timeout=20, what="the comparison without alice's picture",
    )  # fmt: skip
    assert "0.50: 🗑️ deleted" in edited["content"]
    assert uses(edited) == ["Use 0.35", "Use 0.65"]
    assert [a["filename"].rsplit("-", 1)[-1] for a in edited["attachments"]] == [
        "0.35.png",
        "0.65.png",
    ]
    await fd.until(lambda: fd.message(original["id"])["deleted"], what="alice's result deleted")
    assert fd.message(copies["Use 0.50"]["id"])["deleted"]
    redrawn = await fd.until(
        lambda: (m := fd.message(page["id"])) and "was removed" in m["content"] and m,
        timeout=20, what="the public gallery page saying the picture was removed",
    )  # fmt: skip
    assert redrawn["attachments"] == [] and redrawn["embeds"] == []
    assert not fd.message(copies["Use 0.65"]["id"])["deleted"]
    await eventually(lambda: job_state(bot, 1), "deleted")
    jobs = {j: await bot.store.get_job(j) for j in (1, 2, 3)}
    assert all(job is not None for job in jobs.values())
    assert not (data / str(jobs[1].output_path)).exists()  # type: ignore[union-attr]
    for j in (2, 3):
        assert (data / str(jobs[j].output_path)).is_file()  # type: ignore[union-attr]

    # bob removes one of his two: the comparison keeps the other
    assert "Removed picture #2" in await slash_text(fd, g, c, world.bob, "gallery remove", job=2)
    one = await fd.until(
        lambda: (m := fd.message(comparison["id"])) and len(m["attachments"]) == 1 and m,
        timeout=20, what="the comparison with one picture",
    )  # fmt: skip
    assert "0.35: 🗑️ deleted" in one["content"] and uses(one) == ["Use 0.65"]

    # alice forgets herself: her row goes, bob's comparison still shows his picture and says
    # the one it was compared with is gone
    assert "Deleted" in await forget(fd, world, world.alice)
    orphan = await fd.until(
        lambda: (m := fd.message(comparison["id"])) and "deleted by its owner" in m["content"]
        and m,
        timeout=20, what="the comparison without its original",
    )  # fmt: skip
    assert len(orphan["attachments"]) == 1 and uses(orphan) == ["Use 0.65"]
    assert await bot.store.get_job(1) is None
    assert 1 not in [job for job, _ in await recorded(bot, comparison["id"])]
    assert not fd.message(copies["Use 0.65"]["id"])["deleted"]
    assert len(bot.get_cog("CompareCog")._locks) == 0  # type: ignore[union-attr]  # fault 12
    fd.assert_no_unknown_routes()


async def test_a_picture_deleted_while_its_copy_uploads_takes_the_copy_too(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's Delete lands after Discord took an Open… copy but before the bot
    recorded it, so the deletion cannot find it: the copy is deleted all the same."""
    bot = await make_bot()
    handle = await send_series(fd, world, world.alice, [Upload("p.png", photo(0), "image/png")])
    album = await wait_album(fd, handle)
    real_record = PictureMessages.record

    async def deleted_meanwhile(self: PictureMessages, *args: Any) -> None:
        if args[-1] == "single":  # the copy: its picture is deleted first
            job = await bot.store.get_job(1)
            assert job is not None
            await bot.jobs.mark_deleted(job)
        await real_record(self, *args)

    monkeypatch.setattr(PictureMessages, "record", deleted_meanwhile)
    select = next(c for c in buttons(album) if c["type"] == 3)
    click = await fd.click(album["id"], select["custom_id"], world.carol, values=["1"])
    copy = await click.wait_original()
    assert copy["attachments"]
    await fd.until(lambda: fd.message(copy["id"])["deleted"], what="the late copy deleted")
    emptied = await fd.until(
        lambda: (m := fd.message(album["id"])) and not m["attachments"] and m,
        timeout=20, what="the album without the picture",
    )  # fmt: skip
    assert "🗑️ deleted" in emptied["content"]
    await eventually(lambda: recorded(bot, copy["id"]), [])  # trails the delete
    assert await job_state(bot, 1) == "deleted"
