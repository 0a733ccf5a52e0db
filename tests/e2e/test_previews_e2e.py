"""Live previews (issue 29) through the Discord stand-in: a long job's status message carries
a preview attachment before its result, the result carries only the result, no preview is
stored or shown in /gallery browse, and `/settings previews off` stops them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BotFactory, World, slash_img2img, status_message, wait_result
from tests.e2e.test_gallery_e2e import browse
from tests.e2e.test_resilience_e2e import wait_status
from tests.e2e.test_safety_e2e import job_id_of
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.e2e

LONG = {"steps": 20, "strength": 1.0}
"""Long enough at 128 px on the tiny model that the first-step edit goes out mid-run."""


def preview_names(version: dict[str, Any]) -> list[str]:
    return [a["filename"] for a in version["attachments"] if a["filename"].startswith("preview-")]


async def run_job(fd: FakeDiscord, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """A long job by alice; (its status message with every version, its result message)."""
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    result = await wait_result(fd, handle)
    status = status_message(fd, handle)
    assert status is not None
    return status, result


async def test_a_running_job_shows_previews_that_the_result_replaces(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bot = await make_bot(preview="taesd", preview_model_id=str(tiny_model_dir / "taesd"))
    gallery_channel = fd.add_channel(world.guild, "gallery")
    setting = await fd.send_slash(
        world.guild, world.channel, world.admin, "settings gallery-channel",
        {"channel": gallery_channel},
    )  # fmt: skip
    assert "✅" in (await setting.response())["data"]["content"]
    status, result = await run_job(fd, world)

    shown = [v for v in status["history"] if preview_names(v)]
    assert shown, "no status edit carried a preview"
    assert all("Generating: step" in v["content"] for v in shown)  # only on progress edits
    preview = shown[0]["attachments"][0]
    assert preview["filename"].endswith(".jpg") and preview["size"] < 20_000
    assert max(preview["width"], preview["height"]) <= 256  # the stand-in read the image
    # The result replaces it: the same message now carries the picture alone.
    assert result["id"] == status["id"]
    assert len(result["attachments"]) == 1 and not preview_names(result)
    # Never stored: not in the gallery channel, not under DATA_DIR, not in /gallery browse.
    post = await fd.until(
        lambda: next(iter(fd.messages(gallery_channel)), None), what="gallery channel post"
    )
    job_id = job_id_of(result)
    assert [a["filename"] for a in post["attachments"]] == [f"gallery-{job_id}.png"]
    assert not [p for p in (tmp_path / "data").rglob("*") if "preview" in p.name]
    _, gallery = await browse(fd, world.guild, world.channel, world.alice)
    assert [a["filename"] for a in gallery["attachments"]] == [f"gallery-{job_id}.png"]
    assert bot.settings.preview == "taesd"

    # A server admin turns them off: the next job's status carries none.
    handle = await fd.send_slash(
        world.guild, world.channel, world.admin, "settings previews", {"mode": "off"}
    )
    assert "live previews → off" in (await handle.response())["data"]["content"]
    status, _ = await run_job(fd, world)
    running = [v for v in status["history"] if "Generating: step" in (v["content"] or "")]
    assert running, "no progress edit to carry a preview"  # so the next line means something
    assert not [v for v in status["history"] if preview_names(v)]


async def test_with_a_checker_that_flags_everything_no_preview_image_is_ever_sent(
    fd: FakeDiscord, world: World, make_bot: BotFactory, checker_dirs: dict[str, Path]
) -> None:
    """An ordinary (filtered) channel: every preview is checked first; flagged, it is never
    sent, the status says so, and the withheld job's message ends with no picture."""
    from bot.jobs.status import PREVIEW_HIDDEN_TEXT

    await make_bot(preview="approx", safety_checker_id=str(checker_dirs["all"]))
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    status = await wait_status(fd, handle, "withheld by the safety filter")
    versions = [*status["history"], status]
    assert any(PREVIEW_HIDDEN_TEXT in (v["content"] or "") for v in versions)
    assert not any(v["attachments"] for v in versions)  # no preview, no picture, ever
    files = [f for c in fd.calls for f in c.files]
    assert not [f for f in files if f["filename"].startswith("preview-")]
