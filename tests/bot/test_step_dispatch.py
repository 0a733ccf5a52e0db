"""Step batching on the bot side: jobs share a running set by size alone, and the jobs a
worker holds ready to join never keep a later server's job from the next free place."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_asyncio
from PIL import Image

from bot.jobs.backends.redis import RedisBackend
from bot.jobs.dispatch import JobDispatch
from bot.jobs.scheduler import QueuedJob
from bot.jobs.service import JobService, NewJob
from bot.store.db import Job, Store
from config import Settings
from pipeline.request import EngineInfo, plan_steps
from pipeline.worker import WorkerClient, WorkerConfig
from pipeline.worker_backend import WorkerBackend
from tests.valkey_server import valkey, valkey_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def key(
    step_slots: int,
    size: tuple[int, int],
    steps: int,
    strength: float,
    guidance: float,
    control: tuple[str, float] | None = None,
):
    info = EngineInfo("tiny", "cpu", "fp32", 256, "Fake", step_slots=step_slots)
    service = SimpleNamespace(engine_info=info, resolution=256, resolution_of=lambda _: 256)
    raw = (size, plan_steps(steps, strength), guidance, "img2img", control)
    queued = QueuedJob("1", 1, 2, raw)
    return JobDispatch._batch_key(service, queued)  # type: ignore[arg-type]


def test_step_batching_keys_by_size_only() -> None:
    mixed = {key(4, (640, 480), s, st, g) for s, st, g in ((20, 0.35, 7.5), (30, 0.8, 0.0))}
    assert len(mixed) == 1
    assert key(4, (640, 480), 20, 0.5, 7.5) != key(4, (480, 640), 20, 0.5, 7.5)
    assert key(4, (1024, 768), 20, 0.5, 7.5) == key(4, (640, 480), 30, 0.65, 3.0)  # same shape


def test_call_batching_keeps_the_full_key() -> None:
    assert key(0, (640, 480), 20, 0.35, 7.5) != key(0, (640, 480), 30, 0.8, 7.5)
    assert key(0, (640, 480), 20, 0.5, 7.5) != key(0, (640, 480), 20, 0.5, 0.0)
    assert key(0, (640, 480), 20, 0.5, 7.5) == key(0, (640, 480), 20, 0.5, 7.5)


def test_structure_splits_call_batches_but_not_step_rows() -> None:
    lines, edges = ("lines", 1.0), ("edges", 1.0)
    assert key(0, (640, 480), 20, 0.5, 7.5, lines) != key(0, (640, 480), 20, 0.5, 7.5)
    assert key(0, (640, 480), 20, 0.5, 7.5, lines) != key(0, (640, 480), 20, 0.5, 7.5, edges)
    assert key(0, (640, 480), 20, 0.5, 7.5, lines) != key(
        0, (640, 480), 20, 0.5, 7.5, ("lines", 0.5)
    )
    assert key(4, (640, 480), 20, 0.5, 7.5, lines) == key(4, (640, 480), 20, 0.5, 7.5, edges)


# -- fair order survives prefetch (the real service, worker and tiny model) ----------------
class FinishOrder:
    """A `Delivery` that records the order in which results are posted."""

    def __init__(self) -> None:
        self.results: list[int] = []

    async def show_status(self, job: Job, text: str, cancellable: bool) -> None:
        pass

    async def deliver_result(self, job: Job) -> None:
        self.results.append(job.id)

    async def deliver_failure(self, job: Job, message: str) -> None:
        raise AssertionError(f"job {job.id} failed: {message}")

    async def deliver_cancelled(self, job: Job) -> None:
        raise AssertionError(f"job {job.id} was cancelled")

    async def deliver_withheld(self, job: Job) -> None:
        raise AssertionError(f"job {job.id} was withheld")


@pytest_asyncio.fixture(params=["local", "redis"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path,
    checker_dirs: dict[str, Path],
) -> AsyncIterator[WorkerBackend]:  # fmt: skip
    """MAX_BATCH=2 step batching on the tiny model at 64 px, through either backend: the
    spawned local worker, or a real remote worker process over a real Valkey."""
    checker = str(checker_dirs["none"])
    if request.param == "local":
        config = WorkerConfig(
            str(tiny_model_dir), device="cpu", resolution=64, safety_checker_id=checker,
            batching="step", max_batch=2,
        )  # fmt: skip
        yield WorkerClient(config, start_timeout=120.0, max_batch=2)
        return
    server = request.getfixturevalue("valkey")
    env = {
        **os.environ, "MODEL_ID": str(tiny_model_dir), "DEVICE": "cpu", "RESOLUTION": "64",
        "MAX_BATCH": "2", "BATCHING": "step", "SAFETY_CHECKER_ID": checker,
        "WORKER_HEARTBEAT_S": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    env.pop("REDIS_URL", None)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "worker", "--redis", server.url, "--id", "w"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield RedisBackend(
            server.url, model_id=str(tiny_model_dir), resolution=64, batching="step",
            heartbeat_s=1.0,
        )  # fmt: skip
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()


async def test_a_late_server_takes_the_next_free_place_not_a_prefetched_one(
    tmp_path: Path, backend: WorkerBackend
) -> None:
    """MAX_BATCH=2, one server's 12 jobs running or waiting when another server's job
    arrives: it goes ahead of every job not yet started and runs in the second wave, ahead
    of at least 9 of the 12. The local worker holds 2 more jobs ready to join (they are
    recalled); a remote worker holds none (its free slots are MAX_BATCH less what it holds)."""
    data = tmp_path / "data"
    (data / "inputs").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 120, 40)).save(data / "inputs" / "x.png")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=data, max_batch=2, batching="step", resolution=64,
        max_jobs_per_user=20, progress_interval_s=0.0,
    )  # fmt: skip
    store = await Store.open(tmp_path / "bot.sqlite3")
    delivery = FinishOrder()
    service = JobService(settings, store, backend, delivery)  # type: ignore[arg-type]
    prefetch = 2 if isinstance(backend, WorkerClient) else 0
    try:
        await service.start()
        await asyncio.wait_for(service.ready.wait(), 120.0)
        busy = await service.submit_many([job(1, 7) for _ in range(12)])
        queue = service.queue
        await until(lambda: len(queue.running) - len(queue.held) == 2, "2 jobs started")
        assert len(queue.held) == prefetch and not delivery.results
        started = {q.job_id for q in queue.running} - {q.job_id for q in queue.held}
        assert started == {str(busy[0].id), str(busy[1].id)}
        late = await service.submit(job(2, 8))
        await until(lambda: len(delivery.results) == 13, "every result")
    finally:
        await service.stop()
        await store.close()
    behind = delivery.results[delivery.results.index(late.id) + 1 :]
    assert len(behind) >= 9, delivery.results


def job(guild_id: int, user_id: int) -> NewJob:
    return NewJob(
        guild_id=guild_id, channel_id=2, user_id=user_id, prompt="a fox", strength=1.0,
        steps=8, guidance=7.5, input_path="inputs/x.png", input_width=64, input_height=64,
        seed=7,
    )  # fmt: skip


async def until(check: Callable[[], object], what: str, timeout: float = 600.0) -> None:
    """Wait for the service (a bound for a loaded machine, not a timing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
