"""One dispatch pass hands a batch to every worker with free slots, all marked running in
one transaction (a backend with many workers lists their free slots: `free_batches`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.store.db import Store
from tests.bot.test_jobs import Harness, ScriptedWorker, until


class Workers(ScriptedWorker):
    """Three workers with one free slot each, as a scale-out backend reports them."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(log)
        self.free = 3

    def free_batches(self) -> list[int]:
        return [1] * self.free if self.info is not None else []

    @property
    def free_slots(self) -> int:
        return 1 if self.free and self.info is not None else 0

    def submit(self, batch: Any) -> None:
        super().submit(batch)
        self.free -= 1


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


async def test_a_pass_fills_every_free_worker_in_fair_order_with_one_transaction(
    tmp_path: Path, store: Store
) -> None:
    h = Harness(tmp_path, store)
    h.worker = h.service.worker = Workers(h.log)  # type: ignore[assignment]
    jobs = [await h.submit(user_id=u) for u in (1, 1, 2, 3)]  # member 1 twice: turns
    before = store.transactions
    await h.start()
    try:
        await until(lambda: len(h.worker.batches) == 3, "a batch for each free worker")
        served = [[r.job_id for r in batch] for batch in h.worker.batches]
        assert served == [[str(jobs[0].id)], [str(jobs[2].id)], [str(jobs[3].id)]]
        assert store.transactions == before + 1  # one transaction marked all three running
        assert [(await h.job(j.id)).state for j in jobs] == ["running", "queued"] + ["running"] * 2
    finally:
        await h.service.stop()
