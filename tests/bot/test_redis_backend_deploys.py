"""`RedisBackend` rules for deploys and busy workers (issue 23), against a real Valkey, the
test speaking the worker's side of the stream protocol: exact slots, a result that cannot
be written, a same-id restart, a worker that filters less than the bot requires, and a
bot restarted while a worker runs one job and holds another (the ledger in SQLite)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from bot.jobs.backends.redis import RedisBackend
from bot.jobs.backends.redis_events import WRITE_FAILED_MESSAGE
from bot.store.db import Store
from pipeline import stream_codec as codec
from pipeline.remote_worker import RemoteWorker
from pipeline.request import EngineInfo, GenerationRequest, GenerationResult
from pipeline.worker import WorkerStartError
from pipeline.worker_protocol import BatchDone, Failed, Finished, Started, WorkerConfig, WorkerDied
from tests.bot.test_redis_backend import MODEL, TTL_S, K, event, grant, next_of, online
from tests.valkey_server import Valkey, valkey, valkey_server  # noqa: F401  (fixtures)


@pytest_asyncio.fixture
async def r(valkey: Valkey) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    client = aioredis.Redis.from_url(valkey.url)
    yield client
    await client.aclose()


class FakeWorker:
    """One worker process as the bot sees it: a nonce, a status version, jobs held."""

    def __init__(self, r: aioredis.Redis, wid: str, nonce: str, safety: str = "on") -> None:
        self.r, self.id, self.nonce, self.safety = r, wid, nonce, safety
        self.v = 0
        self.now: dict[str, Any] = {"free": 1}  # what the background heartbeat says
        self.beating: asyncio.Task[None] | None = None

    def status(
        self, *, free: int, seen: int = 0, epoch: str = "", held: Any = (), loading: bool = False
    ) -> bytes:
        self.v += 1
        info = EngineInfo(MODEL, "cpu", "fp32", 64, "P", safety_checker=self.safety)
        return codec.dumps(
            {
                "id": self.id, "nonce": self.nonce, "v": self.v, "model": MODEL,
                "info": None if loading else codec.to_dict(info), "loading": loading,
                "max_batch": 1, "free": free, "seen": seen,
                "epoch": epoch, "held": [list(h) for h in held], "batching": "step",
            }
        )  # fmt: skip

    async def beat(self, **status: Any) -> None:
        await self.r.set(K.heartbeat(self.id), self.status(**status), px=int(TTL_S * 1000))
        await self.r.sadd(K.workers, self.id)

    async def hello(self, **status: Any) -> None:
        await self.beat(**status)
        await self.r.xadd(K.hello, {b"hello": self.status(**status)})

    def keep_beating(self, **status: Any) -> None:
        """A heartbeat thread: beat `status` three times per TTL until `stop_beating`."""
        self.now = status

        async def loop() -> None:
            while True:
                await self.beat(**self.now)
                await asyncio.sleep(TTL_S / 3)

        if self.beating is None:
            self.beating = asyncio.create_task(loop())

    def stop_beating(self) -> None:
        if self.beating is not None:
            self.beating.cancel()

    async def event(self, kind: str, **fields: Any) -> None:
        await event(self.r, self.id, kind, p=self.nonce, **fields)

    async def finished(self, job: str, attempt: int, **fields: Any) -> None:
        """The job's result, with `fields` (e.g. the slot it freed) in the same event."""
        result = GenerationResult(job, "/scratch/x.png", 42, 5, 10, 64, 64, 0.1)
        await self.event(
            "finished", job=job, a=attempt, result=codec.encode_result(result), png=b"PNG",
            **fields,
        )  # fmt: skip


async def running(backend: RedisBackend, r: aioredis.Redis, req: GenerationRequest) -> FakeWorker:
    """Worker "w" online with one slot, granted job "1" (`req`), and started on it."""
    w = FakeWorker(r, "w", "n1")
    await w.hello(free=1)
    await online(backend, 1)
    backend.submit([req])
    await grant(r, "w")
    await w.event("started", jobs=codec.dumps([["1", 1]]))
    return w


def request(tmp_path: Path, job: str = "1", out: Path | None = None) -> GenerationRequest:
    image = tmp_path / f"in-{job}.png"
    image.write_bytes(b"not really a png")
    output = out or tmp_path / "out" / f"{job}.png"
    return GenerationRequest(job, str(image), "a fox", 0.5, 42, 10, 7.5, str(output))


@pytest_asyncio.fixture
async def backend(valkey: Valkey) -> AsyncIterator[RedisBackend]:  # noqa: F811
    b = RedisBackend(valkey.url, model_id=MODEL, heartbeat_s=TTL_S, safety_checker="auto")
    await b.start()
    yield b
    await b.stop()


async def handled(b: RedisBackend) -> None:
    """What the job service does after handling an event: ask for the next one."""
    asking = asyncio.create_task(b.next_event())
    await asyncio.sleep(0)
    asking.cancel()


async def test_a_busy_worker_gets_no_second_job_until_it_says_a_slot_is_free(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    w = FakeWorker(r, "w", "n1")
    await w.hello(free=1)
    await online(backend, 1)
    assert backend.free_slots == 1
    backend.submit([request(tmp_path)])
    assert backend.free_slots == 0  # the grant counts before the worker saw it
    await grant(r, "w")
    # The worker took it: every heartbeat now says "seen 1, free 0". Acknowledging the
    # grant must not reopen the slot (MAX_BATCH=1: one job at a time).
    for _ in range(6):
        await w.beat(free=0, seen=1, epoch=backend.epoch, held=[("1", 1)])
        await asyncio.sleep(TTL_S / 3)
        assert backend.free_slots == 0
    # An older status read late (a heartbeat written before the last ask) changes nothing.
    stale = w.status(free=1, seen=0, epoch=backend.epoch)
    await w.event("ask", free=0, seen=1, e=backend.epoch, v=w.v + 1)
    w.v += 1
    await r.set(K.heartbeat("w"), stale, px=int(TTL_S * 1000))
    await asyncio.sleep(TTL_S)
    assert backend.free_slots == 0
    await w.finished("1", 1)
    await w.event("ask", free=1, seen=1, e=backend.epoch, v=w.v + 1)
    await next_of(backend, Finished)
    async with asyncio.timeout(5):
        while backend.free_slots != 1:
            await asyncio.sleep(0.02)


async def test_a_result_that_cannot_be_written_fails_the_job_plainly(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the outputs folder should be")
    w = await running(backend, r, request(tmp_path, out=blocker / "1.png"))  # writes fail
    await w.finished("1", 1)
    failed = await next_of(backend, Failed)
    assert failed == Failed("1", WRITE_FAILED_MESSAGE)
    assert str(tmp_path) not in failed.message
    assert backend.running == ("1",)  # until the service handled the Failed
    await handled(backend)
    assert backend.running == () and backend._attempts == {} and backend._starts == {}


async def test_a_structure_results_map_thumbnail_crosses_the_stream(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    req = request(tmp_path)
    w = await running(backend, r, req)
    result = GenerationResult(
        "1", "/scratch/x.png", 42, 5, 10, 64, 64, 0.1, structure_map="/scratch/x.structure.png"
    )
    await w.event("finished", job="1", a=1, result=codec.encode_result(result), png=b"PNG",
                  map=b"MAP")  # fmt: skip
    finished = await next_of(backend, Finished)
    stored = tmp_path / "out" / "1.structure.png"
    assert finished.result.structure_map == str(stored) and stored.read_bytes() == b"MAP"
    assert finished.result.output_path == req.output_path


async def test_a_worker_restarted_under_the_same_id_gives_its_jobs_back(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    old = FakeWorker(r, "w", "first")
    await old.hello(free=1)
    await online(backend, 1)
    backend.submit([request(tmp_path)])
    (item,) = codec.loads((await grant(r, "w"))["batch"])
    assert item["a"] == 1
    await old.event("started", jobs=codec.dumps([["1", 1]]))
    # Docker restarts it: same id, a new process (nonce) before the old key expired.
    new = FakeWorker(r, "w", "second")
    await new.hello(free=1)
    died = await next_of(backend, WorkerDied)
    assert (died.job_ids, died.unstarted) == ((), ("1",))
    await online(backend, 1)
    backend.submit([request(tmp_path)])
    regrant = await grant(r, "w")
    (item,) = codec.loads(regrant["batch"])
    assert item["a"] == 2 and regrant["p"] == b"second"  # the next attempt, for the new one
    # A late answer of the old process (its nonce) is recognised and ignored.
    await old.finished("1", 1)
    async with asyncio.timeout(5):
        while backend.discarded < 1:
            await asyncio.sleep(0.02)
    await new.finished("1", 2)
    assert (await next_of(backend, Finished)).result.job_id == "1"


async def test_a_worker_that_filters_less_than_the_bot_requires_is_refused(
    backend: RedisBackend, r: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    unsafe = FakeWorker(r, "unsafe", "n1", safety="off")
    await unsafe.hello(free=1)
    refusal = await grant(r, "unsafe")
    assert refusal["t"] == b"refused" and b"SAFETY_CHECKER=auto" in refusal["reason"]
    assert refusal["p"] == b"n1"  # a fixed process under this id will not read it as its own
    assert backend.workers_online == 0 and backend.free_slots == 0
    assert backend.refusals["unsafe"][0] == "its safety checker is off"
    assert "SAFETY_CHECKER=auto" in backend.refusals["unsafe"][1]
    assert "refusing worker unsafe" in caplog.text
    safe = FakeWorker(r, "safe", "n2", safety="on")
    await safe.hello(free=1)
    await online(backend, 1)
    assert backend.workers == ("safe",)


async def job_rows(store: Store, count: int) -> list[str]:
    """`count` job rows, running (as a stopped bot leaves them)."""
    row = {
        "guild_id": 1, "channel_id": 1, "user_id": 1, "kind": "new", "prompt": "p",
        "strength": 0.5, "seed": 42, "steps": 10, "guidance": 7.5, "input_path": "in.png",
        "input_width": 64, "input_height": 64,
    }  # fmt: skip
    async with store.transaction() as db:
        ids = [await store.insert_job(db, **row) for _ in range(count)]
        await db.execute("UPDATE jobs SET state='running'")
    return [str(i) for i in ids]


async def test_a_restarted_bot_adopts_what_a_worker_holds_and_gives_back_the_rest(
    valkey: Valkey,  # noqa: F811
    r: aioredis.Redis,
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "bot.db")
    try:
        running, waiting, lost, done = await job_rows(store, 4)
        first = RedisBackend(valkey.url, model_id=MODEL, heartbeat_s=TTL_S)
        await first.adopt(store, [])
        await first.start()
        w = FakeWorker(r, "w", "n1")
        await w.hello(free=4)
        w.keep_beating(free=4)
        await online(first, 1)
        first.submit([request(tmp_path, running), request(tmp_path, waiting)])
        first.submit([request(tmp_path, lost)])
        first.submit([request(tmp_path, done)])
        taken = codec.loads((await grant(r, "w"))["batch"])
        assert [i["a"] for i in taken] == [1, 1]
        await grant(r, "w")  # the third: the worker loses it (e.g. a crash of its thread)
        await grant(r, "w")  # the fourth: it finishes while no bot is there
        await w.event("started", jobs=codec.dumps([[running, 1]]))
        w.now = {"free": 1, "seen": 2, "epoch": first.epoch, "held": [(running, 1), (waiting, 1)]}
        await first.stop()  # a deploy: no cancel goes out
        assert await r.xlen(K.grants("w")) == 0
        await w.finished(done, 1)  # kept in its events stream for the next bot

        second = RedisBackend(valkey.url, model_id=MODEL, heartbeat_s=TTL_S)
        reqs = {j: request(tmp_path, j) for j in (running, waiting, lost, done)}
        await second.adopt(store, list(reqs.values()))
        await second.start()
        try:
            # One heartbeat period later the job nobody holds waits again; the others stay,
            # and the result sent while no bot was there is delivered, not run again.
            seen: list[Any] = []
            async with asyncio.timeout(TTL_S * 6):
                while not any(isinstance(e, WorkerDied) for e in seen):
                    seen.append(await second.next_event())
            died = next(e for e in seen if isinstance(e, WorkerDied))
            assert (died.job_ids, died.unstarted) == ((), (lost,))
            assert [e.result.job_id for e in seen if isinstance(e, Finished)] == [done]
            assert set(second.running) == {running, waiting}  # `done` was handed over
            await w.finished(running, 1)
            assert (await next_of(second, Finished)).result.job_id == running
            second.cancel(waiting)  # an adopted job is cancelled where it runs
            cancel = await grant(r, "w")
            assert (cancel["t"], cancel["job"], cancel["a"], cancel["p"]) == (
                b"cancel",
                waiting.encode(),
                b"1",
                b"n1",
            )
            assert Path(reqs[running].output_path).read_bytes() == b"PNG"
            # The lost job's next grant is attempt 2 (from SQLite, not from memory).
            second.submit([reqs[lost]])
            (item,) = codec.loads((await grant(r, "w"))["batch"])
            assert item["a"] == 2
        finally:
            w.stop_beating()
            await second.stop()
        cursor = await store.db.execute("SELECT job_id, attempt FROM job_holders ORDER BY job_id")
        assert {str(j): a for j, a in await cursor.fetchall()}[lost] == 2
    finally:
        await store.close()


async def test_a_second_bot_on_one_namespace_stops_naming_the_holder(
    backend: RedisBackend,
    valkey: Valkey,  # noqa: F811
) -> None:
    assert backend.lock.held and backend.lock.token == 1
    second = RedisBackend(valkey.url, model_id=MODEL, heartbeat_s=TTL_S)
    try:
        with pytest.raises(WorkerStartError) as refused:
            await second.start()  # waits one lock TTL for a crashed holder, then stops
        text = str(refused.value)
        assert f"pid {os.getpid()}" in text and backend.epoch in text
        assert second.free_slots == 0
    finally:
        await second.stop()
    assert backend.lock.held  # the holder goes on


async def test_a_worker_refuses_a_grant_with_a_stale_fencing_token(
    backend: RedisBackend,
    valkey: Valkey,  # noqa: F811
    r: aioredis.Redis,
    tmp_path: Path,
) -> None:
    w = FakeWorker(r, "w", "n1")
    await w.hello(free=1)
    await online(backend, 1)
    backend.submit([request(tmp_path)])
    granted = await grant(r, "w")
    assert granted["f"] == b"1"  # every grant carries the holder's token
    # Another bot took the namespace over (this one was paused past its lock's TTL).
    await r.incr(K.scheduler_token)
    worker = RemoteWorker(
        redis.Redis.from_url(valkey.url), WorkerConfig(MODEL), worker_id="w",
        max_batch=1, heartbeat_s=TTL_S,
    )  # fmt: skip
    worker.nonce = "n1"
    try:
        await asyncio.to_thread(worker._on_grant, granted_fields(granted))
        assert worker.held == {} and worker.commands.empty()
        await r.incr(K.scheduler_token, -1)  # as if the grant came from the current holder
        await asyncio.to_thread(worker._on_grant, granted_fields(granted))
        assert set(worker.held) == {"1"} and not worker.commands.empty()
    finally:
        shutil.rmtree(worker.scratch, ignore_errors=True)


def granted_fields(entry: dict[str, Any]) -> codec.Fields:
    return {k.encode(): v for k, v in entry.items()}


async def test_a_worker_loading_a_model_is_not_refused_nor_dropped_for_silence(
    valkey: Valkey,  # noqa: F811
    r: aioredis.Redis,
    tmp_path: Path,
) -> None:
    b = RedisBackend(valkey.url, model_id=MODEL, heartbeat_s=TTL_S, silence_s=1.0)
    await b.start()
    w = FakeWorker(r, "w", "n1")
    try:
        w.keep_beating(free=0, loading=True)  # beating from its start, before the model
        await asyncio.sleep(1.0)
        assert b.workers_online == 0 and not b.refusals
        await w.hello(free=1)
        w.now = {"free": 1}
        await online(b, 1)
        b.submit([request(tmp_path)])
        await grant(r, "w")
        await w.event("started", jobs=codec.dumps([["1", 1]]))
        # A model load while holding the job: silent past WORKER_SILENCE_S, not dropped.
        w.now = {"free": 0, "seen": 1, "epoch": b.epoch, "held": [("1", 1)], "loading": True}
        await asyncio.sleep(2.5)
        assert b.workers_online == 1 and b.running == ("1",)
        # Loaded, and still silent: now the silence rule applies.
        w.now = {"free": 0, "seen": 1, "epoch": b.epoch, "held": [("1", 1)]}
        died = await next_of(b, WorkerDied, timeout=5)
        assert died.unstarted == ("1",)
    finally:
        w.stop_beating()
        await b.stop()


@pytest.mark.parametrize("retry", [True, False])
async def test_a_failure_marked_run_again_crosses_the_stream(
    valkey: Valkey,  # noqa: F811
    backend: RedisBackend,
    r: aioredis.Redis,
    tmp_path: Path,
    retry: bool,
) -> None:
    """A worker whose shared UNet call failed marks its jobs' failures "run again" (the
    job did nothing wrong); the bot must read the mark, as it does from the local worker."""
    from pipeline.remote_worker import _Held

    await running(backend, r, request(tmp_path))
    worker = RemoteWorker(
        redis.Redis.from_url(valkey.url), WorkerConfig(MODEL), worker_id="w",
        max_batch=1, heartbeat_s=TTL_S,
    )  # fmt: skip
    worker.nonce = "n1"
    worker.held["1"] = _Held(1, [])
    try:
        await asyncio.to_thread(worker._send, Failed("1", "It failed; try again.", retry=retry))
        assert await next_of(backend, Failed) == Failed("1", "It failed; try again.", retry)
    finally:
        shutil.rmtree(worker.scratch, ignore_errors=True)


async def test_a_worker_says_each_free_slot_once(
    valkey: Valkey,  # noqa: F811
    r: aioredis.Redis,
) -> None:
    """A job's final event says the slot it freed (no ask of its own), just before its
    batch ends: an ask then would say nothing new, so it is not sent (a fleet's bot reads
    every event); an ask that says something new still is."""
    from pipeline.remote_worker import _Held

    worker = RemoteWorker(
        redis.Redis.from_url(valkey.url), WorkerConfig(MODEL), worker_id="w",
        max_batch=1, heartbeat_s=TTL_S,
    )  # fmt: skip

    async def kinds() -> list[bytes]:
        return [entry[b"t"] for _, entry in await r.xrange(K.events("w"))]

    try:
        worker.held["1"] = _Held(1, [])
        await asyncio.to_thread(worker._send, Failed("1", "It failed."))
        await asyncio.to_thread(worker._send, BatchDone(("1",)))
        assert await kinds() == [b"failed"]  # the final event said the slot it freed
        ((_, failed),) = await r.xrange(K.events("w"))
        assert (failed[b"free"], failed[b"seen"]) == (b"1", b"0")
        worker.held["2"] = _Held(1, [])  # a grant taken: no slot free now, which is news
        await asyncio.to_thread(worker._send, BatchDone(()))
        await asyncio.to_thread(worker._send, Failed("2", "It failed."))
        await asyncio.to_thread(worker._send, BatchDone(("2",)))
        assert await kinds() == [b"failed", b"ask", b"failed"]
    finally:
        shutil.rmtree(worker.scratch, ignore_errors=True)


async def test_a_worker_whose_device_broke_frees_no_slot(
    valkey: Valkey,  # noqa: F811
    r: aioredis.Redis,
) -> None:
    """A broken device sends its jobs back and the worker exits: the final events say no
    slot is free, so the bot grants nothing into the dying worker (it would hold the job
    until the worker's heartbeat ran out)."""
    from pipeline.remote_worker import _Held

    worker = RemoteWorker(
        redis.Redis.from_url(valkey.url), WorkerConfig(MODEL), worker_id="w",
        max_batch=1, heartbeat_s=TTL_S,
    )  # fmt: skip
    try:
        worker.held["1"] = _Held(1, [])
        message = worker._failure_message(RuntimeError("CUDA error: device-side assert"))
        await asyncio.to_thread(worker._send, Failed("1", message, retry=True))
        ((_, failed),) = await r.xrange(K.events("w"))
        assert (failed[b"t"], failed[b"retry"], failed[b"free"]) == (b"failed", b"1", b"0")
    finally:
        shutil.rmtree(worker.scratch, ignore_errors=True)


async def test_the_workers_with_a_free_slot_follow_grants_asks_and_departures(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    """Dispatch reads the workers with a free slot from an index kept as their slots
    change (a scan of a hundred workers costs 50 µs, every pass): at each step it says
    what a scan would, and a tie goes to the worker that came online first."""

    def scan() -> list[int]:
        return sorted((n for w in backend._workers.values() if (n := w.slots) > 0), reverse=True)

    async def read(expected: list[int]) -> None:  # the worker's event, once read
        async with asyncio.timeout(5):
            while scan() != expected:
                await asyncio.sleep(0.02)

    a, b = FakeWorker(r, "a", "n1"), FakeWorker(r, "b", "n2")
    await a.hello(free=1)
    await online(backend, 1)
    await b.hello(free=2)
    await online(backend, 2)
    assert backend.free_batches() == scan() == [2, 1]
    backend.submit([request(tmp_path, "1")])  # the most free: b
    await grant(r, "b")
    assert backend.free_batches() == scan() == [1, 1]
    backend.submit([request(tmp_path, "2")])  # a tie: a, online first
    await grant(r, "a")
    assert backend.free_batches() == scan() == [1] and backend.free_slots == 1
    await a.event("ask", free=1, seen=1, e=backend.epoch, v=a.v + 1)
    await read([1, 1])
    assert backend.free_batches() == [1, 1]
    await b.event("bye")
    await read([1])
    assert backend.free_batches() == [1] and backend.workers == ("a",)


async def test_a_final_event_that_frees_the_slot_wakes_dispatch_once(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    """The final event says the slot it freed and ends its batch: one `BatchDone` wakes
    dispatch with the slot already counted (a fleet's bot handles every event it makes)."""
    w = await running(backend, r, request(tmp_path))
    await next_of(backend, Started)
    await w.finished("1", 1, free=1, seen=1, e=backend.epoch, v=w.v + 1)
    assert isinstance(await next_of(backend, Finished), Finished)
    done = await next_of(backend, BatchDone)
    assert done == BatchDone(("1",)) and backend.free_slots == 1
    with pytest.raises(TimeoutError):  # no second wake-up for the same slot
        await next_of(backend, BatchDone, timeout=0.5)
