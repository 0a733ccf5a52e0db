"""Several models over Valkey (issue 26, the worker side), against a real Valkey: the real
`RemoteWorker` says the models it serves and those resident in its heartbeat, and each swap
as events the bot decodes (`Remote.models`/`resident`, the `on_model_loading`/`loaded`
hooks); a worker serving none of the bot's catalogue, or one of its names from another
source, is refused as "another model"."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from bot.jobs.backends.redis import RedisBackend
from bot.jobs.backends.redis_members import Remote
from pipeline import stream_codec as codec
from pipeline.remote_worker import RemoteWorker
from pipeline.request import EngineInfo
from pipeline.served_models import ModelSpec
from pipeline.worker_protocol import ModelLoaded, ModelLoading, Ready, WorkerConfig
from tests.bot.test_redis_backend import TTL_S, K, grant, online
from tests.bot.test_redis_backend_deploys import granted_fields, request
from tests.valkey_server import Valkey, valkey, valkey_server  # noqa: F401  (fixtures)

CATALOGUE = {"base": "/models/base", "anime": "/models/anime"}


class Recording(RedisBackend):
    """The bot's backend with its model hooks recorded (the lead's routing uses them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_events: list[tuple[str, ModelLoading | ModelLoaded]] = []

    def on_model_loading(self, worker: Remote, event: ModelLoading) -> None:
        self.model_events.append((worker.id, event))

    def on_model_loaded(self, worker: Remote, event: ModelLoaded) -> None:
        self.model_events.append((worker.id, event))


@pytest_asyncio.fixture
async def backend(valkey: Valkey) -> AsyncIterator[Recording]:  # noqa: F811
    b = Recording(valkey.url, model_id=CATALOGUE["base"], heartbeat_s=TTL_S, models=CATALOGUE)
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
def make_worker(valkey: Valkey) -> Iterator[Any]:  # noqa: F811
    made: list[RemoteWorker] = []

    def make(wid: str, specs: tuple[ModelSpec, ...]) -> RemoteWorker:
        config = WorkerConfig(specs[0].source, models=specs)
        worker = RemoteWorker(
            redis.Redis.from_url(valkey.url), config, worker_id=wid, max_batch=2,
            heartbeat_s=TTL_S,
        )  # fmt: skip
        worker.phase = "idle"  # loaded, as `run` sets it before it says Ready
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stopping.set()
        shutil.rmtree(worker.scratch, ignore_errors=True)


def ready(worker: RemoteWorker, resident: tuple[str, ...]) -> Ready:
    names = tuple(spec.name for spec in worker.config.models)
    info = EngineInfo(worker.config.model_id, "cpu", "fp32", 64, "P", safety_checker="on")
    return Ready(EngineInfo(**{**codec.to_dict(info), "models": names, "resident": resident}))


async def heartbeat(r: aioredis.Redis, wid: str) -> dict[str, Any]:
    return codec.loads(await r.get(K.heartbeat(wid)))  # type: ignore[no-any-return]


async def test_the_heartbeat_and_the_events_carry_the_models(
    backend: Recording, make_worker: Any, valkey: Valkey, tmp_path: Path  # noqa: F811
) -> None:
    r = aioredis.Redis.from_url(valkey.url)
    specs = (ModelSpec("base", "/models/base"), ModelSpec("anime", "/models/anime"))
    worker = make_worker("w", specs)
    await asyncio.to_thread(worker._send, ready(worker, ("base",)))
    await online(backend, 1)
    remote = backend._workers["w"]
    assert (remote.models, remote.resident) == (("base", "anime"), ("base",))

    backend.submit([request(tmp_path)])  # a job the worker holds while it swaps
    await asyncio.to_thread(worker._on_grant, granted_fields(await grant(r, "w")))
    await asyncio.to_thread(worker._send, ModelLoading("anime", ("1",)))
    beat = await heartbeat(r, "w")
    assert beat["loading"] and beat["resident"] == ["base"]  # loading: silent, not dead
    await asyncio.to_thread(worker._send, ModelLoaded("anime", ("anime",)))
    beat = await heartbeat(r, "w")
    assert (beat["models"], beat["resident"]) == (["base", "anime"], ["anime"])
    assert not beat["loading"]
    async with asyncio.timeout(10):
        while len(backend.model_events) < 2:
            await asyncio.sleep(0.02)
    assert backend.model_events == [
        ("w", ModelLoading("anime", ("1",))),
        ("w", ModelLoaded("anime", ("anime",))),
    ]
    assert remote.resident == ("anime",)
    await r.aclose()


@pytest.mark.parametrize(
    ("specs", "detail"),
    [
        ((ModelSpec("photo", "/models/photo"),), "none is in the bot's catalogue"),
        ((ModelSpec("anime", "/elsewhere/anime"),), "this worker loads '/elsewhere/anime'"),
    ],
)
async def test_a_worker_serving_other_models_is_refused(
    backend: Recording, make_worker: Any, valkey: Valkey,  # noqa: F811
    specs: tuple[ModelSpec, ...], detail: str,
) -> None:  # fmt: skip
    r = aioredis.Redis.from_url(valkey.url)
    worker = make_worker("odd", specs)
    await asyncio.to_thread(worker._send, ready(worker, (specs[0].name,)))
    refusal = await grant(r, "odd")
    assert refusal["t"] == b"refused" and detail in refusal["reason"].decode()
    assert backend.refusals["odd"][0] == "another model" and backend.workers_online == 0
    await r.aclose()


async def test_a_worker_serving_some_of_the_catalogue_is_taken(
    backend: Recording, make_worker: Any
) -> None:
    worker = make_worker("part", (ModelSpec("anime", "/models/anime"), ModelSpec("x", "/x")))
    await asyncio.to_thread(worker._send, ready(worker, ("anime",)))
    await online(backend, 1)
    assert backend._workers["part"].models == ("anime", "x")
