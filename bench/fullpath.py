"""The bot's real job path without Discord: JobService + Store + WorkerClient + a recorder.

Jobs go in through `JobService.submit` (SQLite, fair queue, caps), are dispatched by the
service's own loop to the worker process, and come back through its results path to a
`RecordingDelivery` standing in for Discord. Two small additions, neither changing what
the service does:

- `RecordingWorker` is a `WorkerClient` that notes every batch it is given and every event
  it hands back, and can report itself busy (`hold`) so that a burst is queued before the
  dispatcher sees it, as it would be behind a running job.
- `RecordingDelivery` records when each result is delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.inputs import JobSpec
from bot.jobs.service import JobService, NewJob
from bot.store.db import Job, Store
from config import Settings
from pipeline.request import GenerationRequest
from pipeline.worker import WorkerClient, WorkerConfig, WorkerEvent

QUEUE_CAP = 500
USER_ID = 42


class Recording:
    """Mixin over a worker backend: records, timed, the batches the dispatcher hands over
    and the events that come back (what `FullPath.run` reads), and `hold` for a burst."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = False
        self.batches: list[tuple[float, tuple[str, ...]]] = []
        self.events: list[tuple[float, WorkerEvent]] = []

    def submit(self, batch: Sequence[GenerationRequest]) -> None:
        self.batches.append((time.monotonic(), tuple(r.job_id for r in batch)))
        super().submit(batch)  # type: ignore[misc]

    async def next_event(self) -> WorkerEvent:
        event: WorkerEvent = await super().next_event()  # type: ignore[misc]
        self.events.append((time.monotonic(), event))
        return event


class RecordingWorker(Recording, WorkerClient):
    """The local `WorkerClient`, recorded; `cap` holds a run to its own MAX_BATCH."""

    def __init__(self, config: WorkerConfig, **kwargs: float) -> None:
        super().__init__(config, **kwargs)
        self.cap = self.max_batch  # jobs in flight at most: the run's MAX_BATCH

    @property
    def busy(self) -> bool:
        return self.hold or super().busy

    @property
    def free_slots(self) -> int:
        """None while held. With step batching the worker's running set is sized once at
        start (the largest MAX_BATCH of the bench); `cap` holds a run to its own MAX_BATCH."""
        if self.hold:
            return 0
        # The worker's own prefetch only where its running set is this run's MAX_BATCH.
        cap = self.step_capacity if self.cap == self.step_slots else self.cap
        return max(0, min(super().free_slots, cap - len(self.running)))

    @property
    def generating(self) -> bool:
        """A batch is really in the worker (ignores `hold`)."""
        return super().busy


class RecordingDelivery:
    """The `Delivery` protocol without Discord: remembers what happened and when."""

    def __init__(self) -> None:
        self.delivered: dict[int, float] = {}
        self.results: dict[int, Job] = {}
        self.failures: dict[int, str] = {}
        self.cancelled: set[int] = set()
        self.statuses: list[tuple[int, str]] = []
        self.previews = 0  # status edits that carried a live preview
        self._changed = asyncio.Event()

    async def show_status(
        self, job: Job, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None:
        self.statuses.append((job.id, text))
        self.previews += preview is not None

    async def deliver_result(self, job: Job) -> None:
        self.delivered[job.id] = time.monotonic()
        self.results[job.id] = job
        self._changed.set()

    async def deliver_failure(self, job: Job, message: str) -> None:
        self.failures[job.id] = message
        self._changed.set()

    async def deliver_cancelled(self, job: Job) -> None:
        self.cancelled.add(job.id)
        self._changed.set()

    async def wait_for(self, job_ids: Sequence[int], timeout: float) -> None:
        """Until every job has a final delivery; raise if one failed or time runs out."""
        async with asyncio.timeout(timeout):
            while True:
                ended = self.delivered.keys() | self.failures.keys() | self.cancelled
                if all(j in ended for j in job_ids):
                    break
                self._changed.clear()
                await self._changed.wait()
        bad = {j: self.failures.get(j, "cancelled") for j in job_ids if j not in self.delivered}
        if bad:
            raise RuntimeError(f"jobs did not finish: {bad}")


@dataclass
class FullRun:
    """One timed burst through the full path."""

    wall: float  # from the burst's release to the last delivery
    latencies: list[float]  # queued (from the release) → delivered, per job
    service_times: list[float]  # dispatched to the worker → delivered, per job
    batches: list[tuple[str, ...]]  # job ids of each worker call, in dispatch order
    specs: dict[str, JobSpec] = field(default_factory=dict)  # job id → spec
    outputs: dict[str, str] = field(default_factory=dict)  # job id → absolute PNG path
    released_at: float = 0.0  # monotonic
    delivered_at: dict[str, float] = field(default_factory=dict)  # job id → monotonic

    @property
    def images(self) -> int:
        return len(self.latencies)

    @property
    def unit_times(self) -> list[float]:
        """Seconds per image of each worker call, from the steady flow of deliveries.

        The gap between one call's last delivery and the next one's (the first counted
        from the release) is what that call cost end to end — dispatch, generation,
        events, SQLite, delivery — shared by the images of the call.
        """
        done = sorted((max(self.delivered_at[j] for j in b), len(b)) for b in self.batches)
        out, previous = [], self.released_at
        for finished, size in done:
            out.extend([(finished - previous) / size] * size)
            previous = finished
        return out

    def served(self) -> list[list[JobSpec]]:
        return [[self.specs[j] for j in batch] for batch in self.batches]


class FullPath:
    """Owns a Store, a RecordingWorker and a JobService on one data dir and model."""

    def __init__(self, settings: Settings, *, start_timeout: float = 900.0) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        self.delivery = RecordingDelivery()
        self.worker = RecordingWorker(
            WorkerConfig(
                model_id=settings.model_id,
                device=settings.device,
                dtype=settings.dtype,
                resolution=settings.resolution,
                compile=settings.compile,
                channels_last=settings.channels_last,
                batching=settings.batching,
                preview=settings.preview,
                preview_interval_s=settings.preview_interval_s,
                preview_model_id=settings.preview_model_id,
                preview_every_steps=settings.preview_every_steps,
            ),
            start_timeout=start_timeout,
            max_batch=settings.max_batch,
        )
        self.store: Store | None = None
        self.service: JobService | None = None

    @staticmethod
    def settings_for(data_dir: Path, **values: object) -> Settings:
        """Bot settings for a benchmark: no .env, queue caps out of the way."""
        return Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=data_dir,
            max_jobs_per_user=QUEUE_CAP,
            max_queue_per_guild=QUEUE_CAP,
            max_queue_total=QUEUE_CAP,
            **({"preview": "off"} | values),  # type: ignore[arg-type]
        )

    async def start(self) -> object:
        """Open the store, start the service (and so the worker); return the engine info."""
        self.store = await Store.open(self.settings.db_path)
        self.service = JobService(self.settings, self.store, self.worker, self.delivery)
        await self.service.start()
        await asyncio.wait_for(self.service.ready.wait(), self.start_timeout + 30)
        if self.service.fatal:
            raise RuntimeError(self.service.fatal)
        return self.worker.info

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.store is not None:
            await self.store.close()

    async def run(
        self,
        specs: Sequence[JobSpec],
        *,
        max_batch: int,
        steps: int,
        strength: float,
        guidance: float,
        timeout: float = 1800.0,
    ) -> FullRun:
        """Queue all `specs` at once (as behind a running job), let the service serve them
        with MAX_BATCH=`max_batch`, and time it until the last result is delivered."""
        service, worker = self.service, self.worker
        assert service is not None, "start() first"
        await self.idle()
        service.settings = self.settings.model_copy(update={"max_batch": max_batch})
        worker.cap = max_batch
        first_batch = len(worker.batches)
        submitted: dict[int, float] = {}
        by_id: dict[str, JobSpec] = {}
        worker.hold = True
        released = time.monotonic()
        try:
            for i, spec in enumerate(specs):
                if i == len(specs) - 1:
                    # Let the dispatcher see the earlier submits' wake-ups while held, so
                    # the last submit's wake-up finds the whole burst queued.
                    await asyncio.sleep(0.05)
                    worker.hold = False
                    released = time.monotonic()
                t = time.monotonic()
                job = await service.submit(self.new_job(spec, steps, strength, guidance))
                submitted[job.id] = t
                by_id[str(job.id)] = spec
        finally:
            worker.hold = False
        await self.delivery.wait_for(list(submitted), timeout)
        delivered = self.delivery.delivered
        batches = [ids for _, ids in worker.batches[first_batch:]]
        dispatched = {j: t for t, ids in worker.batches[first_batch:] for j in ids}
        await self.idle()
        return FullRun(
            wall=max(delivered[j] for j in submitted) - released,
            # Queue time counts from the release: before it the worker was "busy".
            latencies=[delivered[j] - max(t, released) for j, t in submitted.items()],
            service_times=[delivered[j] - dispatched[str(j)] for j in submitted],
            batches=batches,
            specs=by_id,
            outputs={
                str(j): str(self.settings.data_dir / (self.delivery.results[j].output_path or ""))
                for j in submitted
            },
            released_at=released,
            delivered_at={str(j): delivered[j] for j in submitted},
        )

    async def idle(self, timeout: float = 60.0) -> None:
        """Wait until no batch runs and the service has taken in its last BatchDone."""
        service = self.service
        assert service is not None
        async with asyncio.timeout(timeout):
            while self.worker.generating or service.queue.running or len(service.queue):
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)

    @staticmethod
    def new_job(spec: JobSpec, steps: int, strength: float, guidance: float) -> NewJob:
        """The job a user would have asked for with `spec`'s image, prompt and seed."""
        return NewJob(
            guild_id=spec.guild_id,
            channel_id=spec.guild_id * 10,
            user_id=USER_ID,
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            strength=spec.strength or strength,
            steps=spec.steps or steps,
            guidance=guidance,
            seed=spec.seed,
            input_path=spec.input_path,
            input_width=spec.width,
            input_height=spec.height,
        )
