"""The status board's throttle, on an injected clock: no two edits of one job's message
closer than the interval (`PROGRESS_INTERVAL_S`), and the newest text always wins; its bound
per job: a waiting job is edited at place milestones only, a running one at its run stages,
one edit in flight per message; and 300 jobs waiting behind a fake worker through the real
`JobService` each cost at most the documented number of edits."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.jobs.service import JobService, NewJob
from bot.jobs.status import PLACE_MILESTONES, REQUESTS_PER_JOB, RUN_EDITS, WAIT_EDITS, StatusBoard
from bot.store.db import Job, Store
from config import Settings
from pipeline.request import EngineInfo, GenerationRequest, GenerationResult
from pipeline.worker import BatchDone, Finished, Progress, Started

INTERVAL = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, int, str, bool]] = []
        self.fail_next = False

    async def __call__(self, job_id: int, text: str, cancellable: bool) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("429 Too Many Requests")
        self.sent.append((self.clock.now, job_id, text, cancellable))

    def texts(self, job_id: int) -> list[str]:
        return [text for _, j, text, _ in self.sent if j == job_id]


def board_at(clock: Clock) -> tuple[StatusBoard, Recorder]:
    recorder = Recorder(clock)
    return StatusBoard(recorder, INTERVAL, clock=clock), recorder


async def tick(board: StatusBoard, clock: Clock, at: float) -> None:
    clock.now = at
    await asyncio.gather(*board.flush_due())


async def test_edits_are_throttled_and_the_newest_text_wins() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    board.set(1, "a")
    await tick(board, clock, 0.0)  # the first edit goes out at once
    for at, text in [(0.5, "b"), (1.0, "c"), (1.9, "d")]:
        board.set(1, text)
        await tick(board, clock, at)
    assert rec.texts(1) == ["a"]
    await tick(board, clock, 2.0)
    assert rec.texts(1) == ["a", "d"]  # b and c were never sent: d replaced them
    board.set(1, "e")
    await tick(board, clock, 3.9)
    assert rec.texts(1) == ["a", "d"]
    await tick(board, clock, 4.0)
    assert rec.texts(1) == ["a", "d", "e"]


async def test_unchanged_text_is_not_sent_again_and_jobs_are_independent() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    board.set(1, "same")
    board.set(2, "other", cancellable=False)
    await tick(board, clock, 0.0)
    board.set(1, "same")
    await tick(board, clock, 10.0)
    assert rec.sent == [(0.0, 1, "same", True), (0.0, 2, "other", False)]


async def test_a_forgotten_job_is_not_edited() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    board.set(1, "queued")
    board.forget(1)  # it ended; its final message comes next
    await tick(board, clock, 0.0)
    assert rec.sent == []


async def test_a_status_edit_waits_for_a_final_message_holding_the_lock() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    board.set(1, "step 3")
    async with board.lock(1):
        edits = board.flush_due()
        await asyncio.sleep(0)
        assert rec.sent == []  # not while the final message is being written
        board.release(1)  # the final message is out
    await asyncio.gather(*edits)
    assert rec.sent == []  # and never after it


async def test_a_failed_edit_is_retried_after_the_interval() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    rec.fail_next = True
    board.set(1, "step 1")
    await tick(board, clock, 0.0)
    await tick(board, clock, 1.0)
    assert rec.sent == []
    await tick(board, clock, 2.0)
    assert rec.texts(1) == ["step 1"]


async def test_random_updates_never_edit_closer_than_the_interval() -> None:
    rng = random.Random(7)
    clock = Clock()
    board, rec = board_at(clock)
    last: dict[int, str] = {}
    at = 0.0
    for n in range(400):
        at += rng.choice([0.05, 0.25, 0.25, 0.5, 1.0])
        job = rng.choice([1, 2, 3])
        last[job] = f"{job}:{n}"
        board.set(job, last[job])
        await tick(board, clock, at)
    await tick(board, clock, at + INTERVAL)  # the last texts are due by now
    for job in (1, 2, 3):
        times = [t for t, j, _, _ in rec.sent if j == job]
        assert all(b - a >= INTERVAL for a, b in itertools.pairwise(times)), times
        assert rec.texts(job)[-1] == last[job]


def test_the_service_uses_progress_interval_s(tmp_path: Path) -> None:
    from bot.jobs.service import JobService

    settings = Settings(_env_file=None, data_dir=tmp_path, progress_interval_s=3.5)  # type: ignore[call-arg]
    service = JobService(settings, None, None, None)  # type: ignore[arg-type]
    assert service.status._interval == 3.5 and service.status._run_grace == 3.5
    assert service.status._place_grace == 3.5


def test_the_wait_shown_counts_every_worker_online(tmp_path: Path) -> None:
    """250 jobs ahead are 250 images' time for one GPU, two and a half for a hundred."""
    from bot.jobs.service import JobService
    from bot.ui.render import queue_text

    class Fleet:
        workers_online = 100

    settings = Settings(_env_file=None, data_dir=tmp_path, max_batch=1)  # type: ignore[call-arg]
    for worker, seconds in ((Fleet(), 3.0), (object(), 251.0)):
        service = JobService(settings, None, worker, None)  # type: ignore[arg-type]
        service.seconds_per_image = 1.0
        assert service._place_text(3, 250, None) == queue_text(3, seconds)


async def test_a_running_jobs_first_edit_waits_the_grace_so_a_quick_job_skips_it() -> None:
    """A job done within `run_grace` of being handed to a GPU goes from its place straight
    to its picture (no "Starting…" edit); a longer one gets its first run edit then, showing
    the newest step, and the run edits stay within the bound."""
    clock = Clock()
    rec = Recorder(clock)
    board = StatusBoard(rec, INTERVAL, clock=clock, run_grace=2.0)
    board.set(1, "Starting")
    board.progress(1, 1, 4)
    await tick(board, clock, 0.5)
    await tick(board, clock, 1.5)
    assert rec.texts(1) == []  # within the grace: nothing sent
    board.release(1)  # its picture came: no edit was ever spent on its run

    board.set(2, "Starting")
    await tick(board, clock, 2.0)
    assert rec.texts(2) == []  # its grace counts from its own start
    board.progress(2, 3, 20)
    await tick(board, clock, 4.0)
    assert len(rec.texts(2)) == 1 and "step 3 of 20" in rec.texts(2)[0]
    for step in range(4, 21):
        board.progress(2, step, 20)
        await tick(board, clock, clock.now + INTERVAL)
    assert len(rec.texts(2)) <= RUN_EDITS


# -- the bound per job --------------------------------------------------------------------


class Queue:
    """Places for the board: job ids in order, one server, place = index + 1."""

    def __init__(self, n: int) -> None:
        self.jobs = list(range(1, n + 1))

    def __call__(self) -> Iterator[tuple[int, int, int]]:
        for before, job_id in enumerate(self.jobs):
            yield job_id, before + 1, before


def place_board(clock: Clock, queue: Queue, note: list[str | None]) -> tuple[StatusBoard, Recorder]:
    recorder = Recorder(clock)
    board = StatusBoard(
        recorder,
        INTERVAL,
        clock=clock,
        places=queue,
        place_text=lambda place, before, n: f"place {place}" + (f" {n}" if n else ""),
        note=lambda: note[0],
    )
    return board, recorder


async def test_a_waiting_job_is_edited_only_at_place_milestones() -> None:
    clock, queue, note = Clock(), Queue(300), [None]
    board, rec = place_board(clock, queue, note)
    board.places_changed()
    await tick(board, clock, 0.0)
    assert rec.sent == []  # each status message was posted showing its place
    while len(queue.jobs) > 1:  # one job leaves the head at a time
        queue.jobs.pop(0)
        board.places_changed()
        await tick(board, clock, clock.now + INTERVAL)
    assert rec.texts(300) == [f"place {m}" for m in PLACE_MILESTONES]
    assert rec.texts(4) == ["place 1"]
    assert max(len(rec.texts(j)) for j in range(1, 301)) == WAIT_EDITS


async def test_a_milestone_edit_waiting_for_the_interval_shows_the_newest_place() -> None:
    clock, queue, note = Clock(), Queue(30), [None]
    board, rec = place_board(clock, queue, note)
    board.places_changed()
    await tick(board, clock, 0.0)
    del queue.jobs[:10]  # job 30 reaches the 20th place...
    board.places_changed()
    await tick(board, clock, 0.0)
    assert rec.texts(30) == ["place 20"]
    del queue.jobs[:3]  # ...and moves on before its next edit is allowed
    board.places_changed()
    await tick(board, clock, 1.0)
    del queue.jobs[:14]
    board.places_changed()
    await tick(board, clock, 1.5)
    assert rec.texts(30) == ["place 20"]
    await tick(board, clock, 2.0)
    assert rec.texts(30) == ["place 20", "place 3"]  # the 5th was passed: one edit, newest


async def test_a_milestone_edit_waits_the_grace_so_a_job_that_starts_skips_it() -> None:
    """With a fleet, a job serves its last 20 places in well under a second: its milestone
    edit waits `place_grace`, and a job that starts meanwhile never spends it (its run shows
    next). One still waiting then gets one edit, with its newest place."""
    clock, queue = Clock(), Queue(30)
    rec = Recorder(clock)
    board = StatusBoard(
        rec, INTERVAL, clock=clock, places=queue, place_grace=2.0, run_grace=2.0,
        place_text=lambda place, before, n: f"place {place}",
    )  # fmt: skip
    board.places_changed()
    await tick(board, clock, 0.0)
    del queue.jobs[:12]  # jobs 29 and 30 reach the 20th place and beyond...
    board.places_changed()
    await tick(board, clock, 0.5)
    del queue.jobs[:17]  # ...job 29 reaches the 1st and job 30 the 2nd...
    board.places_changed()
    await tick(board, clock, 1.5)
    assert rec.sent == []  # within the grace
    board.set(29, "Starting")  # ...and job 29 starts: its place edit is never sent
    del queue.jobs[0]
    board.places_changed()
    await tick(board, clock, 2.5)
    assert rec.texts(29) == [] and rec.texts(30) == ["place 1"]  # the newest place


async def test_the_backend_note_appearing_is_worth_an_edit() -> None:
    clock, queue, note = Clock(), Queue(3), [None]
    board, rec = place_board(clock, queue, note)
    board.places_changed()
    await tick(board, clock, 0.0)
    note[0] = "no workers"
    board.places_changed()
    await tick(board, clock, 1.0)
    assert [rec.texts(j) for j in (1, 2, 3)] == [
        ["place 1 no workers"], ["place 2 no workers"], ["place 3 no workers"]
    ]


async def test_a_running_job_is_edited_at_its_run_stages_only() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    board.set(1, "Starting")
    await tick(board, clock, 0.0)
    for step in range(1, 101):
        board.progress(1, step, 100)
        await tick(board, clock, clock.now + INTERVAL)
    texts = rec.texts(1)
    assert len(texts) == RUN_EDITS, texts
    assert texts[0] == "Starting"
    assert "step 1 of 100" in texts[1] and "step 50 of 100" in texts[2]


async def test_a_pending_progress_text_shows_the_newest_step() -> None:
    clock = Clock()
    board, rec = board_at(clock)
    board.set(1, "Starting")
    await tick(board, clock, 0.0)
    board.progress(1, 1, 10)
    board.progress(1, 3, 10)  # the first-step edit still waits for the interval
    await tick(board, clock, 2.0)
    assert "step 3 of 10" in rec.texts(1)[1]


async def test_at_most_one_edit_in_flight_per_message() -> None:
    clock = Clock()
    release = asyncio.Event()
    calls: list[str] = []

    async def slow_send(job_id: int, text: str, cancellable: bool) -> None:
        calls.append(text)
        await release.wait()  # discord.py waiting out a 429

    board = StatusBoard(slow_send, INTERVAL, clock=clock)
    board.set(1, "a")
    first = board.flush_due()
    await asyncio.sleep(0)
    for n in range(10):  # many intervals pass while the first edit waits
        board.set(1, f"b{n}")
        clock.now += INTERVAL
        assert board.flush_due() == []
    release.set()
    await asyncio.gather(*first)
    assert calls == ["a"]
    clock.now += INTERVAL
    await asyncio.gather(*board.flush_due())
    assert calls == ["a", "b9"]


# -- through the real job service -------------------------------------------------------

INFO = EngineInfo("fake", "cpu", "fp32", 64, "Fake")
STEPS = 8


class FakeWorker:
    """The worker backend's surface, no model: each batch reports every step and finishes.
    Every event is followed by a flush of the board, the most edits a real tick could make."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.info: EngineInfo | None = None
        self.open = asyncio.Event()
        self.busy = False
        self.board: StatusBoard | None = None

    async def start(self) -> EngineInfo:
        self.info = INFO
        return INFO

    async def restart(self) -> EngineInfo:
        return await self.start()

    async def stop(self, timeout: float = 10.0) -> None:
        self.info = None

    @property
    def free_slots(self) -> int:
        return 4 if self.open.is_set() and not self.busy else 0

    @property
    def running(self) -> tuple[str, ...]:
        return ()

    def submit(self, batch: tuple[GenerationRequest, ...]) -> None:
        self.busy = True
        ids = tuple(r.job_id for r in batch)
        self.events.put_nowait(Started(ids))
        for step in range(1, STEPS + 1):
            self.events.put_nowait(Progress(ids, step, STEPS))
        for r in batch:
            result = GenerationResult(r.job_id, r.output_path, 1, STEPS, STEPS, 64, 64, 0.5)
            self.events.put_nowait(Finished(result))
        self.events.put_nowait(BatchDone(ids))

    def cancel(self, job_id: str) -> None:
        pass

    async def next_event(self) -> Any:
        if not self.open.is_set():
            await self.open.wait()
            return Started(())  # nothing happened, but the dispatch loop looks again
        event = await self.events.get()
        if self.board is not None:
            await asyncio.gather(*self.board.flush_due())
        if isinstance(event, BatchDone):
            self.busy = False
        return event


class Recording:
    def __init__(self) -> None:
        self.status: dict[int, list[str]] = {}
        self.results: list[int] = []

    async def show_status(self, job: Job, text: str, cancellable: bool) -> None:
        self.status.setdefault(job.id, []).append(text)

    async def deliver_result(self, job: Job) -> None:
        self.results.append(job.id)

    async def deliver_failure(self, job: Job, message: str) -> None:
        raise AssertionError(message)

    async def deliver_cancelled(self, job: Job) -> None:
        raise AssertionError("cancelled")

    async def deliver_withheld(self, job: Job) -> None:
        raise AssertionError("withheld")


async def test_300_waiting_jobs_each_cost_at_most_the_bound(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, progress_interval_s=0.0, max_batch=4,
        max_jobs_per_user=100, max_queue_per_guild=300, max_queue_total=300,
    )  # fmt: skip
    store = await Store.open(settings.db_path)
    worker, delivery = FakeWorker(), Recording()
    service = JobService(settings, store, worker, delivery)  # type: ignore[arg-type]
    worker.board = service.status
    try:
        await service.start()
        jobs = []
        for n in range(300):  # 3 servers, 10 members each, 10 jobs each
            new = NewJob(
                guild_id=1 + n % 3, channel_id=5, user_id=100 + n % 30, prompt="a fox",
                strength=1.0, steps=STEPS, guidance=7.5, input_path="inputs/x.png",
                input_width=64, input_height=64,
            )  # fmt: skip
            job = await service.submit(new)
            await service.attach_status_message(job.id, 10_000 + job.id)
            jobs.append(job.id)
        assert len(service.queue) == 300
        worker.open.set()
        for _ in range(3000):
            if len(delivery.results) == 300:
                break
            await asyncio.sleep(0.01)
        assert sorted(delivery.results) == jobs
    finally:
        await service.stop()
        await store.close()
    waiting = {j: [t for t in delivery.status.get(j, []) if "queue" in t] for j in jobs}
    running = {j: [t for t in delivery.status.get(j, []) if "queue" not in t] for j in jobs}
    assert max(len(t) for t in waiting.values()) <= WAIT_EDITS
    assert max(len(t) for t in running.values()) <= RUN_EDITS
    # the deepest job (100th in its server) was told as it passed the milestones (batches
    # of 4 move places by more than one, so a milestone may show as the place just past it)
    places = [int(t.split(" ", 2)[1][:-2]) for t in waiting[jobs[-1]]]
    assert places[0] == 20 and len(places) >= 2 and places[1] <= 5, places
    assert REQUESTS_PER_JOB == 10


class PreviewRecorder(Recorder):
    """Records the preview each edit carried (None: the edit carried none)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.previews: list[bytes | None] = []

    async def __call__(  # type: ignore[override]
        self, job_id: int, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None:
        await super().__call__(job_id, text, cancellable)
        self.previews.append(preview)


async def test_previews_ride_the_run_edits_only_the_newest_and_a_stale_one_is_dropped() -> None:
    """Issue 29: a live preview never costs an edit of its own; an unsent one is replaced
    by a newer one (never queued), one too old when its edit goes out is dropped, and a
    hidden one says so."""
    from bot.jobs.status import PREVIEW_HIDDEN, PREVIEW_HIDDEN_TEXT, PREVIEW_MAX_AGE_S

    clock = Clock()
    rec = PreviewRecorder(clock)
    board = StatusBoard(rec, INTERVAL, clock=clock)
    board.set(1, "Starting…")
    await tick(board, clock, 0.0)
    board.progress(1, 1, 20, b"one")
    board.progress(1, 2, 20, b"two")  # replaces "one" before its edit
    await tick(board, clock, 2.0)  # the first-step edit carries the newest
    for step in range(3, 10):
        board.progress(1, step, 20, f"p{step}".encode())  # no new stage: no edit
        await tick(board, clock, 2.0 + step)
    assert rec.previews == [None, b"two"]
    board.progress(1, 10, 20, PREVIEW_HIDDEN)  # half-way: a flagged preview
    await tick(board, clock, 20.0)
    assert rec.previews[-1] == PREVIEW_HIDDEN and PREVIEW_HIDDEN_TEXT in rec.texts(1)[-1]
    assert len(rec.sent) == RUN_EDITS  # within the per-job bound

    board.set(2, "Starting…")
    await tick(board, clock, 30.0)
    board.progress(2, 1, 20, b"late")  # arrives at 30.0; its edit goes out much later
    await tick(board, clock, 30.0 + PREVIEW_MAX_AGE_S + 5)
    assert rec.sent[-1][1] == 2 and rec.previews[-1] is None  # the edit, without it
