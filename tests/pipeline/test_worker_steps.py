"""The worker in step-batching mode (BATCHING=step), with the real engine on the tiny model.

A Run arriving while others run joins at the next step boundary (what happens at one
boundary goes out as one Started and one Progress per step count); a job of another size
runs beside them in a second set, and one of a third size waits in the worker for a drain;
every job gets exactly one final event and each Run its BatchDone; a death lists started
and waiting jobs apart. (Pixel equality of the loop itself is tested in test_stepbatch.py;
the call-path worker in test_worker.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from pipeline.request import GenerationRequest
from pipeline.worker import (
    BatchDone,
    Cancelled,
    Finished,
    Progress,
    Recalled,
    Started,
    WorkerClient,
    WorkerConfig,
    WorkerDied,
    WorkerEvent,
)

module_loop = pytest.mark.asyncio(loop_scope="module")

SLOTS = 3
EVENT_TIMEOUT_S = 60.0


def request(tmp: Path, job_id: str, *, size: tuple[int, int] = (80, 60), steps: int = 4):
    image_path = tmp / f"{job_id}-in.png"
    Image.new("RGB", size, (200, 120, 40)).save(image_path)
    return GenerationRequest(
        job_id=job_id,
        image_path=str(image_path),
        prompt="a fox",
        strength=1.0,
        seed=7,
        steps=steps,
        guidance=7.5,
        output_path=str(tmp / f"{job_id}-out.png"),
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
    worker = WorkerClient(config, start_timeout=120.0, max_batch=SLOTS)
    await worker.start()
    yield worker
    await worker.stop()


async def collect(
    client: WorkerClient,
    until: Callable[[list[WorkerEvent]], bool],
    on_event: Callable[[WorkerEvent], None] | None = None,
) -> list[WorkerEvent]:
    events: list[WorkerEvent] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while not until(events):
            event = await client.next_event()
            events.append(event)
            if on_event is not None:
                on_event(event)
    return events


def batches_done(n: int) -> Callable[[list[WorkerEvent]], bool]:
    return lambda events: sum(isinstance(e, BatchDone) for e in events) >= n


def where(events: list[WorkerEvent], kind: type, job_id: str) -> int:
    for i, e in enumerate(events):
        ids = getattr(e, "job_ids", None) or (getattr(e, "job_id", None),)
        if isinstance(e, kind) and job_id in ids:
            return i
    raise AssertionError(f"no {kind.__name__} for {job_id}")


@module_loop
async def test_ready_says_step_mode(client: WorkerClient) -> None:
    assert client.info is not None and client.info.step_slots == SLOTS
    assert client.free_slots == 2 * SLOTS  # a running set and as many ready to join


@module_loop
async def test_a_run_arriving_mid_run_joins(client: WorkerClient, tmp_path: Path) -> None:
    a = request(tmp_path, "a", steps=30)  # long enough for b to join while it runs
    b = request(tmp_path, "b", steps=3)
    client.submit([a])
    assert client.free_slots == 2 * SLOTS - 1

    def join_b(event: WorkerEvent) -> None:
        if isinstance(event, Progress) and event.job_ids == ("a",) and event.step == 1:
            client.submit([b])
            assert client.free_slots == 2 * SLOTS - 2

    events = await collect(client, batches_done(2), join_b)
    assert where(events, Started, "b") < where(events, Finished, "a")  # ran side by side
    assert where(events, Finished, "b") < where(events, Finished, "a")  # and left first
    assert [e.job_ids for e in events if isinstance(e, BatchDone)] == [("b",), ("a",)]
    assert {e.job_id for e in events if isinstance(e, Finished)} == {"a", "b"}
    assert all(len(e.job_ids) == 1 for e in events if isinstance(e, (Progress, Started)))
    assert client.free_slots == 2 * SLOTS and client.running == () and not client.busy
    assert Path(a.output_path).is_file() and Path(b.output_path).is_file()


@module_loop
async def test_cancel_one_of_three(client: WorkerClient, tmp_path: Path) -> None:
    jobs = [request(tmp_path, name, steps=s) for name, s in (("x", 4), ("y", 60), ("z", 6))]
    client.submit(jobs)
    assert client.free_slots == SLOTS

    def cancel_y(event: WorkerEvent) -> None:
        if isinstance(event, Progress) and "y" in event.job_ids and event.step >= 2:
            client.cancel("y")

    events = await collect(client, batches_done(1), cancel_y)
    finals = {e.job_id: type(e).__name__ for e in events if isinstance(e, (Finished, Cancelled))}
    assert finals == {"x": "Finished", "y": "Cancelled", "z": "Finished"}
    assert max(e.step for e in events if isinstance(e, Progress) and "y" in e.job_ids) < 60
    assert [e.job_ids for e in events if isinstance(e, Started)] == [("x", "y", "z")]


@module_loop
async def test_one_boundary_is_one_message(client: WorkerClient, tmp_path: Path) -> None:
    """Jobs that join together and share a step count are reported together: a set costs
    the bot (or a Redis stream) as many messages as one pipeline-call batch."""
    jobs = [request(tmp_path, name, steps=3) for name in ("p", "q")]
    client.submit(jobs)
    events = await collect(client, batches_done(1))
    assert [e.job_ids for e in events if isinstance(e, Started)] == [("p", "q")]
    progress = [(e.job_ids, e.step, e.total) for e in events if isinstance(e, Progress)]
    assert progress and all(ids == ("p", "q") and total == 3 for ids, _, total in progress)
    assert progress[0][1] == 1 and progress[-1][1] == 3
    assert where(events, Progress, "p") < where(events, Finished, "p")
    assert client.free_slots == 2 * SLOTS


@module_loop
async def test_jobs_beyond_the_set_wait_in_the_worker(client: WorkerClient, tmp_path: Path) -> None:
    jobs = [request(tmp_path, f"w{i}", steps=3 + i) for i in range(SLOTS + 1)]
    client.submit(jobs)  # one more than the running set: it waits in the worker
    events = await collect(client, batches_done(1))
    first_done = min(where(events, Finished, j.job_id) for j in jobs)
    assert where(events, Started, jobs[-1].job_id) > first_done
    assert all(where(events, Started, j.job_id) < first_done for j in jobs[:-1])


@module_loop
async def test_a_second_size_runs_beside_and_a_third_waits(
    client: WorkerClient, tmp_path: Path
) -> None:
    wide = request(tmp_path, "wide", steps=12)
    tall = request(tmp_path, "tall", size=(60, 80), steps=12)
    square = request(tmp_path, "square", size=(80, 80), steps=2)
    client.submit([wide])
    client.submit([tall])
    client.submit([square])
    events = await collect(client, batches_done(3))
    first_done = min(where(events, Finished, j) for j in ("wide", "tall"))
    assert where(events, Started, "tall") < first_done
    assert where(events, Started, "square") > first_done
    assert {e.job_id for e in events if isinstance(e, Finished)} == {"wide", "tall", "square"}


@module_loop
async def test_death_lists_started_and_waiting_jobs(client: WorkerClient, tmp_path: Path) -> None:
    running = [request(tmp_path, f"running{i}", steps=40) for i in range(SLOTS)]
    waiting = request(tmp_path, "waiting")  # the set is full: it waits in the worker
    client.submit(running)
    client.submit([waiting])
    pid = client.pid
    assert pid is not None

    def kill(event: WorkerEvent) -> None:
        if isinstance(event, Progress):
            os.kill(pid, signal.SIGKILL)

    events = await collect(client, lambda ev: bool(ev) and isinstance(ev[-1], WorkerDied), kill)
    died = events[-1]
    assert isinstance(died, WorkerDied)
    assert set(died.job_ids) == {r.job_id for r in running} and died.unstarted == ("waiting",)
    assert client.free_slots == 0
    await client.restart()
    assert client.free_slots == 2 * SLOTS


@module_loop
async def test_a_recalled_job_comes_back_unstarted_and_a_started_one_runs_on(
    client: WorkerClient, tmp_path: Path
) -> None:
    """The bot recalls a job the worker holds ready to join when a fairer one arrives: it
    comes back as Recalled, untouched, and its Run's BatchDone leaves it out; a recall of
    a job that started is ignored. Handed over again, it runs."""
    running = [request(tmp_path, f"busy{i}", steps=12) for i in range(SLOTS)]
    held = request(tmp_path, "held")  # the set is full: it waits in the worker
    client.submit(running)
    client.submit([held])

    def recall(event: WorkerEvent) -> None:
        if isinstance(event, Started) and "busy0" in event.job_ids:
            client.recall("held")
            client.recall("busy0")  # started: nothing to hand back

    events = await collect(client, batches_done(2), recall)
    assert [e.job_id for e in events if isinstance(e, Recalled)] == ["held"]
    assert not any("held" in getattr(e, "job_ids", ()) for e in events)  # never started
    assert {e.job_id for e in events if isinstance(e, Finished)} == {r.job_id for r in running}
    assert [e.job_ids for e in events if isinstance(e, BatchDone)] == [
        (),
        tuple(r.job_id for r in running),
    ]
    assert not Path(held.output_path).exists()
    assert client.free_slots == 2 * SLOTS and client.running == ()
    client.submit([held])
    events = await collect(client, batches_done(1))
    assert [e.job_id for e in events if isinstance(e, Finished)] == ["held"]
