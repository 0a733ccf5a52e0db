"""What a start does with what the last stop cut off: partial files are swept, finished
results and final notices are delivered, each at most a bounded number of times."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.db import Store
from tests.bot.test_jobs import Harness


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
