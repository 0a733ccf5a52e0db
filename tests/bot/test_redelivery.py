"""What a start does with what the last stop cut off (issue 25 items 9 and 12): partial
files are swept; final messages (results and notices) are delivered again, each at most
three starts, and a result that never gets through ends `undelivered`, refunded, with its
picture kept for /gallery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import bot.jobs.service as jobs_module
from bot.jobs.events import CRASH_MESSAGE
from bot.store.db import Job, Store
from pipeline.worker import BatchDone, Failed, Finished, WorkerDied
from tests.bot.test_jobs import Harness, until


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


async def test_a_start_sweeps_partial_files_a_stop_left(h: Harness) -> None:
    outputs = h.settings.data_dir / "outputs"
    outputs.mkdir(parents=True)
    (outputs / ".3.png.part").write_bytes(b"half a png")
    (outputs / "2.png").write_bytes(b"a whole png")
    await h.start()
    assert sorted(p.name for p in outputs.iterdir()) == ["2.png"]


async def _row(store: Store, job_id: int) -> dict[str, object]:
    cursor = await store.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,))
    return dict(await cursor.fetchone())


@pytest.mark.parametrize("crash", [False, True], ids=["failed", "worker-died"])
async def test_a_notice_a_stop_cut_off_goes_out_at_the_next_start(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, crash: bool
) -> None:
    monkeypatch.setattr(jobs_module, "STOP_DELIVERY_GRACE_S", 0.05)
    first = Harness(tmp_path, store)
    await first.start()
    job = await first.submit()
    await until(lambda: first.worker.batches, "the dispatch")
    never = asyncio.Event()

    async def stuck(job: Job, message: str) -> None:
        await never.wait()  # Discord does not answer before the stop

    first.delivery.deliver_failure = stuck  # type: ignore[method-assign]
    if crash:  # the row keeps a code; the notice says what the user was told
        first.worker.emit(WorkerDied(-9, (str(job.id),)))
    else:
        first.worker.emit(Failed(str(job.id), "Out of memory."), BatchDone((str(job.id),)))
    await until(lambda: first.service._background, "the delivery in flight")
    await first.service.stop()
    row = await _row(store, job.id)
    assert (row["state"], row["delivered_at"]) == ("failed", None)

    again = Harness(tmp_path, store)
    await again.start()
    await until(lambda: again.delivery.of("failure"), "the notice, delivered again")
    told = CRASH_MESSAGE if crash else "Out of memory."
    assert again.delivery.of("failure") == [("failure", job.id, told)]
    row = await _row(store, job.id)
    assert row["delivery_tries"] == 1
    await again.service.stop()
    assert (await _row(store, job.id))["delivered_at"] is not None


async def test_a_result_that_never_gets_through_is_given_up_after_three_starts(
    tmp_path: Path, store: Store
) -> None:
    async def refused(job: Job) -> None:
        raise RuntimeError("Discord is down")

    h = Harness(tmp_path, store)
    h.delivery.deliver_result = refused  # type: ignore[method-assign]
    await h.start()
    job = await h.submit()
    await until(lambda: h.worker.batches, "the dispatch")
    h.worker.emit(Finished(h.result(job.id)), BatchDone((str(job.id),)))
    await until(lambda: h.finished, "the gallery hook")
    await h.service.stop()
    for start in (1, 2, 3, 4):
        h = again = Harness(tmp_path, store)
        again.delivery.deliver_result = refused  # type: ignore[method-assign]
        await again.start()
        if start <= 3:
            await until(lambda h=again: h.finished, f"start {start}'s try")  # type: ignore[misc]
        await again.service.stop()
        row = await _row(store, job.id)
        assert row["delivery_tries"] == min(start, 3)
        assert (row["state"], row["counted"]) == (
            ("done", 1) if start <= 3 else ("undelivered", 0)
        )  # refunded when given up
    assert (h.settings.data_dir / "outputs" / f"{job.id}.png").is_file()  # /gallery keeps it
