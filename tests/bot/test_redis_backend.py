"""`RedisBackend` against a real Valkey server, with the test speaking the worker's side of
the stream protocol by hand: attempts across worker deaths, late answers, refusals.

(The end-to-end tests run real worker processes; these pin the rules exactly and fast.)
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from PIL import Image

from bot.jobs.backends.redis import RedisBackend
from pipeline import stream_codec as codec
from pipeline.prepare import fit_to_resolution
from pipeline.request import EngineInfo, GenerationRequest, GenerationResult
from pipeline.worker_protocol import Finished, Progress, Started, WorkerDied, WorkerEvent
from tests.valkey_server import Valkey, valkey, valkey_server  # noqa: F401  (fixtures)

TTL_S = 0.6
MODEL = "tiny/model"
E = TypeVar("E")


@pytest_asyncio.fixture
async def backend(valkey: Valkey) -> AsyncIterator[RedisBackend]:  # noqa: F811
    b = RedisBackend(valkey.url, model_id=MODEL, resolution=64, heartbeat_s=TTL_S)
    await b.start()
    yield b
    await b.stop()


@pytest_asyncio.fixture
async def r(valkey: Valkey) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    client = aioredis.Redis.from_url(valkey.url)
    yield client
    await client.aclose()


K = codec.Keys()


async def hello(r: aioredis.Redis, wid: str, model: str = MODEL) -> None:
    """What a worker does once its model is loaded: a heartbeat key and a hello."""
    status = {
        "id": wid, "model": model, "max_batch": 1, "free": 1, "seen": 0, "epoch": "",
        "info": codec.to_dict(EngineInfo(model, "cpu", "fp32", 64, "P")),
    }  # fmt: skip
    await r.set(K.heartbeat(wid), codec.dumps(status), px=int(TTL_S * 1000))
    await r.xadd(K.hello, {b"hello": codec.dumps(status)})


async def event(r: aioredis.Redis, wid: str, kind: str, **fields: Any) -> None:
    entry = {b"t": kind.encode(), b"w": wid.encode()}
    entry.update(
        {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
    )
    await r.xadd(K.events(wid), entry)  # type: ignore[arg-type]


async def grant(r: aioredis.Redis, wid: str) -> dict[str, Any]:
    """The next grant in the worker's stream (taken, as a worker would)."""
    reply = await r.xread({K.grants(wid): "0-0"}, count=1, block=5000)
    assert reply, f"no grant for {wid}"
    entry_id, entry = reply[0][1][0]
    await r.xdel(K.grants(wid), entry_id)
    return {k.decode(): v for k, v in entry.items()}


async def next_of(b: RedisBackend, kind: type[E], timeout: float = 10.0) -> E:
    async with asyncio.timeout(timeout):
        while True:
            ev: WorkerEvent = await b.next_event()
            if isinstance(ev, kind):
                return ev


async def online(b: RedisBackend, count: int) -> None:
    async with asyncio.timeout(10):
        while b.workers_online != count:
            await asyncio.sleep(0.02)


def request(tmp_path: Path) -> GenerationRequest:
    image = tmp_path / "in.png"
    image.write_bytes(b"not really a png")
    return GenerationRequest(
        "1", str(image), "a fox", 0.5, 42, 10, 7.5, str(tmp_path / "out" / "1.png")
    )


async def test_a_job_runs_again_once_after_a_death_then_fails_and_late_answers_are_dropped(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    req = request(tmp_path)
    await hello(r, "a")
    await online(backend, 1)
    backend.submit([req])
    first = await grant(r, "a")
    (item,) = codec.loads(first["batch"])
    assert item["a"] == 1 and item["req"]["seed"] == 42
    assert first["file:1:image_path"] == b"not really a png"  # the input travels along
    await event(r, "a", "started", jobs=codec.dumps([["1", 1]]))
    assert await next_of(backend, Started) == Started(("1",))

    # "a" stops beating: the job waits again (it started once; two are allowed).
    died = await next_of(backend, WorkerDied)
    assert (died.job_ids, died.unstarted) == ((), ("1",))
    assert backend.running == () and backend.workers_online == 0

    await hello(r, "b")
    await online(backend, 1)
    backend.submit([req])
    (item,) = codec.loads((await grant(r, "b"))["batch"])
    assert item["a"] == 2 and item["req"]["seed"] == 42  # same seed: the same picture
    await event(r, "b", "started", jobs=codec.dumps([["1", 2]]))
    await next_of(backend, Started)

    # "a" comes back and answers attempt 1: discarded, nothing reaches the job service.
    await hello(r, "a")
    await online(backend, 2)
    result = GenerationResult("1", "/scratch/1.png", 42, 5, 10, 64, 64, 0.1)
    await event(r, "a", "finished", job="1", a=1, result=codec.encode_result(result), png=b"x")
    async with asyncio.timeout(10):
        while backend.discarded < 1:
            await asyncio.sleep(0.02)
    assert not Path(req.output_path).exists()

    # "b" dies too: the job started on two workers that both died, so it fails.
    await r.delete(K.heartbeat("b"))
    died = await next_of(backend, WorkerDied)
    assert (died.job_ids, died.unstarted) == (("1",), ())


async def test_a_result_is_written_where_the_bot_keeps_it(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    req = request(tmp_path)
    await hello(r, "a")
    await online(backend, 1)
    backend.submit([req])
    await grant(r, "a")
    await event(r, "a", "started", jobs=codec.dumps([["1", 1]]))
    result = GenerationResult("1", "/scratch/1.png", 42, 5, 10, 64, 64, 0.1)
    await event(r, "a", "finished", job="1", a=1, result=codec.encode_result(result), png=b"PNG")
    finished = await next_of(backend, Finished)
    assert finished.result.output_path == req.output_path
    assert Path(req.output_path).read_bytes() == b"PNG"
    assert backend.ran_by["1"] == "a"
    # Still listed as running until the job service has handled its Finished (it asks for
    # the next event only then), so a worker death meanwhile cannot put it back.
    assert backend.running == ("1",)
    asking = asyncio.create_task(backend.next_event())
    await asyncio.sleep(0)
    assert backend.running == ()
    asking.cancel()
    assert await r.xlen(K.events("a")) == 0  # the PNG does not stay on the server


async def test_live_previews_ride_a_progress_event_per_job_and_leave_the_server(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    """Issue 29: a worker's progress entry carries preview bytes per job (the fields the
    remote worker writes, `codec.preview_fields`); the bot gets them as the Progress map,
    a hidden one (b"") included, another process's job's left out; the entry is deleted."""
    await hello(r, "a")
    await online(backend, 1)
    backend.submit([request(tmp_path)])
    await grant(r, "a")
    await event(r, "a", "started", jobs=codec.dumps([["1", 1]]))
    shown = codec.preview_fields({"1": b"\xff\xd8JPEG", "9": b"not ours"})
    await event(r, "a", "progress", jobs=codec.dumps([["1", 1], ["9", 1]]), step=3, total=10,
                **shown)  # fmt: skip
    progress = await next_of(backend, Progress)
    assert progress.job_ids == ("1",) and progress.previews == {"1": b"\xff\xd8JPEG"}
    await event(r, "a", "progress", jobs=codec.dumps([["1", 1]]), step=5, total=10,
                **codec.preview_fields({"1": b""}))  # fmt: skip
    assert (await next_of(backend, Progress)).previews == {"1": b""}  # hidden
    async with asyncio.timeout(5):
        while await r.xlen(K.events("a")):  # no preview stays on the server
            await asyncio.sleep(0.02)


async def test_a_grant_carries_an_img2img_input_at_the_working_size_and_others_as_stored(
    backend: RedisBackend, r: aioredis.Redis, tmp_path: Path
) -> None:
    """A 1024×768 photo travels to a 64 px worker as the 64×48 picture the worker would make
    of it (so the same pixels, a fraction of the bytes); an inpainting's photo and mask travel
    as stored, since inpainting works at the photo's own resolution."""
    photo = tmp_path / "photo.png"
    Image.radial_gradient("L").resize((1024, 768)).convert("RGB").save(photo)
    mask = tmp_path / "mask.png"
    Image.new("L", (1024, 768), 255).save(mask)
    out = str(tmp_path / "out" / "1.png")
    img2img = GenerationRequest("1", str(photo), "a fox", 0.5, 42, 10, 7.5, out)
    inpaint = replace(img2img, job_id="2", mode="inpaint", mask_path=str(mask))
    await hello(r, "a")
    await online(backend, 1)
    backend.submit([img2img])
    sent = Image.open(io.BytesIO((await grant(r, "a"))["file:1:image_path"]))
    with Image.open(photo) as original:
        expected = fit_to_resolution(original.convert("RGB"), 64)
    assert sent.size == (64, 48) and sent.tobytes() == expected.tobytes()
    await event(r, "a", "ask", free=1, seen=1, e=backend.epoch, v=2)
    async with asyncio.timeout(10):
        while backend.free_slots != 1:
            await asyncio.sleep(0.02)
    backend.submit([inpaint])
    entry = await grant(r, "a")
    assert entry["file:2:image_path"] == photo.read_bytes()
    assert entry["file:2:mask_path"] == mask.read_bytes()


async def test_a_worker_with_another_model_is_refused(
    backend: RedisBackend, r: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await hello(r, "odd", model="another/model")
    refusal = await grant(r, "odd")
    assert refusal["t"] == b"refused" and b"another/model" in refusal["reason"]
    assert backend.workers_online == 0 and backend.free_slots == 0
    assert "refusing worker odd" in caplog.text


async def test_a_worker_that_beats_but_goes_silent_with_a_job_is_dropped(
    valkey: Valkey,  # noqa: F811
    r: aioredis.Redis,
    tmp_path: Path,
) -> None:
    b = RedisBackend(valkey.url, model_id=MODEL, heartbeat_s=TTL_S, silence_s=1.0)
    await b.start()
    try:
        await hello(r, "hung")
        await online(b, 1)
        b.submit([request(tmp_path)])
        await grant(r, "hung")
        await event(r, "hung", "started", jobs=codec.dumps([["1", 1]]))

        async def beat() -> None:  # the heartbeat thread lives on; the GPU hangs
            while True:
                await r.pexpire(K.heartbeat("hung"), int(TTL_S * 1000))
                await asyncio.sleep(TTL_S / 4)

        beating = asyncio.create_task(beat())
        try:
            died = await next_of(b, WorkerDied)
        finally:
            beating.cancel()
        assert (died.job_ids, died.unstarted) == ((), ("1",))
    finally:
        await b.stop()
