"""The job service on a real SQLite store, with a scripted worker and a recording Delivery.

The worker's own tests are real (tests/pipeline/test_worker.py); here a `ScriptedWorker`
with the `WorkerClient` surface lets each test inject exactly the fault it is about: an
exception in dispatch, a worker that dies with jobs never started, a result that arrives
before its status message, a delivery still in flight at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import bot.jobs.dispatch as job_dispatch
import bot.jobs.service as jobs_module
from bot.errors import UserError
from bot.jobs.events import CRASH_MESSAGE
from bot.jobs.service import JobService, NewJob
from bot.store.db import Job, Store
from config import Settings
from pipeline.request import EngineInfo, GenerationRequest, GenerationResult
from pipeline.worker import BatchDone, Cancelled, Finished, Progress, WorkerDied

INFO = EngineInfo("tiny", "cpu", "fp32", 64, "Fake")
GUILD = 1000
WAIT_S = 10.0


class ScriptedWorker:
    """The `WorkerClient` surface; the test decides every event and every failure."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.batches: list[tuple[GenerationRequest, ...]] = []
        self.cancels: list[str] = []
        self.busy = False
        self.info: EngineInfo | None = None
        self.restarts = 0
        self.submit_errors: list[Exception] = []
        self.held: list[str] = []  # what `running` lists (a scale-out backend's jobs)

    async def start(self) -> EngineInfo:
        self.info = INFO
        return INFO

    async def restart(self) -> EngineInfo:
        self.restarts += 1
        self.log.append("worker restart")
        return await self.start()

    async def stop(self, timeout: float = 10.0) -> None:
        self.log.append("worker stop")
        self.info = None

    @property
    def free_slots(self) -> int:
        return 0 if self.busy or self.info is None else 4

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self.held)

    def submit(self, batch: Any) -> None:
        if self.submit_errors:
            raise self.submit_errors.pop(0)
        self.busy = True
        self.batches.append(tuple(batch))

    def cancel(self, job_id: str) -> None:
        self.cancels.append(job_id)

    async def next_event(self) -> Any:
        event = await self.events.get()
        if isinstance(event, Exception):
            raise event
        if isinstance(event, (BatchDone, WorkerDied)):
            self.busy = False
        if isinstance(event, WorkerDied):
            self.info = None
        return event

    def emit(self, *events: Any) -> None:
        for event in events:
            self.events.put_nowait(event)


class RecordingDelivery:
    """Records what the user would see; `gate` can hold result posts (a slow Discord)."""

    def __init__(self, store: Store, log: list[str]) -> None:
        self.store = store
        self.log = log
        self.calls: list[tuple[str, int, Any]] = []
        self.gate: asyncio.Event | None = None

    async def show_status(self, job: Job, text: str, cancellable: bool) -> None:
        self.calls.append(("status", job.id, text))

    async def deliver_result(self, job: Job) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await self.store.update_job(job.id, result_message_id=9000 + job.id)
        self.calls.append(("result", job.id, job.status_message_id))
        self.log.append(f"result {job.id}")

    async def deliver_failure(self, job: Job, message: str) -> None:
        self.calls.append(("failure", job.id, message))

    async def deliver_cancelled(self, job: Job) -> None:
        self.calls.append(("cancelled", job.id, job.status_message_id))

    async def deliver_withheld(self, job: Job) -> None:
        self.calls.append(("withheld", job.id, job.status_message_id))

    def of(self, kind: str) -> list[tuple[str, int, Any]]:
        return [c for c in self.calls if c[0] == kind]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "max_batch": 1,
        "max_jobs_per_user": 10,
        "progress_interval_s": 0.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Harness:
    def __init__(self, tmp_path: Path, store: Store, **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.store = store
        self.log: list[str] = []
        self.worker = ScriptedWorker(self.log)
        self.delivery = RecordingDelivery(store, self.log)
        self.settings = make_settings(tmp_path, **settings)
        self.service = JobService(self.settings, store, self.worker, self.delivery)  # type: ignore[arg-type]
        self.finished: list[Job] = []
        self.service.hooks.finished.append(self._on_finished)

    async def _on_finished(self, job: Job) -> None:
        self.finished.append(job)

    async def start(self) -> JobService:
        await self.service.start()
        await asyncio.wait_for(self.service.ready.wait(), WAIT_S)
        return self.service

    async def submit(self, user_id: int = 7, **fields: Any) -> Job:
        return await self.service.submit(new_job(user_id, **fields))

    def result(self, job_id: int, **fields: Any) -> GenerationResult:
        """A finished result whose PNG exists, as the worker would leave it."""
        out = self.settings.data_dir / "outputs" / f"{job_id}.png"
        if not fields.get("withheld"):
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(out)
        return GenerationResult(str(job_id), str(out), 1, 2, 2, 8, 8, 0.5, **fields)

    async def job(self, job_id: int) -> Job:
        job = await self.store.get_job(job_id)
        assert job is not None
        return job


def new_job(user_id: int = 7, **fields: Any) -> NewJob:
    values: dict[str, Any] = {
        "guild_id": GUILD, "channel_id": 2, "user_id": user_id, "prompt": "a fox",
        "strength": 0.5, "steps": 4, "guidance": 7.5, "input_path": "inputs/x.png",
        "input_width": 64, "input_height": 64,
    }  # fmt: skip
    values.update(fields)
    return NewJob(**values)


async def until(check: Callable[[], Any], what: str) -> None:
    """Wait for the service's background work; fails (does not hang) if it never happens."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


@pytest.fixture
async def h(tmp_path: Path, store: Store) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, store)
    yield harness
    await harness.service.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_dispatch, "DISPATCH_RETRY_S", 0.01)
    monkeypatch.setattr(job_dispatch, "LOOP_RESTART_S", 0.01)


# -- fault 1: the dispatch loop cannot die -------------------------------------------------
@pytest.mark.parametrize("fault", ["submit", "sqlite"])
async def test_a_dispatch_error_puts_the_job_back_and_the_loop_goes_on(
    h: Harness, fault: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if fault == "submit":
        h.worker.submit_errors.append(RuntimeError("worker is not running"))
    else:
        real = h.service.store.start_jobs
        failures = [sqlite3.OperationalError("disk I/O error")]

        async def flaky(job_ids: list[int], started_at: float) -> Any:
            if failures:
                raise failures.pop()
            return await real(job_ids, started_at)

        monkeypatch.setattr(h.service.store, "start_jobs", flaky)
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the retried dispatch")
    assert [r.job_id for r in h.worker.batches[0]] == [str(job.id)]
    assert "dispatching jobs 1 failed" in caplog.text and "Traceback" in caplog.text
    assert (await h.job(job.id)).state == "running"

    h.worker.emit(Finished(h.result(job.id)), BatchDone((str(job.id),)))
    await until(lambda: h.delivery.of("result"), "the result")
    done = await h.job(job.id)
    assert (done.state, done.counted, done.result_message_id) == ("done", 1, 9000 + job.id)
    # the loop still serves the next job
    second = await h.submit(user_id=8)
    await until(lambda: len(h.worker.batches) == 2, "the next dispatch")
    assert h.worker.batches[1][0].job_id == str(second.id)


async def test_a_job_that_never_dispatches_fails_refunded_and_others_go_on(h: Harness) -> None:
    h.worker.submit_errors.extend(RuntimeError("broken") for _ in range(jobs_dispatch_tries()))
    await h.start()
    job = await h.submit()

    async def failed() -> bool:
        return (await h.job(job.id)).state == "failed"

    await until(failed, "the job to fail")
    row = await h.job(job.id)
    assert row.counted == 0 and h.worker.batches == []
    await until(lambda: h.delivery.of("failure"), "the failure message")
    [(_, _, message)] = h.delivery.of("failure")
    assert "did not count against your quota" in message and "broken" not in message
    other = await h.submit(user_id=8)
    await until(lambda: h.worker.batches, "the next job's dispatch")
    assert h.worker.batches[0][0].job_id == str(other.id)


def jobs_dispatch_tries() -> int:
    return job_dispatch.DISPATCH_ATTEMPTS


async def test_the_supervisor_restarts_a_loop_that_failed(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await h.start()
    h.worker.emit(RuntimeError("reading the pipe failed"))
    await until(lambda: "dispatch loop failed; restarting it" in caplog.text, "the restart log")
    job = await h.submit()
    await until(lambda: h.worker.batches, "a dispatch after the restart")
    assert h.worker.batches[0][0].job_id == str(job.id)


async def test_a_service_task_that_ends_is_started_again(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    service = await h.start()
    first = service._task
    assert first is not None
    first.cancel()
    await until(lambda: service._task is not first, "a new task")
    assert "task ended (cancelled); restarting it" in caplog.text
    job = await h.submit()
    await until(lambda: h.worker.batches, "a dispatch by the new task")
    assert h.worker.batches[0][0].job_id == str(job.id)


async def test_one_failing_end_does_not_stop_the_worker_restart(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.settings.max_batch = 2
    service = await h.start()
    h.worker.busy = True  # hold dispatch until both are queued, so they share a batch
    a, b = await h.submit(7), await h.submit(8)
    h.worker.busy = False
    service._wake.set()
    await until(lambda: h.worker.batches, "the batch")
    real_end = service._end

    async def end(job_id: int, **values: Any) -> Job | None:
        if job_id == a.id:
            raise sqlite3.OperationalError("database is locked")
        return await real_end(job_id, **values)

    monkeypatch.setattr(service, "_end", end)
    h.worker.emit(WorkerDied(-9, (str(a.id), str(b.id))))
    await until(lambda: h.worker.restarts == 1, "the worker restart")
    await until(lambda: h.delivery.of("failure"), "b's failure message")
    assert h.delivery.of("failure") == [("failure", b.id, CRASH_MESSAGE)]
    crashed = await h.job(b.id)
    assert (crashed.state, crashed.counted) == ("failed", 0)


# -- fault 2: a device-broken exit -------------------------------------------------------
async def test_jobs_never_started_go_back_to_the_head_of_their_queue(h: Harness) -> None:
    service = await h.start()
    first = await h.submit(7)
    await until(lambda: h.worker.batches, "the first dispatch")
    h.worker.emit(Finished(h.result(first.id)), BatchDone((str(first.id),)))
    await until(lambda: h.delivery.of("result"), "the first result")

    lost, behind = await h.submit(7), await h.submit(8)  # behind waits in the same guild
    await until(lambda: len(h.worker.batches) == 2, "lost's dispatch")
    # The worker exits (device broken) before it started `lost`.
    h.worker.emit(WorkerDied(70, (), unstarted=(str(lost.id),)))
    await until(lambda: h.worker.restarts == 1, "the restart")
    await until(lambda: len(h.worker.batches) == 3, "the dispatch after the restart")
    assert h.worker.batches[2][0].job_id == str(lost.id)  # ahead of `behind`
    row = await h.job(lost.id)
    assert (row.state, row.counted, row.error) == ("running", 1, None)
    assert not h.delivery.of("failure") and str(behind.id) in service.queue


async def test_a_running_job_of_a_dead_worker_fails_refunded(h: Harness) -> None:
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    h.worker.emit(WorkerDied(-9, (str(job.id),)))
    await until(lambda: h.delivery.of("failure"), "the failure")
    row = await h.job(job.id)
    assert (row.state, row.counted) == ("failed", 0)
    assert h.worker.restarts == 1


# -- faults 3 and 12: shutdown -----------------------------------------------------------
async def test_stop_waits_for_a_result_being_posted_then_stops_the_worker(h: Harness) -> None:
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    h.delivery.gate = asyncio.Event()
    h.worker.emit(Finished(h.result(job.id)), BatchDone((str(job.id),)))

    async def done() -> bool:
        return (await h.job(job.id)).state == "done"

    await until(done, "the job to finish")
    stopping = asyncio.create_task(h.service.stop())
    await asyncio.sleep(0)
    h.delivery.gate.set()
    await stopping
    assert h.log == [f"result {job.id}", "worker stop"]
    assert (await h.job(job.id)).result_message_id == 9000 + job.id


async def test_stop_is_bounded_and_start_delivers_what_it_cut_off(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "STOP_DELIVERY_GRACE_S", 0.05)
    first = Harness(tmp_path, store)
    await first.start()
    job = await first.submit()
    await until(lambda: first.worker.batches, "the dispatch")
    first.delivery.gate = asyncio.Event()  # Discord never answers
    first.worker.emit(Finished(first.result(job.id)), BatchDone((str(job.id),)))

    async def done() -> bool:
        return (await first.job(job.id)).state == "done"

    await until(done, "the job to finish")
    await first.service.stop()
    cut = await first.job(job.id)
    assert (cut.state, cut.result_message_id) == ("done", None)
    assert first.log == ["worker stop"] and first.finished == []

    second = Harness(tmp_path, store)
    await second.start()
    await until(lambda: second.finished, "the gallery hook")
    assert second.delivery.of("result") == [("result", job.id, None)]
    assert (await second.job(job.id)).result_message_id == 9000 + job.id
    await second.service.stop()


async def test_stop_puts_running_jobs_back_and_the_next_start_runs_them(
    tmp_path: Path, store: Store
) -> None:
    first = Harness(tmp_path, store)
    await first.start()
    job = await first.submit()
    await until(lambda: first.worker.batches, "the dispatch")
    await first.service.stop()
    row = await first.job(job.id)
    assert (row.state, row.started_at, row.counted) == ("queued", None, 1)

    second = Harness(tmp_path, store)
    await second.start()
    await until(lambda: second.worker.batches, "the dispatch after the restart")
    assert second.worker.batches[0][0].job_id == str(job.id)
    await second.service.stop()


async def test_no_output_file_nothing_to_deliver_at_start(tmp_path: Path, store: Store) -> None:
    first = Harness(tmp_path, store)
    job = await first.submit()
    await store.update_job(job.id, state="done", output_path=f"outputs/{job.id}.png")
    await first.start()
    await first.service.stop()
    assert first.delivery.of("result") == []


# -- fault 4: a job that finishes before its status message is attached -------------------
@pytest.mark.parametrize("message_id", [555, None])
async def test_a_fast_result_waits_for_its_status_message(
    h: Harness, message_id: int | None
) -> None:
    await h.start()
    job = await h.submit(interaction_token="tok", application_id=1)
    await until(lambda: h.worker.batches, "the dispatch")
    h.worker.emit(Finished(h.result(job.id)), BatchDone((str(job.id),)))

    async def done() -> bool:
        return (await h.job(job.id)).state == "done"

    await until(done, "the job to finish")
    for _ in range(20):
        await asyncio.sleep(0)
    assert h.delivery.of("result") == []  # held until the caller attached its message
    await h.service.attach_status_message(job.id, message_id)
    await until(lambda: h.delivery.of("result"), "the result")
    assert h.delivery.of("result") == [("result", job.id, message_id)]


# -- fault 7: one job of a batch cancelled -------------------------------------------------
async def test_cancelling_one_job_of_a_batch(h: Harness) -> None:
    h.settings.max_batch = 4
    service = await h.start()
    h.worker.busy = True
    a, b, c = [await h.submit(u) for u in (7, 8, 9)]
    h.worker.busy = False
    service._wake.set()
    await until(lambda: h.worker.batches, "the batch")
    assert [r.job_id for r in h.worker.batches[0]] == [str(a.id), str(b.id), str(c.id)]

    assert await service.cancel(b.id, 8, can_manage=False) == "Stopping it at the next step."
    assert h.worker.cancels == [str(b.id)]
    h.worker.emit(Cancelled(str(b.id)))
    await until(lambda: h.delivery.of("cancelled"), "b's Cancelled message")
    row = await h.job(b.id)
    assert (row.state, row.counted) == ("cancelled", 0)

    all_ids = (str(a.id), str(b.id), str(c.id))
    h.worker.emit(Progress(all_ids, 2, 4))
    late = h.result(b.id)
    h.worker.emit(Finished(late), Finished(h.result(a.id)), Finished(h.result(c.id)))
    h.worker.emit(BatchDone(all_ids))
    await until(lambda: len(h.delivery.of("result")) == 2, "a's and c's results")
    await asyncio.gather(*service._background)
    assert {c[1] for c in h.delivery.of("result")} == {a.id, c.id}
    assert b.id not in {c[1] for c in h.delivery.calls if c[0] == "status"}
    assert not Path(late.output_path).exists()  # the late result was discarded
    row = await h.job(b.id)
    assert (row.state, row.counted, row.result_message_id) == ("cancelled", 0, None)
    for job in (a, c):
        assert ((await h.job(job.id)).state, (await h.job(job.id)).counted) == ("done", 1)


# -- safety (issue 9 §3) ------------------------------------------------------------------
async def test_a_withheld_result_counts_is_recorded_and_skips_the_gallery(h: Harness) -> None:
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    h.worker.emit(Finished(h.result(job.id, nsfw=True, withheld=True)), BatchDone((str(job.id),)))
    await until(lambda: h.delivery.of("withheld"), "the withheld notice")
    await asyncio.gather(*h.service._background)
    row = await h.job(job.id)
    assert (row.state, row.nsfw, row.counted, row.output_path) == ("withheld", 1, 1, None)
    assert h.delivery.of("result") == [] and h.finished == []


async def test_an_allowed_nsfw_result_is_done_and_marked(h: Harness) -> None:
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    h.worker.emit(Finished(h.result(job.id, nsfw=True)), BatchDone((str(job.id),)))
    await until(lambda: h.finished, "the gallery hook")
    row = await h.job(job.id)
    assert (row.state, row.nsfw, row.counted) == ("done", 1, 1)
    assert h.finished[0].nsfw == 1


@pytest.mark.parametrize(
    ("channel_nsfw", "setting", "allowed"),
    [(True, "allow", True), (True, "filter", False), (False, "allow", False), (True, None, False)],
)
async def test_unfiltered_only_in_an_age_restricted_channel_of_a_server_that_allows_it(
    h: Harness, channel_nsfw: bool, setting: str | None, allowed: bool
) -> None:
    if setting is not None:
        async with h.store.transaction() as db:
            await db.execute(
                "INSERT INTO guild_settings (guild_id, nsfw_channels) VALUES (?, ?)",
                (GUILD, setting),
            )
    await h.start()
    await h.submit(channel_nsfw=channel_nsfw)
    await until(lambda: h.worker.batches, "the dispatch")
    assert h.worker.batches[0][0].allow_nsfw is allowed


async def test_the_token_expires_15_minutes_after_the_interaction_was_created(
    h: Harness,
) -> None:
    created = h.service.clock() - 600
    job = await h.submit(interaction_token="t", application_id=1, interaction_created_at=created)
    assert job.token_expires_at == created + jobs_module.TOKEN_LIFETIME_S
    plain = await h.submit(user_id=8, interaction_token="t", application_id=1)
    assert plain.token_expires_at is not None
    assert plain.token_expires_at >= created + 600 + jobs_module.TOKEN_LIFETIME_S - 5


async def test_a_worker_event_error_is_logged_and_the_loop_goes_on(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await h.start()
    caplog.set_level(logging.ERROR)
    h.worker.emit(Cancelled("not-a-number"))
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    assert "handling worker event" in caplog.text
    assert h.worker.batches[0][0].job_id == str(job.id)


async def test_a_job_cancelled_while_handed_to_a_dying_worker_ends_cancelled(h: Harness) -> None:
    service = await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    assert await service.cancel(job.id, 7, can_manage=False) == "Stopping it at the next step."
    h.worker.emit(WorkerDied(70, (), unstarted=(str(job.id),)))
    await until(lambda: h.delivery.of("cancelled"), "the Cancelled message")
    row = await h.job(job.id)
    assert (row.state, row.counted) == ("cancelled", 0)
    assert str(job.id) not in service.queue and len(h.worker.batches) == 1


async def test_a_set_is_queued_whole_as_one_entry_or_not_at_all(
    tmp_path: Path, store: Store
) -> None:
    """A series is one entry against the per-user cap, even for a member who already holds
    all but one entry; one job refused by a reserve hook leaves no row and nothing queued."""
    h = Harness(tmp_path, store, max_jobs_per_user=3)
    service = h.service  # not started: nothing is dispatched, the queue holds what is queued
    for _ in range(2):
        await h.submit()
    groups: list[list[int]] = []

    async def group(db: Any, jobs: list[Job]) -> str:
        groups.append([j.id for j in jobs])
        return "series:1"

    jobs = await service.submit_many([new_job(), new_job(), new_job()], group=group)
    assert groups == [[j.id for j in jobs]]
    assert service.queue.entries(7) == 3 and len(service.queue) == 5
    with pytest.raises(UserError, match="3 jobs waiting or running"):
        await h.submit()

    calls = 0

    def third_is_refused(conn: Any, new: NewJob, now: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise UserError("no more today")

    service.hooks.reserve.append(third_is_refused)
    rows_before = len(await store.jobs_in_states(("queued",)))
    with pytest.raises(UserError, match="no more today"):
        await service.submit_many([new_job(user_id=8) for _ in range(3)], group=group)
    assert len(groups) == 1 and len(service.queue) == 5
    assert len(await store.jobs_in_states(("queued",))) == rows_before


# -- no double run: a worker's death and another worker's result cross ----------------------
@pytest.mark.parametrize("when", ["on its way", "being written"])
async def test_a_worker_scaled_down_while_a_result_is_handled_runs_nothing_twice(
    h: Harness, when: str
) -> None:
    """Job a ran on one worker, b was granted to another that is scaled down. a's result is
    on its way (its backend no longer lists a, the event is behind the death) or is being
    written (the row write waits): a is never queued or run again, one result, one done row;
    b, never started, runs again."""
    h.settings.max_batch = 2
    service = await h.start()
    h.worker.busy = True  # hold dispatch until both are queued, so they share a batch
    a, b = await h.submit(7), await h.submit(8)
    h.worker.busy = False
    service._wake.set()
    await until(lambda: h.worker.batches, "the batch")
    assert [r.job_id for r in h.worker.batches[0]] == [str(a.id), str(b.id)]
    died = WorkerDied(None, (), unstarted=(str(b.id),))
    if when == "on its way":
        h.worker.held = []  # the backend forgot a as its result arrived, b with its worker
        h.worker.emit(died, Finished(h.result(a.id)))
    else:
        async with h.store._write_lock:  # the row write of a's end waits
            h.worker.emit(Finished(h.result(a.id)))
            await until(lambda: str(a.id) in service._finals, "a's result being handled")
            h.worker.emit(died)
            await until(lambda: str(b.id) in service.queue, "b put back (its row waits)")
    await until(lambda: len(h.worker.batches) == 2, "b's second dispatch")
    await until(lambda: h.delivery.of("result"), "a's result")
    assert [r.job_id for r in h.worker.batches[1]] == [str(b.id)]
    assert str(a.id) not in service.queue and h.delivery.of("result") == [("result", a.id, None)]
    rows = await (await h.store.db.execute("SELECT id, state FROM jobs ORDER BY id")).fetchall()
    assert [tuple(r) for r in rows] == [(a.id, "done"), (b.id, "running")]


async def test_a_job_whose_row_ended_is_never_dispatched_nor_queued_again(h: Harness) -> None:
    """The state guard in SQL: queued → running only from queued, back to queued never from
    an end, whatever the in-memory queue says."""
    service = await h.start()
    h.worker.busy = True
    job = await h.submit()
    await h.store.update_job(job.id, state="cancelled")  # ended behind the queue's back
    h.worker.busy = False
    service._wake.set()
    await until(lambda: str(job.id) not in service.queue, "the queue to let it go")
    assert h.worker.batches == [] and (await h.job(job.id)).state == "cancelled"

    other = await h.submit(8)
    await until(lambda: h.worker.batches, "the other job's dispatch")
    [queued] = service.queue.running
    await h.store.update_job(other.id, state="failed")
    await service._requeue([queued])
    assert str(other.id) not in service.queue and (await h.job(other.id)).state == "failed"
