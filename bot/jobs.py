"""The job service: accepts jobs, keeps the fair queue, drives the worker, reports back.

State lives in SQLite (`Store`); the in-memory `FairQueue` is rebuilt from it at start, so
waiting jobs survive a restart. The worker is a separate process (`WorkerClient`); this
service only sends it small messages and reacts to its events, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosqlite

from bot.errors import UserError
from bot.render import progress_text, queue_text
from bot.status import StatusBoard
from bot.store import ACTIVE_STATES, Job, Store
from config import Settings
from pipeline.fair_queue import Caps, FairQueue, QueuedJob, QueueFull
from pipeline.prepare import target_size
from pipeline.request import (
    MAX_SEED,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    plan_steps,
)
from pipeline.worker import (
    BatchDone,
    Cancelled,
    Failed,
    Finished,
    Progress,
    WorkerClient,
    WorkerDied,
    WorkerEvent,
    WorkerStartError,
)

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 15 * 60 - 30  # Discord's 15 min, minus a margin for the last edit
DEFAULT_JOB_SECONDS = 20.0


@dataclass
class NewJob:
    """A validated request to queue; the input image is already stored under DATA_DIR."""

    guild_id: int
    channel_id: int
    user_id: int
    prompt: str
    strength: float
    steps: int
    guidance: float
    input_path: str
    input_width: int
    input_height: int
    negative_prompt: str | None = None
    seed: int | None = None
    kind: str = "new"
    parent_id: int | None = None
    application_id: int | None = None
    interaction_token: str | None = None
    reply_to_message_id: int | None = None
    role_ids: tuple[int, ...] = ()
    channel_public: bool = True  # the channel is viewable by @everyone
    channel_nsfw: bool = False  # the channel (or a thread's parent) is age-restricted
    interaction_created_at: float | None = None  # the token's 15 minutes count from here
    style: str | None = None  # the saved style applied to the prompt, by name


class Delivery(Protocol):
    """The Discord side of a job's life (implemented in `bot.delivery`)."""

    async def show_status(self, job: Job, text: str, cancellable: bool) -> None: ...
    async def deliver_result(self, job: Job) -> None: ...
    async def deliver_failure(self, job: Job, message: str) -> None: ...
    async def deliver_cancelled(self, job: Job) -> None: ...
    async def deliver_withheld(self, job: Job) -> None: ...


ReserveHook = Callable[[aiosqlite.Connection, NewJob, float], Awaitable[None]]
JobHook = Callable[[Job], Awaitable[None]]


@dataclass
class Hooks:
    """Extension points for quotas and galleries, run by the service at fixed moments.

    `reserve` runs inside the transaction that inserts a job and may raise `UserError` to
    refuse it; `finished` runs after a result was delivered; `deleted` after a delete.
    """

    reserve: list[ReserveHook] = field(default_factory=list)
    finished: list[JobHook] = field(default_factory=list)
    deleted: list[JobHook] = field(default_factory=list)


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        worker: WorkerClient,
        delivery: Delivery,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.worker = worker
        self.delivery = delivery
        self.clock = clock
        self.hooks = Hooks()
        self.queue = FairQueue(
            Caps(settings.max_jobs_per_user, settings.max_queue_per_guild, settings.max_queue_total)
        )
        self.status = StatusBoard(self._send_status, settings.progress_interval_s)
        self.resolution = settings.resolution or 512
        self.model_name = settings.model_id
        self.engine_info: EngineInfo | None = None  # what the worker loaded, once ready
        self.seconds_per_image = DEFAULT_JOB_SECONDS
        self.ready = asyncio.Event()
        self.fatal: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._progress: dict[int, tuple[int, int]] = {}
        self._cancel_requested: set[str] = set()

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild the queue from SQLite, then start the worker and the dispatch loop."""
        for job in await self.store.jobs_in_states(ACTIVE_STATES):
            if job.state == "running":  # interrupted by a restart: it waits again
                await self.store.update_job(job.id, state="queued", started_at=None)
            self.queue.push(self._queued(job), enforce_caps=False)
        if len(self.queue):
            log.info("restored %d waiting jobs", len(self.queue))
        self.status.start()
        self._task = asyncio.create_task(self._run(), name="job-service")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.status.stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.worker.stop()

    # -- accepting jobs ---------------------------------------------------------------
    def check_caps(self, guild_id: int, user_id: int) -> None:
        """Cheap refusal before any download; `submit` checks again atomically."""
        try:
            self.queue.check_caps(guild_id, user_id)
        except QueueFull as exc:
            raise UserError(str(exc)) from None

    async def submit(self, new: NewJob) -> Job:
        """Store and queue a job; raise `UserError` (nothing stored) if it is refused."""
        plan_steps(new.steps, new.strength)  # raises InputError for an impossible strength
        seed = new.seed if new.seed is not None else secrets.randbelow(MAX_SEED + 1)
        now = self.clock()
        async with self.store.transaction() as db:
            self.check_caps(new.guild_id, new.user_id)
            for hook in self.hooks.reserve:
                await hook(db, new, now)
            job_id = await self.store.insert_job(
                db,
                guild_id=new.guild_id, channel_id=new.channel_id, user_id=new.user_id,
                kind=new.kind, parent_id=new.parent_id, prompt=new.prompt,
                negative_prompt=new.negative_prompt, strength=new.strength, seed=seed,
                steps=new.steps, guidance=new.guidance, input_path=new.input_path,
                input_width=new.input_width, input_height=new.input_height,
                application_id=new.application_id, interaction_token=new.interaction_token,
                token_expires_at=now + TOKEN_LIFETIME_S if new.interaction_token else None,
                reply_to_message_id=new.reply_to_message_id, created_at=now,
                channel_public=int(new.channel_public), channel_nsfw=int(new.channel_nsfw),
                style=new.style,
            )  # fmt: skip
            job = await self._get(db, job_id)
            self.queue.push(self._queued(job), enforce_caps=False)
        log.info("queued job %d (guild %d, user %d)", job.id, job.guild_id, job.user_id)
        self._wake.set()
        return job

    async def attach_status_message(self, job_id: int, message_id: int) -> None:
        """Remember the message that shows this job's place and progress."""
        await self.store.update_job(job_id, status_message_id=message_id)
        self._refresh_positions()

    async def cancel(self, job_id: int, user_id: int, can_manage: bool) -> str:
        job = await self.store.get_job(job_id)
        if job is None or job.state not in ACTIVE_STATES:
            return "This job is no longer waiting or running."
        if job.user_id != user_id and not can_manage:
            raise UserError(
                "Only the person who asked for this image, or someone with Manage "
                "Messages, can cancel it."
            )
        if self.queue.remove(str(job_id)):
            job = await self._end(job_id, state="cancelled", counted=0)
            self._spawn(self._deliver(job, self.delivery.deliver_cancelled))
            self._refresh_positions()
            return "Cancelled; it left the queue and did not count against your quota."
        # It may be between the queue and the worker (being dispatched): remember the
        # request so `_dispatch` passes it on once the worker has the job.
        self._cancel_requested.add(str(job_id))
        self.worker.cancel(str(job_id))
        return "Stopping it at the next step."

    async def mark_deleted(self, job: Job) -> None:
        """A result was deleted on Discord: remember it and tell the hooks (gallery)."""
        await self.store.update_job(job.id, state="deleted")
        fresh = await self.store.get_job(job.id)
        for hook in self.hooks.deleted:
            await hook(fresh or job)

    # -- queue views ------------------------------------------------------------------
    def eta(self, job_id: int) -> tuple[int, float] | None:
        """(place in its guild's queue, seconds until it probably starts) or None."""
        pos = self.queue.position(str(job_id))
        if pos is None:
            return None
        guild_place, before = pos
        running = len(self.queue.running)
        step, total = next(iter(self._progress.values()), (0, 1))
        remaining_running = (1 - step / max(1, total)) * self.seconds_per_image if running else 0
        batch = max(1, self.settings.max_batch)
        return guild_place, remaining_running + (before // batch + 1) * self.seconds_per_image

    def progress_of(self, job_id: int) -> tuple[int, int]:
        return self._progress.get(job_id, (0, 1))

    def _refresh_positions(self) -> None:
        for queued in self.queue.order():
            eta = self.eta(int(queued.job_id))
            if eta is not None:
                self.status.set(int(queued.job_id), queue_text(*eta))

    # -- the dispatch loop ------------------------------------------------------------
    async def _run(self) -> None:
        try:
            info = await self.worker.start()
        except WorkerStartError as exc:
            self.fatal = str(exc)
            log.error("%s", exc)
            self.ready.set()
            if self.on_fatal:
                self.on_fatal(self.fatal)
            return
        self._on_ready(info)
        event_task: asyncio.Task[WorkerEvent] | None = None
        wake_task: asyncio.Task[bool] | None = None
        try:
            while True:
                if not self.worker.busy and len(self.queue):
                    await self._dispatch()
                if event_task is None:
                    event_task = asyncio.create_task(self.worker.next_event())
                self._wake.clear()
                wake_task = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait(
                    {event_task, wake_task}, return_when=asyncio.FIRST_COMPLETED
                )
                wake_task.cancel()
                if event_task in done:
                    event, event_task = event_task.result(), None
                    try:
                        await self._handle(event)
                    except Exception:
                        log.exception("handling worker event %r failed", event)
        finally:
            for task in (event_task, wake_task):
                if task is not None:
                    task.cancel()

    def _on_ready(self, info: object) -> None:
        self.resolution = self.settings.resolution or getattr(info, "resolution", 512)
        self.model_name = getattr(info, "model_id", self.settings.model_id)
        log.info("worker ready: %s", info)
        self.ready.set()

    def _queued(self, job: Job) -> QueuedJob:
        """The queue's view of a job; its batch key holds the input size, sized later."""
        plan = plan_steps(job.steps, job.strength)
        raw_key = ((job.input_width, job.input_height), plan, job.guidance)
        return QueuedJob(str(job.id), job.guild_id, job.user_id, raw_key)

    def _batch_key(self, queued: QueuedJob) -> Hashable:
        """Jobs share a call when they render at one size with one step plan and guidance.
        The size depends on the model's resolution, known only once the worker is ready,
        so it is derived here at dispatch time rather than when the job was queued."""
        (width, height), plan, guidance = queued.batch_key  # type: ignore[misc]
        return target_size(width, height, self.resolution), plan, guidance

    async def _dispatch(self) -> None:
        batch = self.queue.pop_batch(self.settings.max_batch, key=self._batch_key)
        if not batch:
            return
        now = self.clock()
        requests: list[GenerationRequest] = []
        async with self.store.transaction() as db:
            for queued in batch:
                job_id = int(queued.job_id)
                await self.store.update_job_in(db, job_id, state="running", started_at=now)
                job = await self._get(db, job_id)
                requests.append(self._request(job))
        self.worker.submit(requests)
        for request in requests:
            if request.job_id in self._cancel_requested:
                self.worker.cancel(request.job_id)
        for queued in batch:
            self.status.set(int(queued.job_id), "🎨 Starting…", cancellable=True)
        self._refresh_positions()

    def _request(self, job: Job) -> GenerationRequest:
        out = self.data_dir / "outputs" / f"{job.id}.png"
        return GenerationRequest(
            job_id=str(job.id),
            image_path=str(self.data_dir / job.input_path),
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            strength=job.strength,
            seed=job.seed,
            steps=job.steps,
            guidance=job.guidance,
            output_path=str(out.resolve()),
        )

    async def _handle(self, event: WorkerEvent) -> None:
        if isinstance(event, Progress):
            for job_id in map(int, event.job_ids):
                self._progress[job_id] = (event.step, event.total)
                self.status.set(job_id, progress_text(event.step, event.total))
        elif isinstance(event, Finished):
            # Recorded and delivered in the background, so the loop gets to BatchDone and
            # hands the worker its next batch without waiting on SQLite or Discord.
            self.queue.finish(event.result.job_id)
            self.seconds_per_image = 0.7 * self.seconds_per_image + 0.3 * event.result.seconds
            self._spawn(self._complete(event.result))
        elif isinstance(event, Failed):
            job = await self._end(int(event.job_id), state="failed", counted=0, error=event.message)
            self._spawn(self._deliver(job, self.delivery.deliver_failure, event.message))
        elif isinstance(event, Cancelled):
            job = await self._end(int(event.job_id), state="cancelled", counted=0)
            self._spawn(self._deliver(job, self.delivery.deliver_cancelled))
        elif isinstance(event, BatchDone):
            for job_id in event.job_ids:
                self.queue.finish(job_id)
            self._refresh_positions()
        elif isinstance(event, WorkerDied):
            await self._worker_died(event)

    async def _worker_died(self, event: WorkerDied) -> None:
        log.error("worker died (exit code %s) while running %s", event.exitcode, event.job_ids)
        message = (
            "The image worker crashed while making this image (it may have run out of memory). "
            "It did not count against your quota; please try again."
        )
        for job_id in event.job_ids:
            job = await self._end(int(job_id), state="failed", counted=0, error="worker died")
            self._spawn(self._deliver(job, self.delivery.deliver_failure, message))
        for queued in self.queue.running:
            self.queue.finish(queued.job_id)
        delay = 1.0
        while True:
            try:
                self._on_ready(await self.worker.restart())
                return
            except WorkerStartError:
                log.exception("worker restart failed; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(60.0, delay * 2)

    async def _end(self, job_id: int, **values: object) -> Job:
        """Record a job's final state (and refund, via counted=0) and drop its status."""
        self.status.forget(job_id)
        self._progress.pop(job_id, None)
        self._cancel_requested.discard(str(job_id))
        self.queue.finish(str(job_id))
        async with self.store.transaction() as db:
            await self.store.update_job_in(db, job_id, finished_at=self.clock(), **values)
            return await self._get(db, job_id)

    async def _complete(self, r: GenerationResult) -> None:
        job = await self._end(
            int(r.job_id),
            state="done",
            output_path=f"outputs/{r.job_id}.png",
            steps_run=r.steps_run,
            steps_total=r.steps_total,
            seconds=r.seconds,
            model=self.model_name,
        )
        await self._finish(job)

    async def _finish(self, job: Job) -> None:
        await self._deliver(job, self.delivery.deliver_result)
        fresh = await self.store.get_job(job.id)
        for hook in self.hooks.finished:
            try:
                await hook(fresh or job)
            except Exception:
                log.exception("finished-hook failed for job %d", job.id)

    async def _deliver(self, job: Job, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        async with self.status.lock(job.id):
            try:
                await fn(job, *args)
            except Exception:
                log.exception("delivering job %d failed", job.id)
        self.status.release(job.id)

    async def _send_status(self, job_id: int, text: str, cancellable: bool) -> None:
        job = await self.store.get_job(job_id)
        if job is not None and job.state in ACTIVE_STATES:
            await self.delivery.show_status(job, text, cancellable)

    async def _get(self, db: aiosqlite.Connection, job_id: int) -> Job:
        cursor = await db.execute("SELECT * FROM jobs WHERE id=?", (job_id,))
        row = await cursor.fetchone()
        assert row is not None, job_id
        return Job.from_row(row)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
