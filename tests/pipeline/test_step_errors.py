"""An error in the step loop stops only what it touched (issue 25 item 7), on the tiny model
in a real worker process (BATCHING=step): an out-of-memory in one job's decode, or a PNG
that cannot be written, fails that job alone while the rest of its set finishes; a failed
UNet call sends that set's jobs back (`Failed.retry`) while the other set finishes. Faults
are raised by the real calls (tests/pipeline/step_faults.py); that the bot runs a job sent
back once more, and fails it for good the second time, is in tests/bot/test_retries.py.
A job sent back may be handed to the worker again at once: the client keeps it apart from
its old Run, and takes nothing once the worker said its device broke."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from pipeline.request import GenerationRequest
from pipeline.worker import (
    EXIT_DEVICE_BROKEN,
    FAILED_MESSAGE,
    BatchDone,
    Failed,
    Finished,
    WorkerClient,
    WorkerConfig,
    WorkerDied,
    WorkerEvent,
)
from tests.pipeline.step_faults import DECODE_OOM, DEVICE_ASSERT, ENGINE_REF, UNET_ERROR

module_loop = pytest.mark.asyncio(loop_scope="module")
EVENT_TIMEOUT_S = 60.0


def request(
    tmp: Path, job_id: str, prompt: str = "a fox", *, size: tuple[int, int] = (80, 60)
) -> GenerationRequest:
    image_path = tmp / f"{job_id}-in.png"
    Image.new("RGB", size, (200, 120, 40)).save(image_path)
    return GenerationRequest(
        job_id=job_id,
        image_path=str(image_path),
        prompt=prompt,
        strength=1.0,
        seed=7,
        steps=3,
        guidance=7.5,
        output_path=str(tmp / "out" / f"{job_id}.png"),
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(
    tiny_model_dir: Path, checker_dirs: dict[str, Path]
) -> AsyncIterator[WorkerClient]:
    config = WorkerConfig(
        str(tiny_model_dir),
        device="cpu",
        resolution=64,
        safety_checker_id=str(checker_dirs["none"]),
        batching="step",
    )
    worker = WorkerClient(config, start_timeout=120.0, max_batch=3)
    worker._engine_ref = ENGINE_REF
    await worker.start()
    yield worker
    await worker.stop()


async def run(client: WorkerClient, *batches: list[GenerationRequest]) -> list[WorkerEvent]:
    """Submit each batch as a Run and collect the events until every Run is done."""
    for batch in batches:
        client.submit(batch)
    events: list[WorkerEvent] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while sum(isinstance(e, BatchDone) for e in events) < len(batches):
            events.append(await client.next_event())
    return events


def finals(events: list[WorkerEvent]) -> dict[str, WorkerEvent]:
    ends = [e for e in events if isinstance(e, (Finished, Failed))]
    assert len(ends) == len({e.job_id for e in ends})  # exactly one final event each
    return {e.job_id: e for e in ends}


@module_loop
async def test_an_oom_in_one_decode_or_one_png_write_fails_that_job_alone(
    client: WorkerClient, tmp_path: Path
) -> None:
    jobs = [
        request(tmp_path, "a"),
        request(tmp_path, "b", f"a fox {DECODE_OOM}"),
        request(tmp_path, "c"),
    ]
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"")  # c's PNG cannot be written under a file
    jobs[2] = GenerationRequest(**{**jobs[2].__dict__, "output_path": str(blocked / "c.png")})
    ends = finals(await run(client, jobs))
    assert isinstance(ends["a"], Finished) and Path(ends["a"].result.output_path).is_file()
    oom, png = ends["b"], ends["c"]
    assert isinstance(oom, Failed) and not oom.retry
    assert oom.message.startswith("Out of memory") and "CUDA" not in oom.message
    assert isinstance(png, Failed) and not png.retry and png.message == FAILED_MESSAGE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # no .part
    assert client.info is not None and client.running == ()  # the worker goes on


@module_loop
async def test_a_failed_unet_call_sends_its_set_back_and_the_other_set_finishes(
    client: WorkerClient, tmp_path: Path
) -> None:
    landscape = [request(tmp_path, "l1"), request(tmp_path, "l2")]
    portrait = [
        request(tmp_path, "p1", f"a fox {UNET_ERROR}", size=(60, 80)),
        request(tmp_path, "p2", size=(60, 80)),
    ]
    ends = finals(await run(client, landscape, portrait))
    assert all(isinstance(ends[j], Finished) for j in ("l1", "l2"))
    for job_id in ("p1", "p2"):
        sent_back = ends[job_id]
        assert isinstance(sent_back, Failed) and sent_back.retry
        assert sent_back.message.startswith("Out of memory")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["l1.png", "l2.png"]
    # the worker is whole: the same jobs without the fault run at once
    again = [request(tmp_path, "p3", size=(60, 80))]
    assert isinstance(finals(await run(client, again))["p3"], Finished)


@contextlib.contextmanager
def sent_again_at_once(client: WorkerClient, tmp: Path) -> Iterator[list[str]]:
    """Hand each job sent back (`Failed.retry`) to the worker again the moment the client
    reads it, before it reads anything after (the bot's fastest reaction), where a slot
    is free; yields the job ids handed again."""
    again: list[str] = []
    read = client._on_message

    def on_message(generation: int, message: object) -> None:
        read(generation, message)
        if isinstance(message, Failed) and message.retry and client.free_slots:
            again.append(message.job_id)
            client.submit([request(tmp, message.job_id)])  # the fault's prompt left out

    client._on_message = on_message  # type: ignore[method-assign]
    try:
        yield again
    finally:
        del client._on_message


@module_loop
async def test_a_job_sent_back_and_handed_again_at_once_runs_to_its_end(
    client: WorkerClient, tmp_path: Path
) -> None:
    with sent_again_at_once(client, tmp_path) as again:
        events = await run(client, [request(tmp_path, "s1", f"a fox {UNET_ERROR}")])
        assert again == ["s1"] and client.running == ("s1",)  # its old Run's end left it
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while sum(isinstance(e, BatchDone) for e in events) < 2:  # the new run's too
                events.append(await client.next_event())
    ends = [e for e in events if isinstance(e, (Finished, Failed))]
    assert isinstance(ends[0], Failed) and ends[0].retry
    assert isinstance(ends[1], Finished) and ends[1].result.job_id == "s1"
    assert client.running == ()


@module_loop
async def test_a_worker_whose_device_broke_takes_no_job_sent_back(
    client: WorkerClient, tmp_path: Path
) -> None:
    """The worker says it exits before it sends its jobs back, so none of them is handed
    into it (it would be lost with it): they wait for the restarted worker."""
    with sent_again_at_once(client, tmp_path) as again:
        events = await run(client, [request(tmp_path, "d1", f"a fox {DEVICE_ASSERT}")])
        sent_back = finals(events)["d1"]
        assert isinstance(sent_back, Failed) and sent_back.retry
        assert again == [] and client.free_slots == 0
        died = await asyncio.wait_for(client.next_event(), EVENT_TIMEOUT_S)
    assert died == WorkerDied(EXIT_DEVICE_BROKEN, (), ())
    await client.restart()
    assert isinstance(finals(await run(client, [request(tmp_path, "d2")]))["d2"], Finished)
