"""The status board's throttle, on an injected clock: no two edits of one job's message
closer than the interval (`PROGRESS_INTERVAL_S`), and the newest text always wins."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

from bot.jobs.status import StatusBoard
from config import Settings

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
    assert service.status._interval == 3.5
