"""A job the worker sends back through no fault of its own (`Failed.retry`: a shared UNet
call failed, the device broke) runs once more at the head of its queue; sent back a second
time it fails for good, refunded, with the worker's plain words (issue 25 item 7). The
worker side, on the tiny model, is tests/pipeline/test_step_errors.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.db import Store
from pipeline.worker import BatchDone, Failed, Progress, Started
from tests.bot.test_jobs import Harness, until

OOM = "Out of memory on cuda while generating. Try a smaller image or fewer images at once."


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


async def retries(store: Store, job_id: int) -> int:
    cursor = await store.db.execute("SELECT retries FROM jobs WHERE id=?", (job_id,))
    return (await cursor.fetchone())[0]


async def test_a_job_sent_back_runs_again_then_fails_for_good(h: Harness) -> None:
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the first dispatch")
    h.worker.emit(Failed(str(job.id), OOM, retry=True), BatchDone((str(job.id),)))
    await until(lambda: len(h.worker.batches) == 2, "the second attempt")
    assert [r.job_id for r in h.worker.batches[1]] == [str(job.id)]
    row = await h.job(job.id)
    assert (row.state, row.counted, row.error) == ("running", 1, None)  # not refunded yet
    assert await retries(h.store, job.id) == 1 and not h.delivery.of("failure")

    h.worker.emit(Failed(str(job.id), OOM, retry=True), BatchDone((str(job.id),)))
    await until(lambda: h.delivery.of("failure"), "the failure notice")
    row = await h.job(job.id)
    assert (row.state, row.counted, row.error) == ("failed", 0, OOM)  # refunded
    assert h.delivery.of("failure") == [("failure", job.id, OOM)]
    assert len(h.worker.batches) == 2  # no third run


async def test_a_job_that_failed_by_itself_is_not_run_again(h: Harness) -> None:
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    h.worker.emit(Failed(str(job.id), OOM), BatchDone((str(job.id),)))  # its own decode
    await until(lambda: h.delivery.of("failure"), "the failure notice")
    row = await h.job(job.id)
    assert (row.state, row.counted, row.error) == ("failed", 0, OOM)
    assert len(h.worker.batches) == 1 and await retries(h.store, job.id) == 0


async def test_the_old_runs_end_read_after_the_job_runs_again_leaves_it_running(
    h: Harness,
) -> None:
    """A step worker has free slots while a Run ends, so the job it sent back may be
    handed out again before that Run's BatchDone is read. That BatchDone is the old run's
    (it comes before the new run's Started): the new run goes on, its progress shown."""
    await h.start()
    job = await h.submit()
    job_id = str(job.id)
    await until(lambda: h.worker.batches, "the first dispatch")
    h.worker.busy = False  # slots free while the Run is in flight, as on a step worker
    h.worker.emit(Failed(job_id, OOM, retry=True))
    await until(lambda: len(h.worker.batches) == 2, "the second attempt")
    h.worker.emit(BatchDone((job_id,)), Started((job_id,)), Progress((job_id,), 1, 3))
    await until(lambda: h.service._progress.get(job.id) == (1, 3), "the new run's progress")
    assert h.service.queue.is_running(job_id)
