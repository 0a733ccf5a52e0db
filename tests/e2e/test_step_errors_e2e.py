"""An error in the step loop, as members see it (issue 25 item 7): an out-of-memory in one
job's decode fails that job alone, in plain words and refunded, while the job beside it in
the same UNet calls is posted; an out-of-memory in the UNet call runs the job once more,
then fails it for good, refunded. Faults come from tests/pipeline/step_faults.py (raised by
the real decode and UNet calls in the worker process, tiny model)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.worker import WorkerClient
from tests.e2e.conftest import (
    BotFactory,
    World,
    slash_img2img,
    status_message,
    wait_result,
    worker_paused,
)
from tests.fakediscord import FakeDiscord, InteractionHandle
from tests.pipeline.step_faults import DECODE_OOM, ENGINE_REF, UNET_ERROR


async def failed_status(fd: FakeDiscord, handle: InteractionHandle) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        msg = status_message(fd, handle)
        return msg if msg and "❌" in (msg["content"] or "") else None

    return await fd.until(find, timeout=90, what="the failure notice")


async def job_of(bot: Any, user_id: int) -> dict[str, Any]:
    cursor = await bot.store.db.execute("SELECT * FROM jobs WHERE user_id=?", (user_id,))
    found = await cursor.fetchall()
    assert len(found) == 1
    return dict(found[0])


async def test_an_oom_in_one_decode_fails_that_job_and_a_unet_oom_runs_it_once_more(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(WorkerClient, "_engine_ref", ENGINE_REF)
    bot = await make_bot(batching="step", max_batch=2)
    with worker_paused(bot):  # both join one running set
        oom = await slash_img2img(
            fd, world.guild, world.channel, world.alice, f"a fox {DECODE_OOM}"
        )
        beside = await slash_img2img(fd, world.guild, world.channel, world.bob)
    failed = await failed_status(fd, oom)
    assert "Out of memory" in failed["content"] and "CUDA" not in failed["content"]
    assert failed["components"] == []  # no live Cancel button
    await wait_result(fd, beside)
    rows = [await job_of(bot, user) for user in (world.alice, world.bob)]
    assert [(r["state"], r["counted"], r["retries"]) for r in rows] == [
        ("failed", 0, 0), ("done", 1, 0),
    ]  # fmt: skip

    unet = await slash_img2img(fd, world.guild, world.channel, world.carol, f"a {UNET_ERROR}")
    failed = await failed_status(fd, unet)
    assert "Out of memory" in failed["content"]
    row = await job_of(bot, world.carol)
    assert (row["state"], row["counted"], row["retries"]) == ("failed", 0, 1)  # ran twice
    assert not (bot.settings.data_dir / "outputs" / f"{row['id']}.png").exists()
