"""The queue and the worker under stress: cancel, fairness, restarts, crashes, reconnects."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    embed_fields,
    eventually,
    slash_img2img,
    status_message,
    wait_result,
    worker_paused,
)
from tests.fakediscord import FakeDiscord, InteractionHandle

ROOT = Path(__file__).resolve().parents[2]
LONG = {"steps": 150, "strength": 1.0}  # a job that keeps the worker busy until cancelled


async def wait_status(
    fd: FakeDiscord, handle: InteractionHandle, needle: str, timeout: float = 60.0
) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        msg = status_message(fd, handle)
        return msg if msg and needle in (msg["content"] or "") else None

    return await fd.until(find, timeout=timeout, what=f"status containing {needle!r}")


def cancel_id(msg: dict[str, Any]) -> str:
    return button(msg, "Cancel")["custom_id"]


async def test_cancel_waiting_and_running_jobs(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    running = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    run_msg = await wait_status(fd, running, "step")
    with worker_paused(bot):
        waiting = await slash_img2img(fd, world.guild, world.channel, world.bob)
        wait_msg = await wait_status(fd, waiting, "in this server's queue")
        assert "1st in this server's queue" in wait_msg["content"]

        refused = await fd.click(wait_msg["id"], cancel_id(wait_msg), world.carol)
        assert "Manage Messages" in (await refused.wait_original())["content"]

        ok = await fd.click(wait_msg["id"], cancel_id(wait_msg), world.bob)
        assert "Cancelled" in (await ok.wait_original())["content"]
        await wait_status(fd, waiting, "Cancelled")

        stop = await fd.click(run_msg["id"], cancel_id(run_msg), world.mod)
        assert "next step" in (await stop.wait_original())["content"]
    await wait_status(fd, running, "Cancelled")

    async def both_cancelled() -> bool:
        jobs = [await bot.store.get_job(i) for i in (1, 2)]
        return all(j is not None and (j.state, j.counted) == ("cancelled", 0) for j in jobs)

    await eventually(both_cancelled)
    assert not any(m["attachments"] for m in fd.messages())


async def test_round_robin_across_two_guilds(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    blocker = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    block_msg = await wait_status(fd, blocker, "step")
    handles = {}
    with worker_paused(bot):
        for name, guild, channel in [
            ("bob", world.guild, world.channel),
            ("carol", world.guild, world.channel),
            ("mod", world.guild, world.channel),
            ("dave", world.guild2, world.channel2),
        ]:
            handles[name] = await slash_img2img(fd, guild, channel, getattr(world, name))
            await wait_status(fd, handles[name], "queue")
        await fd.click(block_msg["id"], cancel_id(block_msg), world.alice)
    for handle in handles.values():
        await wait_result(fd, handle)
    done = await bot.store.jobs_in_states(["done"])
    served = [j.user_id for j in sorted(done, key=lambda j: j.started_at or 0)]
    assert served == [world.bob, world.dave, world.carol, world.mod]


async def test_restart_keeps_waiting_jobs_and_old_buttons(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    first = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.alice))
    blocker = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    block_msg = await wait_status(fd, blocker, "step")
    with worker_paused(bot):
        waiting = await slash_img2img(fd, world.guild, world.channel, world.bob)
        await wait_status(fd, waiting, "queue")
        await fd.settle()
    await bot.close()

    bot = await make_bot()
    # the Cancel button on a status message from before the restart still works
    cancel = await fd.click(block_msg["id"], cancel_id(block_msg), world.alice)
    assert "❌" not in (await cancel.wait_original())["content"]
    # the waiting job survived and runs
    later = await wait_result(fd, waiting)
    assert f"<@{world.bob}>" in later["content"]
    # a variant button on a result from before the restart still works
    click = await fd.click(first["id"], button(first, "−0.15")["custom_id"], world.carol)
    variant = await wait_result(fd, click)
    assert embed_fields(variant)["Strength"] == "0.35"
    assert variant["message_reference"]["message_id"] == first["id"]


async def test_gateway_disconnect_and_resume_during_a_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, steps=150)
    await wait_status(fd, handle, "step")
    with worker_paused(bot):  # the job is surely still running while the gateway drops
        await fd.disconnect(4000)
        await fd.wait_resumed()
    result = await wait_result(fd, handle)
    assert embed_fields(result)["Steps"] == "75 of 150"
    assert fd.identify_count == 1 and fd.resume_count >= 1
    help_after = await fd.send_slash(world.guild, world.channel, world.bob, "help")
    assert (await help_after.wait_original())["ephemeral"]


async def test_worker_killed_during_a_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    await wait_status(fd, handle, "step")
    pid = bot.jobs.worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    failed = await wait_status(fd, handle, "crashed")
    assert "did not count against your quota" in failed["content"]
    job = await bot.store.get_job(1)
    assert job is not None and (job.state, job.counted) == ("failed", 0)
    # the worker restarts and the queue goes on
    result = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.bob))
    assert embed_fields(result)["Steps"] == "2 of 4"
    assert bot.jobs.worker.pid not in (None, pid)


async def test_heartbeats_and_commands_keep_flowing_during_a_long_job(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """Order and outcome, not speed (`make bench` measures the lag): while one long job
    runs, commands are answered and heartbeats keep arriving, all before its result."""
    await make_bot(resolution=256)
    handle = await slash_img2img(fd, world.guild, world.channel, world.alice, **LONG)
    run_msg = await wait_status(fd, handle, "step")

    def still_running() -> bool:
        msg = status_message(fd, handle)
        # No result yet (a result has its embed; a live preview is an attachment too).
        return msg is not None and not msg["embeds"] and "Cancelled" not in msg["content"]

    beats = len(fd.heartbeats)
    for _ in range(3):
        probe = await fd.send_slash(world.guild, world.channel, world.bob, "help")
        assert (await probe.wait_original())["ephemeral"]
        assert still_running(), "the job ended before the commands were answered"
    await fd.until(lambda: len(fd.heartbeats) >= beats + 3, timeout=30, what="heartbeats")
    assert still_running(), "the job ended before the heartbeats arrived"
    await fd.click(run_msg["id"], cancel_id(run_msg), world.alice)
    await wait_status(fd, handle, "Cancelled")


async def test_result_after_token_expiry_goes_to_the_channel(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    with worker_paused(bot):
        handle = await slash_img2img(fd, world.guild, world.channel, world.alice, steps=20)
        await wait_status(fd, handle, "#")
        handle.expire()
    result = await fd.wait_for_message(
        lambda m: m["kind"] == "channel" and bool(m["attachments"]), timeout=60
    )
    assert result["content"].startswith(f"<@{world.alice}>")
    assert embed_fields(result)["Steps"] == "10 of 20"


def run_bot(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "bot"], cwd=ROOT, env=full, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


async def test_missing_or_rejected_token_exits_with_one_clear_line(
    fd: FakeDiscord, tmp_path: Path
) -> None:
    base = {
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "DATA_DIR": str(tmp_path),
    }
    missing = await asyncio.to_thread(run_bot, {**base, "DISCORD_TOKEN": ""})
    assert missing.returncode == 2 and "DISCORD_TOKEN is not set" in missing.stderr
    wrong = await asyncio.to_thread(run_bot, {**base, "DISCORD_TOKEN": "wrong"})
    assert wrong.returncode == 1
    assert "Discord rejected DISCORD_TOKEN" in wrong.stderr
    assert "wrong" not in wrong.stderr.replace("DISCORD_TOKEN", "")


async def test_broken_model_stops_the_bot_with_a_clear_error(
    fd: FakeDiscord, world: World, tmp_path: Path
) -> None:
    env = {
        "DISCORD_TOKEN": fd.token,
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "DATA_DIR": str(tmp_path / "data"),
        "MODEL_ID": str(tmp_path / "no-such-model"),
        "DEVICE": "cpu",
    }
    run = await asyncio.to_thread(run_bot, env)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "no-such-model" in run.stderr.splitlines()[-1]
