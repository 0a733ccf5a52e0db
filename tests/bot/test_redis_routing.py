"""Routing by model over a real Valkey: the real job service and `RedisBackend` in front of
real `RemoteWorker`s (their engine the no-model fake of `bench.fake_engine`) that serve
different catalogue models. Each worker gets only its models' jobs; a job for a model no
worker serves waits, says so, and runs once a worker serving it joins."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from PIL import Image

import pipeline.worker_child as worker_child
from bench.fake_engine import ENGINE_REF, SECONDS_ENV
from bot.jobs.backends.redis import RedisBackend
from bot.store.db import Store
from pipeline.remote_worker import GRANT_BLOCK_MS, RemoteWorker
from pipeline.served_models import ModelSpec
from pipeline.worker_protocol import WorkerConfig
from tests.bot.test_jobs import Harness, until
from tests.valkey_server import Valkey, valkey, valkey_server  # noqa: F401  (fixtures)

SOURCES = {"base": "/models/base", "anime": "/models/anime", "photo": "/models/photo"}


@pytest.fixture
def start_worker(valkey: Valkey, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:  # noqa: F811
    """Real remote workers in threads of this process (their SIGTERM handler is a main
    thread's: these stop when the test ends instead)."""
    monkeypatch.setattr(worker_child, "signal", SimpleNamespace(signal=lambda *_: None, SIGTERM=15))
    monkeypatch.setenv(SECONDS_ENV, "0.05")
    made: list[RemoteWorker] = []

    def start(wid: str, *names: str) -> RemoteWorker:
        specs = tuple(ModelSpec(n, SOURCES[n], resolution=64) for n in names)
        client = redis.Redis.from_url(valkey.url, socket_timeout=GRANT_BLOCK_MS / 1000 + 10)
        config = WorkerConfig(specs[0].source, models=specs, resolution=64, batching="call")
        worker = RemoteWorker(client, config, worker_id=wid, max_batch=1, heartbeat_s=1.0)
        threading.Thread(target=worker.serve, args=(ENGINE_REF,), daemon=True).start()
        made.append(worker)
        return worker

    yield start
    for worker in made:
        worker.stopping.set()
        shutil.rmtree(worker.scratch, ignore_errors=True)


async def test_each_worker_gets_its_models_jobs_and_an_unserved_model_waits_then_runs(
    tmp_path: Path, valkey: Valkey, start_worker: Any  # noqa: F811
) -> None:
    models = tmp_path / "models.toml"
    models.write_text("".join(f'[models.{n}]\nsource = "{s}"\n' for n, s in SOURCES.items()))
    store = await Store.open(tmp_path / "bot.sqlite3")
    h = Harness(tmp_path, store, models_file=models, max_jobs_per_user=20)
    (h.settings.data_dir / "inputs").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(h.settings.data_dir / "inputs" / "x.png")
    backend = RedisBackend(
        valkey.url, model_id=SOURCES["base"], resolution=64, batching="call", heartbeat_s=1.0,
        models=SOURCES, default_model="base",
    )  # fmt: skip
    h.worker = backend  # type: ignore[assignment]
    h.service.worker = backend
    start_worker("w-base", "base")
    start_worker("w-anime", "anime")
    try:
        await h.start()
        await until(lambda: backend.workers_online == 2, "both workers")
        jobs = {m: [await h.submit(user_id=n, model=m) for n in range(3)] for m in SOURCES}
        photo = jobs["photo"][0]
        await h.service.attach_status_message(photo.id, 77)
        served = [j for m in ("base", "anime") for j in jobs[m]]
        await until(lambda: len(h.delivery.of("result")) == len(served), "the served jobs")
        for model, worker in (("base", "w-base"), ("anime", "w-anime")):
            assert {backend.ran_by[str(j.id)] for j in jobs[model]} == {worker}
        assert [(await h.job(j.id)).state for j in jobs["photo"]] == ["queued"] * 3
        h.service.status.places_changed()

        def told() -> bool:
            return any(
                c[1] == photo.id and "Waiting for a GPU with *photo*" in c[2]
                for c in h.delivery.of("status")
            )

        await until(told, "the photo job's note")
        start_worker("w-photo", "photo")
        await until(lambda: len(h.delivery.of("result")) == 9, "the photo jobs, once served")
        assert {backend.ran_by[str(j.id)] for j in jobs["photo"]} == {"w-photo"}
    finally:
        await h.service.stop()
        await store.close()
