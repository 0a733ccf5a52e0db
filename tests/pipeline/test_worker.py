"""The worker process and its asyncio client, with the real Engine on the tiny model.

One started client is shared by the module (spawning a worker imports torch: seconds).
The few protocol corners a real model cannot produce on demand (an OOM, a broken device)
use `FakeEngine` below, which the spawned child imports from this module.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from pipeline.request import INPUT_MISSING, GenerationRequest, GenerationResult
from pipeline.worker import (
    DEVICE_BROKEN_MESSAGE,
    EXIT_DEVICE_BROKEN,
    FAILED_MESSAGE,
    BatchDone,
    Cancel,
    Cancelled,
    EngineInfo,
    Failed,
    Finished,
    LoadFailed,
    ModelLoaded,
    ModelLoading,
    Progress,
    Ready,
    Run,
    Started,
    Stop,
    WorkerClient,
    WorkerConfig,
    WorkerDied,
    WorkerEvent,
    WorkerStartError,
)
from pipeline.worker_protocol import Exiting, ModelSpec

module_loop = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
RESOLUTION = 128
EVENT_TIMEOUT_S = 60.0


# -- helpers ---------------------------------------------------------------------------
def make_request(
    tmp: Path, job_id: str, *, steps: int = 4, strength: float = 0.75, prompt: str = "a fox"
) -> GenerationRequest:
    """A request with its own RGB PNG input (not square, so resizing is exercised)."""
    image_path = tmp / f"{job_id}-in.png"
    Image.new("RGB", (160, 120), (200, 120, 40)).save(image_path)
    return GenerationRequest(
        job_id=job_id,
        image_path=str(image_path),
        prompt=prompt,
        strength=strength,
        seed=1234,
        steps=steps,
        guidance=7.5,
        output_path=str(tmp / f"{job_id}-out.png"),
    )


async def events_until_done(
    client: WorkerClient,
    *,
    on_event: Callable[[WorkerEvent], None] | None = None,
    timeout: float = EVENT_TIMEOUT_S,
) -> list[WorkerEvent]:
    """Events up to and including the batch's BatchDone or WorkerDied."""
    events: list[WorkerEvent] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await client.next_event()
            events.append(event)
            if on_event is not None:
                on_event(event)
            if isinstance(event, (BatchDone, WorkerDied)):
                return events


def finals(events: Sequence[WorkerEvent]) -> dict[str, WorkerEvent]:
    return {e.job_id: e for e in events if isinstance(e, (Finished, Failed, Cancelled))}


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- the shared client (real engine) -----------------------------------------------------
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(
    tiny_model_dir: Path, checker_dirs: dict[str, Path]
) -> AsyncIterator[WorkerClient]:
    config = WorkerConfig(
        str(tiny_model_dir),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker="on",
        safety_checker_id=str(checker_dirs["none"]),  # the real checker path, flags nothing
    )
    worker = WorkerClient(config, start_timeout=120.0)
    await worker.start()
    yield worker
    await worker.stop()


@module_loop
async def test_start_reports_engine_info(client: WorkerClient, tiny_model_dir: Path) -> None:
    info = client.info
    assert isinstance(info, EngineInfo)
    assert info.model_id == str(tiny_model_dir)
    assert info.device == "cpu"
    assert info.resolution == RESOLUTION
    assert info.pipeline_class
    assert info.safety_checker == "on"
    assert client.pid is not None and client.pid != os.getpid()
    assert not client.busy and client.running == ()


@module_loop
async def test_one_job_progress_then_finished(client: WorkerClient, tmp_path: Path) -> None:
    req = make_request(tmp_path, "one", steps=4, strength=1.0)
    client.submit([req])
    assert client.busy and client.running == ("one",)
    with pytest.raises(RuntimeError, match="busy"):
        client.submit([make_request(tmp_path, "other")])

    events = await events_until_done(client)

    progress = [e for e in events if isinstance(e, Progress)]
    assert progress, events
    assert all(p.job_ids == ("one",) for p in progress)
    assert progress[-1].step == progress[-1].total  # the last step is always sent
    assert events[0] == Started(("one",))
    assert [type(e) for e in events[-2:]] == [Finished, BatchDone]
    result = events[-2].result  # type: ignore[union-attr]
    assert isinstance(result, GenerationResult)
    assert result.job_id == "one" and result.output_path == req.output_path
    assert Path(result.output_path).is_file()
    with Image.open(result.output_path) as out:
        assert out.format == "PNG"
        assert max(out.size) <= RESOLUTION
    assert events[-1] == BatchDone(("one",))
    assert not client.busy and client.running == ()


@module_loop
async def test_batch_of_two(client: WorkerClient, tmp_path: Path) -> None:
    batch = [make_request(tmp_path, "b1"), make_request(tmp_path, "b2")]
    client.submit(batch)
    assert client.running == ("b1", "b2")

    events = await events_until_done(client)

    done = finals(events)
    assert set(done) == {"b1", "b2"}
    for req in batch:
        assert isinstance(done[req.job_id], Finished)
        assert Path(req.output_path).is_file()
    assert all(p.job_ids == ("b1", "b2") for p in events if isinstance(p, Progress))
    assert events[-1] == BatchDone(("b1", "b2"))


@module_loop
async def test_event_loop_keeps_ticking_while_generating(
    client: WorkerClient, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before - 0.01)

    task = asyncio.create_task(ticker())
    client.submit([make_request(tmp_path, "tick", steps=8, strength=1.0)])
    events = await events_until_done(client)
    stop.set()
    await task

    assert isinstance(finals(events)["tick"], Finished)
    assert worst < 1.0, f"event loop stalled {worst:.3f} s"


@module_loop
async def test_cancel_running_job(client: WorkerClient, tmp_path: Path) -> None:
    req = make_request(tmp_path, "cancel-me", steps=60, strength=1.0)
    client.submit([req])

    def cancel_on_first_progress(event: WorkerEvent) -> None:
        if isinstance(event, Progress):
            client.cancel("cancel-me")

    events = await events_until_done(client, on_event=cancel_on_first_progress)

    assert finals(events) == {"cancel-me": Cancelled("cancel-me")}
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps and max(steps) < 60
    assert events[-1] == BatchDone(("cancel-me",))
    assert not client.busy
    client.cancel("cancel-me")  # no longer running: a no-op


@module_loop
async def test_a_missing_input_fails_only_its_job(client: WorkerClient, tmp_path: Path) -> None:
    """Fault 6: the input of one job was pruned before the run; the others finish."""
    batch = [make_request(tmp_path, j) for j in ("m1", "m2", "m3")]
    Path(batch[1].image_path).unlink()
    client.submit(batch)

    events = await events_until_done(client)

    done = finals(events)
    assert done["m2"] == Failed("m2", INPUT_MISSING)
    assert str(tmp_path) not in INPUT_MISSING
    assert isinstance(done["m1"], Finished) and isinstance(done["m3"], Finished)
    assert Path(batch[0].output_path).is_file() and Path(batch[2].output_path).is_file()
    assert not Path(batch[1].output_path).exists()
    assert len([e for e in events if isinstance(e, (Finished, Failed, Cancelled))]) == 3
    assert all("m2" not in e.job_ids for e in events if isinstance(e, Progress))


@module_loop
async def test_cancel_one_job_of_a_batch(client: WorkerClient, tmp_path: Path) -> None:
    """Fault 7: a job cancelled mid-batch gets Cancelled at once (before the batch ends),
    drops out of later Progress, leaves no PNG; the other two finish."""
    batch = [make_request(tmp_path, j, steps=8, strength=1.0) for j in ("c1", "c2", "c3")]
    client.submit(batch)
    asked = False

    def cancel_c2_on_first_progress(event: WorkerEvent) -> None:
        nonlocal asked
        if isinstance(event, Progress) and not asked:
            asked = True
            client.cancel("c2")

    events = await events_until_done(client, on_event=cancel_c2_on_first_progress, timeout=300)

    kinds = [(type(e).__name__, getattr(e, "job_id", None)) for e in events]
    at = kinds.index(("Cancelled", "c2"))
    progress_after = [e for e in events[at:] if isinstance(e, Progress)]
    assert progress_after, "c2 was cancelled only when the batch ended"
    assert all(p.job_ids == ("c1", "c3") for p in progress_after)
    assert progress_after[-1].step == progress_after[-1].total
    done = finals(events)
    assert done["c2"] == Cancelled("c2")
    assert isinstance(done["c1"], Finished) and isinstance(done["c3"], Finished)
    assert len([e for e in events if isinstance(e, (Finished, Failed, Cancelled))]) == 3
    assert not Path(batch[1].output_path).exists()
    assert events[-1] == BatchDone(("c1", "c2", "c3"))


@module_loop
async def test_kill_during_job_then_restart(client: WorkerClient, tmp_path: Path) -> None:
    old_pid = client.pid
    assert old_pid is not None
    client.submit([make_request(tmp_path, "doomed", steps=60, strength=1.0)])

    def kill_on_first_progress(event: WorkerEvent) -> None:
        if isinstance(event, Progress) and client.pid == old_pid:
            os.kill(old_pid, signal.SIGKILL)

    events = await events_until_done(client, on_event=kill_on_first_progress)

    assert events[-1] == WorkerDied(-signal.SIGKILL, ("doomed",), unstarted=())
    assert not client.busy and client.pid is None and client.info is None
    # A submit to the dead worker never raises: its jobs come back unstarted.
    client.submit([make_request(tmp_path, "too-early")])
    assert await client.next_event() == WorkerDied(-signal.SIGKILL, (), ("too-early",))

    info = await client.restart()

    assert info.resolution == RESOLUTION
    assert client.pid not in (None, old_pid)
    client.submit([make_request(tmp_path, "after")])
    events = await events_until_done(client)
    assert isinstance(finals(events)["after"], Finished)


@module_loop
async def test_stop_ends_the_process(client: WorkerClient) -> None:
    """Runs last in this module: afterwards the shared client is stopped."""
    pid = client.pid
    assert pid is not None
    started = time.monotonic()

    await client.stop()

    assert time.monotonic() - started < 10.0
    assert client.exitcode == 0  # a graceful exit, not a kill
    assert client.pid is None and not client.busy
    assert pid_gone(pid)
    with pytest.raises(ValueError, match="empty"):
        client.submit([])
    await client.stop()  # stopping twice is harmless


# -- start failures ----------------------------------------------------------------------
@module_loop
async def test_bad_model_path_raises_start_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    worker = WorkerClient(WorkerConfig(str(missing), device="cpu"), start_timeout=120.0)

    with pytest.raises(WorkerStartError) as excinfo:
        await worker.start()

    assert str(missing) in str(excinfo.value)
    assert worker.pid is None and worker.exitcode is not None and worker.exitcode != 0


# -- import hygiene and protocol ---------------------------------------------------------
def test_importing_worker_does_not_import_torch() -> None:
    code = (
        "import pipeline.worker, sys; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "assert 'diffusers' not in sys.modules, 'diffusers'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_messages_are_picklable(tmp_path: Path) -> None:
    req = make_request(tmp_path, "p")
    result = GenerationResult("p", "/x.png", 1, 2, 3, 64, 64, 0.5)
    info = EngineInfo("m", "cpu", "fp32", 512, "StableDiffusionImg2ImgPipeline")
    messages = [
        WorkerConfig("m"),
        WorkerConfig("m", models=(ModelSpec("a", "m", "/cfg", 512), ModelSpec("b", "n"))),
        Ready(info),
        ModelLoading("b", ("p",)),
        ModelLoaded("b", ("a", "b")),
        LoadFailed("no"),
        Started(("p",)),
        Progress(("p",), 1, 2),
        Finished(result),
        Failed("p", "boom"),
        Cancelled("p"),
        BatchDone(("p",)),
        BatchDone(("p",), worker_exiting=True),
        Exiting(),
        WorkerDied(-9, ("p",)),
        WorkerDied(70, (), unstarted=("q",)),
        Run((req,)),
        Cancel("p"),
        Stop(),
    ]
    for message in messages:
        assert pickle.loads(pickle.dumps(message)) == message


# -- corners the tiny model cannot produce: a stand-in engine ------------------------------
FAKE_ENGINE_REF = f"{__name__}:FakeEngine"


class JobCancelled(Exception):
    """What `FakeEngine` raises; the worker looks it up next to the engine class."""


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the worker recognises by name."""


@dataclass(frozen=True)
class FakeInfo:
    model_id: str
    device: str = "cpu"
    dtype: str = "fp32"
    resolution: int = 64
    pipeline_class: str = "Fake"


class FakeEngine:
    """Behaves as the prompt says: "oom", "cuda-error", "server-error" (an exception whose
    text holds a path), else 10 ms a step and a 64 px PNG."""

    def __init__(self, info: FakeInfo) -> None:
        self.info = info

    @classmethod
    def load(cls, model_id: str, *, resolution: int | None = None, **kw: object) -> FakeEngine:
        if model_id == "slow":
            time.sleep(60)
        return cls(FakeInfo(model_id, resolution=resolution or 64))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        is_cancelled: Callable[[str], bool] | None = None,
        **callbacks: object,
    ) -> list[GenerationResult]:
        prompt = requests[0].prompt
        if prompt == "oom":
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if prompt == "cuda-error":
            raise RuntimeError("CUDA error: device-side assert triggered\nmore detail")
        if prompt == "server-error":
            raise FileNotFoundError(2, "No such file or directory", "/srv/data/secret.png")
        total = requests[0].steps
        for step in range(1, total + 1):
            if is_cancelled and all(is_cancelled(r.job_id) for r in requests):
                raise JobCancelled
            time.sleep(0.01)
            if on_progress:
                on_progress(step, total)
        results = []
        for r in requests:
            Image.new("RGB", (64, 64)).save(r.output_path)
            results.append(
                GenerationResult(r.job_id, r.output_path, r.seed, total, total, 64, 64, 0.1)
            )
        return results


@pytest_asyncio.fixture(loop_scope="module")
async def fake_client() -> AsyncIterator[WorkerClient]:
    worker = WorkerClient(WorkerConfig("fake-model"), start_timeout=60.0)
    worker._engine_ref = FAKE_ENGINE_REF
    await worker.start()
    yield worker
    await worker.stop()


@module_loop
async def test_oom_fails_the_job_and_the_worker_survives(
    fake_client: WorkerClient, tmp_path: Path
) -> None:
    fake_client.submit([make_request(tmp_path, "big", prompt="oom")])
    events = await events_until_done(fake_client)
    failed = finals(events)["big"]
    assert isinstance(failed, Failed)
    assert "out of memory" in failed.message.lower() and "\n" not in failed.message

    fake_client.submit([make_request(tmp_path, "small")])
    events = await events_until_done(fake_client)
    assert isinstance(finals(events)["small"], Finished)


@module_loop
async def test_unexpected_error_shows_plain_words_only(
    fake_client: WorkerClient, tmp_path: Path
) -> None:
    fake_client.submit([make_request(tmp_path, "err", prompt="server-error")])
    events = await events_until_done(fake_client)
    assert finals(events)["err"] == Failed("err", FAILED_MESSAGE)
    assert "/srv" not in FAILED_MESSAGE and "Error" not in FAILED_MESSAGE


@module_loop
async def test_broken_device_exit_does_not_take_the_next_batch(
    fake_client: WorkerClient, tmp_path: Path
) -> None:
    """Fault 2: the worker says BatchDone and then exits 70. The client stays busy until
    the exit, so the next batch is not sent into the dying worker; one submitted after the
    exit comes back unstarted, and runs on the restarted worker."""
    fake_client.submit([make_request(tmp_path, "assert", prompt="cuda-error")])
    events = await events_until_done(fake_client)
    assert events[0] == Started(("assert",))
    assert finals(events)["assert"] == Failed("assert", DEVICE_BROKEN_MESSAGE)
    assert events[-1] == BatchDone(("assert",), worker_exiting=True)
    # Nothing may be dispatched into the dying worker. Its exit may already have been seen
    # (it exits right after BatchDone), which also leaves no free slot.
    assert fake_client.free_slots == 0
    if fake_client.busy:
        with pytest.raises(RuntimeError, match="busy"):
            fake_client.submit([make_request(tmp_path, "next")])

    died = await asyncio.wait_for(fake_client.next_event(), EVENT_TIMEOUT_S)
    assert died == WorkerDied(EXIT_DEVICE_BROKEN, (), ())
    assert not fake_client.busy and fake_client.info is None
    fake_client.submit([make_request(tmp_path, "next")])
    assert await fake_client.next_event() == WorkerDied(EXIT_DEVICE_BROKEN, (), ("next",))

    await fake_client.restart()
    fake_client.submit([make_request(tmp_path, "next")])
    events = await events_until_done(fake_client)
    assert isinstance(finals(events)["next"], Finished)


@module_loop
async def test_jobs_sent_to_a_worker_that_just_died_come_back_unstarted(
    fake_client: WorkerClient, tmp_path: Path
) -> None:
    """The worker is killed and, before the client has noticed, a batch is submitted: it
    never started, so it comes back as `unstarted`, not as crashed jobs."""
    pid = fake_client.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    fake_client.submit([make_request(tmp_path, "u1"), make_request(tmp_path, "u2")])

    died = await asyncio.wait_for(fake_client.next_event(), EVENT_TIMEOUT_S)

    assert died == WorkerDied(-signal.SIGKILL, (), ("u1", "u2"))
    assert not fake_client.busy
    await fake_client.restart()


@module_loop
async def test_stop_while_running_cancels_the_job(
    fake_client: WorkerClient, tmp_path: Path
) -> None:
    fake_client.submit([make_request(tmp_path, "long", steps=1000)])
    first = await asyncio.wait_for(fake_client.next_event(), EVENT_TIMEOUT_S)
    assert first == Started(("long",))
    second = await asyncio.wait_for(fake_client.next_event(), EVENT_TIMEOUT_S)
    assert isinstance(second, Progress)

    await fake_client.stop()

    events = await events_until_done(fake_client)
    assert finals(events) == {"long": Cancelled("long")}
    assert fake_client.exitcode == 0


@module_loop
async def test_sigterm_exits_cleanly(fake_client: WorkerClient) -> None:
    pid = fake_client.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    died = await asyncio.wait_for(fake_client.next_event(), EVENT_TIMEOUT_S)
    assert died == WorkerDied(0, ())


@module_loop
async def test_start_timeout_stops_the_loading_worker() -> None:
    worker = WorkerClient(WorkerConfig("slow"), start_timeout=1.0)
    worker._engine_ref = FAKE_ENGINE_REF
    started = time.monotonic()

    with pytest.raises(WorkerStartError, match="'slow' took longer than 1 s"):
        await worker.start()

    assert time.monotonic() - started < 5.0
    assert worker.exitcode == 0  # Stop reached the worker in the middle of loading
    assert worker.pid is None


def test_worker_exits_when_the_parent_dies(tmp_path: Path) -> None:
    """A parent killed with SIGKILL can't clean up; the worker sees EOF and exits."""
    pid_file = tmp_path / "worker.pid"
    script = f"""
import asyncio, os, signal
from pipeline.worker import WorkerClient, WorkerConfig

async def main():
    client = WorkerClient(WorkerConfig("fake-model"))
    client._engine_ref = {FAKE_ENGINE_REF!r}
    await client.start()
    open({str(pid_file)!r}, "w").write(str(client.pid))
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 15.0
    while not pid_gone(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The orphan is reparented to init (or a subreaper) which reaps it once it exits.
    assert pid_gone(worker_pid) or _is_zombie(worker_pid), "worker outlived its parent"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
