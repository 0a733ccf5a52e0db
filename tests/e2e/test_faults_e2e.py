"""Faults injected into the running bot (issue 10): each test breaks one thing on purpose
and checks what the user sees through the Discord stand-in and what SQLite holds.

Faults: 1 an SQLite error while dispatching; 2 a worker that exits after breaking its
device; 3/12 a shutdown while a result is being posted and a job runs; 4 a job that
finishes before its status message is attached; 7 one job of a batch cancelled.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from bot.app import ImgBot
from bot.store.db import Store
from pipeline.worker import WorkerClient
from tests.e2e.conftest import (
    JOB_TIMEOUT,
    BotFactory,
    World,
    button,
    eventually,
    slash_img2img,
    status_message,
    wait_result,
    worker_paused,
)
from tests.e2e.fault_engine import BREAK_PROMPT, ENGINE_REF
from tests.fakediscord import FakeDiscord, InteractionHandle

LONG = {"steps": 150, "strength": 1.0}  # keeps the worker busy until cancelled
BATCH = {"steps": 30, "strength": 1.0}  # long enough to cancel one job in the middle


async def wait_status(
    fd: FakeDiscord, handle: InteractionHandle, needle: str, timeout: float = 60.0
) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        msg = status_message(fd, handle)
        return msg if msg and needle in (msg["content"] or "") else None

    return await fd.until(find, timeout=timeout, what=f"status containing {needle!r}")


async def cancel(fd: FakeDiscord, msg: dict[str, Any], user: int) -> None:
    click = await fd.click(msg["id"], button(msg, "Cancel")["custom_id"], user)
    await click.wait_original()


async def job_row(bot: ImgBot, job_id: int) -> Any:
    job = await bot.store.get_job(job_id)
    assert job is not None
    return job


def public(fd: FakeDiscord, channel: int) -> list[dict[str, Any]]:
    return [m for m in fd.messages(channel) if not m["ephemeral"]]


# -- fault 4 ---------------------------------------------------------------------------------
async def test_a_job_done_before_its_status_message_ends_as_one_result(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    attach = bot.jobs.attach_status_message
    order: list[str] = []

    async def attach_after_the_job_finished(job_id: int, message_id: int | None) -> None:
        async def done() -> bool:
            return (await job_row(bot, job_id)).state == "done"

        await eventually(done, timeout=JOB_TIMEOUT)  # the race, forced: the job won
        order.append("attach")
        await attach(job_id, message_id)

    bot.jobs.attach_status_message = attach_after_the_job_finished  # type: ignore[method-assign]
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice)
    result = await wait_result(fd, handle)
    await fd.settle()
    assert order == ["attach"]
    status = status_message(fd, handle)
    assert status is not None and result["id"] == status["id"]  # the status became the result
    assert [m["id"] for m in public(fd, world.channel)] == [result["id"]]  # nothing stale
    labels = [b.get("label") for row in result["components"] for b in row["components"]]
    assert "Cancel" not in labels
    job = await job_row(bot, 1)
    assert (job.state, job.result_message_id, job.status_message_id) == (
        "done", result["id"], result["id"],
    )  # fmt: skip


# -- fault 1 ---------------------------------------------------------------------------------
async def test_an_sqlite_error_while_dispatching_delays_the_job_only(
    fd: FakeDiscord, world: World, make_bot: BotFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await make_bot()
    real = bot.store.start_jobs  # the move to running, for a dispatch's batch
    failures = [sqlite3.OperationalError("disk I/O error")]

    async def failing_once(job_ids: list[int], started_at: float) -> Any:
        if failures:
            raise failures.pop()
        return await real(job_ids, started_at)

    bot.store.start_jobs = failing_once  # type: ignore[method-assign]
    first = await slash_img2img(fd, world.guild, world.channel, world.alice)
    result = await wait_result(fd, first)
    assert failures == [] and "dispatching jobs 1 failed" in caplog.text
    assert "Traceback" in caplog.text
    assert "❌" not in (result["content"] or "")
    job = await job_row(bot, 1)
    assert (job.state, job.counted) == ("done", 1)
    # the loop is alive: the next job runs as usual
    await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.bob))


# -- fault 2 ---------------------------------------------------------------------------------
async def test_a_device_broken_exit_does_not_fail_the_next_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(WorkerClient, "_engine_ref", ENGINE_REF)
    bot = await make_bot()
    blocker = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    block_msg = await wait_status(fd, blocker, "step")
    first_pid = bot.jobs.worker.pid
    with worker_paused(bot):
        breaking = await slash_img2img(fd, world.guild, world.channel, world.bob, BREAK_PROMPT)
        await wait_status(fd, breaking, "queue")
        after = await slash_img2img(fd, world.guild, world.channel, world.carol)
        await wait_status(fd, after, "queue")
        await cancel(fd, block_msg, world.alice)
    failed = await wait_status(fd, breaking, "❌")
    assert "crashed" not in failed["content"]
    result = await wait_result(fd, after)
    assert "crashed" not in "".join(h.get("content") or "" for h in result["history"])
    assert bot.jobs.worker.pid not in (None, first_pid)  # restarted after the exit
    rows = [await job_row(bot, i) for i in (1, 2, 3)]
    assert [(j.state, j.counted) for j in rows] == [
        ("cancelled", 0), ("failed", 0), ("done", 1),
    ]  # fmt: skip


# -- fault 7 ---------------------------------------------------------------------------------
async def test_cancelling_one_job_of_a_batch_of_four(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    # The call path: a batch waits whole behind the blocker (with BATCHING=step each job
    # would join the running set at once; tests/pipeline/test_worker_steps.py covers that).
    bot = await make_bot(max_batch=4, batching="call")
    blocker = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    block_msg = await wait_status(fd, blocker, "step")
    with worker_paused(bot):  # line up one batch of three behind the blocker
        handles = {}
        for name in ("bob", "carol", "mod"):
            handles[name] = await slash_img2img(
                fd, world.guild, world.channel, getattr(world, name), **BATCH
            )
            await wait_status(fd, handles[name], "queue")
        await cancel(fd, block_msg, world.alice)
    msgs = {name: await wait_status(fd, h, "step") for name, h in handles.items()}
    assert sorted(bot.jobs.worker.running) == ["2", "3", "4"]  # one batch

    with worker_paused(bot):  # the cancel is in the pipe before the next step
        await cancel(fd, msgs["carol"], world.carol)
    cancelled = await wait_status(fd, handles["carol"], "Cancelled")
    # shown while the rest of its batch still runs
    assert all(not status_message(fd, handles[n])["attachments"] for n in ("bob", "mod"))
    assert not cancelled["attachments"] and not cancelled["components"]

    for name in ("bob", "mod"):
        await wait_result(fd, handles[name])
    await fd.settle()
    carol = await job_row(bot, 3)
    assert (carol.state, carol.counted, carol.result_message_id) == ("cancelled", 0, None)
    assert "Cancelled" in status_message(fd, handles["carol"])["content"]  # never overwritten
    for job_id in (2, 4):
        row = await job_row(bot, job_id)
        assert (row.state, row.counted) == ("done", 1)
    assert not (bot.settings.data_dir / "outputs" / "3.png").exists()


# -- faults 3 and 12 -------------------------------------------------------------------------
async def test_shutdown_keeps_a_result_being_posted_and_a_running_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.jobs.service as jobs_module

    monkeypatch.setattr(jobs_module, "STOP_DELIVERY_GRACE_S", 0.5)
    bot = await make_bot()
    never = asyncio.Event()

    async def stuck_delivery(job: Any) -> None:
        await never.wait()  # Discord does not answer before the bot stops

    bot.jobs.delivery.deliver_result = stuck_delivery  # type: ignore[method-assign]
    posted = await slash_img2img(fd, world.guild, world.channel, world.alice)

    async def done() -> bool:
        job = await bot.store.get_job(1)
        return job is not None and job.state == "done"

    await eventually(done, timeout=JOB_TIMEOUT)
    running = await slash_img2img(fd, world.guild, world.channel, world.bob, **LONG)
    await wait_status(fd, running, "step")
    await fd.settle()
    await bot.close()
    store = await Store.open(bot.settings.db_path)  # the bot closed its own
    try:
        stopped = [await store.get_job(i) for i in (1, 2)]
    finally:
        await store.close()
    assert all(stopped)
    assert [(j.state, j.result_message_id) for j in stopped if j] == [
        ("done", None),
        ("queued", None),
    ]

    bot = await make_bot()
    result = await wait_result(fd, posted)  # delivered by the next start
    assert result["id"] == status_message(fd, posted)["id"]
    await wait_status(fd, running, "step")  # the interrupted job runs again
    job = await job_row(bot, 1)
    assert (job.state, job.result_message_id, job.counted) == ("done", result["id"], 1)
