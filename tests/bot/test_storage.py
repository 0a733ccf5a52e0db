"""The storage cap deletes the oldest images first, spares what waiting jobs need, and the
gallery learns which pictures are gone."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.db import Store
from bot.store.files import (
    Pruner,
    StoredFile,
    choose_victims,
    max_bytes,
    protected_paths,
    prune_files,
    scan,
    sweep_partial_files,
    write_file,
)
from bot.store.gallery import GalleryFilter, GalleryStore

GUILD = 111


def put(data_dir: Path, rel: str, size: int, mtime: float) -> None:
    path = data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "bot.sqlite3")
    yield store
    await store.close()


def test_max_bytes_is_decimal_gigabytes() -> None:
    assert max_bytes(20) == 20_000_000_000
    assert max_bytes(0.000001) == 1000


def test_choose_victims_oldest_first_until_under_the_cap() -> None:
    files = [
        StoredFile("outputs/3.png", 100, 30.0),
        StoredFile("inputs/a.png", 100, 10.0),
        StoredFile("outputs/2.png", 100, 20.0),
        StoredFile("outputs/4.png", 100, 40.0),
    ]
    victims = choose_victims(files, 250, set(), min_age_s=0, now=100.0)
    assert [v.path for v in victims] == ["inputs/a.png", "outputs/2.png"]
    assert choose_victims(files, 400, set(), min_age_s=0, now=100.0) == []


def test_choose_victims_spares_protected_and_young_files() -> None:
    files = [
        StoredFile("inputs/waiting.png", 100, 10.0),
        StoredFile("outputs/1.png", 100, 20.0),
        StoredFile("outputs/2.png", 100, 30.0),
        StoredFile("outputs/fresh.png", 100, 95.0),
    ]
    victims = choose_victims(files, 100, {"inputs/waiting.png"}, min_age_s=10, now=100.0)
    # waiting input and the fresh output stay, even though that leaves it over the cap
    assert [v.path for v in victims] == ["outputs/1.png", "outputs/2.png"]


def test_prune_files_on_disk(tmp_path: Path) -> None:
    for i in range(5):
        put(tmp_path, f"outputs/{i}.png", 100, 1000.0 + i)
    put(tmp_path, "inputs/in.png", 100, 999.0)
    put(tmp_path, "bot.sqlite3", 10_000, 1.0)  # the database is not an image: never counted
    (tmp_path / "outputs" / "sub").mkdir()
    assert {f.path for f in scan(tmp_path)} == {f"outputs/{i}.png" for i in range(5)} | {
        "inputs/in.png"
    }
    result = prune_files(tmp_path, 350, set(), min_age_s=0, now=5000.0)
    assert result.removed == ["inputs/in.png", "outputs/0.png", "outputs/1.png"]
    assert result.freed == 300 and result.total == 300
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [
        "2.png",
        "3.png",
        "4.png",
        "sub",
    ]
    assert (tmp_path / "bot.sqlite3").exists()
    assert scan(tmp_path / "missing") == []


async def _job(store: Store, state: str, input_path: str, finished_at: float) -> int:
    async with store.transaction() as db:
        job_id = await store.insert_job(
            db,
            guild_id=GUILD, channel_id=5, user_id=7, prompt="p", strength=0.5, seed=1, steps=10,
            guidance=7.5, input_path=input_path, input_width=512, input_height=512,
        )  # fmt: skip
        values: dict[str, object] = {"state": state}
        if state == "done":
            values |= {"output_path": f"outputs/{job_id}.png", "finished_at": finished_at}
        await store.update_job_in(db, job_id, **values)
    return job_id


async def test_protected_paths_are_inputs_of_waiting_and_running_jobs(store: Store) -> None:
    await _job(store, "queued", "inputs/q.png", 0)
    await _job(store, "running", "inputs/r.png", 0)
    await _job(store, "done", "inputs/d.png", 1)
    await _job(store, "failed", "inputs/f.png", 0)
    assert await protected_paths(store) == {"inputs/q.png", "inputs/r.png"}


async def test_pruner_flags_gallery_entries_and_spares_waiting_inputs(
    store: Store, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    gallery = GalleryStore(store)
    done = []
    for i in range(4):
        job_id = await _job(store, "done", "inputs/shared.png", 1000.0 + i)
        job = await store.get_job(job_id)
        assert job is not None
        await gallery.add(job, 1000.0 + i)
        put(data, f"outputs/{job_id}.png", 100, 1000.0 + i)
        done.append(job_id)
    # the oldest file is the input a queued variant still needs
    await _job(store, "queued", "inputs/shared.png", 0)
    put(data, "inputs/shared.png", 100, 500.0)

    pruner = Pruner(store, data, 300, min_age_s=0, on_pruned=gallery.mark_pruned)
    result = await pruner.run()
    assert result is not None
    assert result.removed == [f"outputs/{done[0]}.png", f"outputs/{done[1]}.png"]
    assert (data / "inputs/shared.png").exists()
    pruned = {
        job_id: (await gallery.get(GUILD, job_id)).pruned  # type: ignore[union-attr]
        for job_id in done
    }
    assert pruned == {done[0]: 1, done[1]: 1, done[2]: 0, done[3]: 0}
    # pruned entries stay browsable (the message link still works)
    assert await gallery.count(GUILD, GalleryFilter()) == 4
    # under the cap now: a second pass does nothing
    again = await pruner.run()
    assert again is not None and again.removed == []


async def test_pruner_runs_off_the_loop_and_coalesces(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.store.files as storage

    threads: list[str] = []
    release = threading.Event()
    real = storage.prune_files

    def slow(*args: object, **kwargs: object) -> storage.PruneResult:
        threads.append(threading.current_thread().name)
        release.wait(5)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "prune_files", slow)
    pruner = Pruner(store, tmp_path, 10, min_age_s=0)
    first = asyncio.create_task(pruner.run())
    await asyncio.sleep(0.05)
    # the loop is free while the pass runs; more requests fold into one more pass
    assert await pruner.run() is None
    assert await pruner.run() is None
    release.set()
    assert await first is not None
    assert len(threads) == 2
    assert threading.main_thread().name not in threads


# -- partial files ---------------------------------------------------------------------------


def test_write_file_puts_the_whole_file_in_place(tmp_path: Path) -> None:
    target = tmp_path / "outputs" / "5.png"
    write_file(str(target), b"png bytes")
    assert target.read_bytes() == b"png bytes"
    assert sorted(p.name for p in target.parent.iterdir()) == ["5.png"]


def test_write_file_leaves_no_part_file_when_the_disk_fills(tmp_path: Path) -> None:
    """A real short write: the process may write files of at most 1 KB (RLIMIT_FSIZE)."""
    target = tmp_path / "outputs" / "5.png"
    target.parent.mkdir()
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(OSError):
            write_file(target, b"x" * 64 * 1024)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert list(target.parent.iterdir()) == []


def test_write_file_leaves_no_part_file_when_the_rename_fails(tmp_path: Path) -> None:
    target = tmp_path / "outputs" / "5.png"
    target.mkdir(parents=True)  # something that is not a file holds the name
    with pytest.raises(OSError):
        write_file(target, b"png bytes")
    assert [p.name for p in target.parent.iterdir()] == ["5.png"] and target.is_dir()


def test_partial_files_of_an_earlier_run_are_swept(tmp_path: Path) -> None:
    for rel in ("outputs/.5.png.part", "outputs/6.part", "inputs/.ab.png.tmp"):
        put(tmp_path, rel, 10, 1.0)
    put(tmp_path, "outputs/5.png", 10, 1.0)
    put(tmp_path, "inputs/ab.png", 10, 1.0)
    swept = sweep_partial_files(tmp_path)
    assert sorted(swept) == ["inputs/.ab.png.tmp", "outputs/.5.png.part", "outputs/6.part"]
    assert sorted(f.path for f in scan(tmp_path)) == ["inputs/ab.png", "outputs/5.png"]
    assert sweep_partial_files(tmp_path / "missing") == []
