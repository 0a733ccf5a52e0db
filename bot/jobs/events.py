"""What the job service does with the worker's events, and how final messages go out.

Split from `bot.jobs.service` (intake and dispatch): this half records each job's end in SQLite
exactly once, refunds what did not produce an image, and delivers the final message in the
background so the dispatch loop never waits on Discord.

Rules that keep a job from being lost or shown twice:
- A job's state only moves forward: queued → running → an end (a job the worker never
  started may go back to queued). Every change is an `UPDATE … WHERE state IN (…)` whose row
  count is checked (`_move`), so a job that ended never runs or ends again: a late
  `Finished` for a job already cancelled is discarded (and its file removed).
- A final event is applied only after it is persisted: until its row is written the job
  stays running in memory (`_finals` marks it), so a `WorkerDied` handled meanwhile never
  puts it back in the queue; and `_worker_died` puts back only the jobs the event names.
- A final message waits (bounded) for the job's status message to be attached, so a job
  that finishes before its caller posted that message still ends as one result message.
- Deliveries in flight are tracked, so `stop()` can wait for them instead of dropping them.
- A final message (result or notice) that reached Discord is marked (`delivered_at`); one a
  stop cut off is delivered again at the next start (`bot.jobs.redelivery`), a few times,
  and a message already posted for it is found, not posted twice (`bot.jobs.delivery`). A
  result that cannot be delivered at all ends `undelivered`, refunded; /gallery keeps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiosqlite

from bot.errors import Undeliverable
from bot.jobs.redelivery import JobRedelivery
from bot.jobs.routing import Residency, SwapRule, WorkerResident
from bot.jobs.scheduler import FairQueue, QueuedJob
from bot.jobs.status import StatusBoard
from bot.models import ModelChoice
from bot.store.db import ACTIVE_STATES, Job, Store
from pipeline.request import EngineInfo, GenerationResult
from pipeline.worker import (
    BatchDone,
    Cancelled,
    Failed,
    Finished,
    ModelLoaded,
    ModelLoading,
    Progress,
    Recalled,
    Started,
    WorkerDied,
    WorkerEvent,
)
from pipeline.worker_backend import WorkerBackend

if TYPE_CHECKING:
    from bot.jobs.service import Hooks
    from config import Settings

log = logging.getLogger(__name__)

STATUS_ATTACH_WAIT_S = 15.0
"""How long a final message waits for the caller to attach the job's status message."""

MAX_RETRIES = 1
"""Times a job sent back by the worker (`Failed.retry`) runs again before it fails for good."""

CRASH_MESSAGE = (
    "The image worker crashed while making this image (it may have run out of memory). "
    "It did not count against your quota; please try again."
)


class Delivery(Protocol):
    """The Discord side of a job's life (implemented in `bot.jobs.delivery`)."""

    async def show_status(
        self, job: Job, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None: ...
    async def deliver_result(self, job: Job) -> int | None:
        """Post the picture; the id of the message that holds it, recorded with the
        delivery in one write (None: the callee recorded its own, or there is none)."""

    async def deliver_failure(self, job: Job, message: str) -> None: ...
    async def deliver_cancelled(self, job: Job) -> None: ...
    async def deliver_withheld(self, job: Job) -> None: ...


class KindDelivery:
    """A `Delivery` for jobs that share one message (a series album, a comparison): jobs of
    `kind` show no status of their own, and their end re-renders that message through
    `refresh`; every other job goes on to `inner`."""

    def __init__(self, inner: Delivery, kind: str, refresh: Callable[[Job], Awaitable[None]]):
        self.inner = inner
        self.kind = kind
        self.refresh = refresh

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def show_status(
        self, job: Job, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None:
        if job.kind != self.kind:  # the shared message changes when an image ends
            extra = {} if preview is None else {"preview": preview}
            await self.inner.show_status(job, text, cancellable, **extra)

    async def deliver_result(self, job: Job) -> int | None:
        if job.kind == self.kind:
            await self.refresh(job)  # the shared message's owner records its own id
            return None
        return await self.inner.deliver_result(job)

    async def deliver_failure(self, job: Job, message: str) -> None:
        if job.kind == self.kind:
            await self.refresh(job)
        else:
            await self.inner.deliver_failure(job, message)

    async def deliver_cancelled(self, job: Job) -> None:
        await (self.refresh(job) if job.kind == self.kind else self.inner.deliver_cancelled(job))

    async def deliver_withheld(self, job: Job) -> None:
        await (self.refresh(job) if job.kind == self.kind else self.inner.deliver_withheld(job))


class JobEvents(JobRedelivery):
    """Mixin of `JobService`: worker events in, final states and messages out."""

    settings: Settings
    store: Store
    worker: WorkerBackend
    delivery: Delivery
    hooks: Hooks
    queue: FairQueue
    status: StatusBoard
    clock: Callable[[], float]
    model_name: str
    seconds_per_image: float
    _progress: dict[int, tuple[int, int]]
    _cancel_requested: set[str]
    _finals: set[str]
    _background: set[asyncio.Task[None]]
    _status_gates: dict[int, asyncio.Event]
    _stopping: bool
    models: ModelChoice
    residency: Residency
    swaps: SwapRule
    on_model_loading: list[Callable[[str, tuple[str, ...]], None]]

    if TYPE_CHECKING:  # provided by JobDispatch and JobService

        def _on_ready(self, info: EngineInfo) -> None: ...
        def _refresh_positions(self) -> None: ...
        async def _requeue(self, queued: list[QueuedJob]) -> None: ...

    # -- events -----------------------------------------------------------------------
    async def _handle(self, event: WorkerEvent) -> None:
        if isinstance(event, Progress):
            for job_id in event.job_ids:
                if self.queue.is_running(job_id):  # one cancelled out of its batch: no more
                    self._progress[int(job_id)] = (event.step, event.total)
                    preview = getattr(event, "previews", {}).get(job_id)
                    self.status.progress(int(job_id), event.step, event.total, preview)
        elif isinstance(event, Finished):
            # Recorded and delivered in the background, so the loop gets to BatchDone and
            # hands the worker its next batch without waiting on SQLite or Discord. The job
            # leaves the running set only once its end is written (`_end`).
            self._finals.add(event.result.job_id)
            self.seconds_per_image = 0.7 * self.seconds_per_image + 0.3 * event.result.seconds
            self._spawn(self._complete(event.result))
        elif isinstance(event, Failed):
            if event.retry and await self._run_again(event.job_id):
                return
            job = await self._end(int(event.job_id), state="failed", counted=0, error=event.message)
            if job is not None:
                self._spawn(self._deliver(job, self.delivery.deliver_failure, event.message))
        elif isinstance(event, Cancelled):
            job = await self._end(int(event.job_id), state="cancelled", counted=0)
            if job is not None:
                self._spawn(self._deliver(job, self.delivery.deliver_cancelled))
        elif isinstance(event, BatchDone):
            for job_id in event.job_ids:
                # A job being written is finished by `_end`; a held one is not this Run's.
                if job_id not in self._finals and self.queue.is_running(job_id):
                    self.queue.finish(job_id)
            self._refresh_positions()
        elif isinstance(event, Started):
            for job_id in event.job_ids:  # the turns move now (see `FairQueue.start`)
                self.queue.start(job_id)
            self._refresh_positions()
        elif isinstance(event, Recalled):
            # Handed back unstarted, for a fairer job: it waits again where it was.
            held = {q.job_id: q for q in self.queue.held}
            if event.job_id in held:
                await self._requeue([held[event.job_id]])
        elif isinstance(event, WorkerDied):
            await self._worker_died(event)
        elif isinstance(event, ModelLoading):
            self._loading(event)
        elif isinstance(event, ModelLoaded):  # the local worker's own word
            self.residency.reported(None, event.resident)
        elif isinstance(event, WorkerResident):  # a remote worker's
            self.residency.reported(event.worker, event.resident)
        else:
            log.debug("worker event %r", event)

    def _loading(self, event: ModelLoading) -> None:
        """A worker loads a model for these jobs: their status says so (a load takes
        seconds to minutes on a real GPU), until their progress replaces it."""
        title = self.models.title(event.model) or event.model
        for job_id in event.job_ids:
            if self.queue.is_running(job_id) or job_id in {q.job_id for q in self.queue.held}:
                self.status.set(int(job_id), f"🔄 Loading model *{title}*…", cancellable=True)
        for hook in self.on_model_loading:
            hook(event.model, event.job_ids)

    async def _worker_died(self, event: WorkerDied) -> None:
        """Jobs that never started wait again at the head of their queue; jobs that were
        running fail (refunded). Then the worker is restarted, whatever failed before.

        Only the jobs the event names are touched (every backend names each job it loses):
        a job another worker just finished is no longer listed as running by its backend
        while its result is on the way, and must not be put back to run again."""
        unstarted = event.unstarted
        log.error(
            "worker died (exit code %s) while running %s; not started: %s",
            event.exitcode, event.job_ids or "nothing", unstarted or "nothing",
        )  # fmt: skip
        running = {q.job_id: q for q in self.queue.running}
        for job_id in event.job_ids:
            try:
                job = await self._end(int(job_id), state="failed", counted=0, error="worker died")
            except Exception:
                log.exception("recording the crash of job %s failed", job_id)
                continue
            if job is not None:
                self._spawn(self._deliver(job, self.delivery.deliver_failure, CRASH_MESSAGE))
        # A job whose final event came meanwhile (or is being written) stays out.
        back = [running[j] for j in unstarted if j in running and j not in self._finals]
        try:
            await self._requeue(back)
        except Exception:
            log.exception("putting jobs %s back in the queue failed", unstarted)
        await self._restart_worker()

    async def _restart_worker(self) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                self._on_ready(await self.worker.restart())
                return
            except Exception:
                log.exception("worker restart failed; retrying in %.0f s", delay)
                await asyncio.sleep(delay)
                delay = min(60.0, delay * 2)

    async def _run_again(self, job_id: str) -> bool:
        """A job the worker sent back through no fault of its own (a shared UNet call
        failed, the device broke) waits again at the head of its queue, as a new attempt,
        unless it had that second chance already (`jobs.retries`): False, it fails."""
        queued = next((q for q in self.queue.running if q.job_id == job_id), None)
        if queued is None:
            return False
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET retries=retries+1 WHERE id=? AND state='running' AND retries<?",
                (int(job_id), MAX_RETRIES),
            )
            if cursor.rowcount == 0:
                return False
        log.warning("job %s runs again: the worker sent it back after an error", job_id)
        await self._requeue([queued])
        return True

    # -- final states -----------------------------------------------------------------
    async def _end(self, job_id: int, **values: object) -> Job | None:
        """Record a job's final state (and refund, via counted=0), then drop it from memory
        (queue, status): only what is written is applied.

        Only a job still queued or running changes; None means it had already ended."""
        values["finished_at"] = self.clock()
        row = await self.store.end_job(job_id, ACTIVE_STATES, **values)
        self.status.forget(job_id)
        self._progress.pop(job_id, None)
        self._cancel_requested.discard(str(job_id))
        self.queue.finish(str(job_id))
        self.queue.remove(str(job_id))  # an ended job never waits to run again
        self.swaps.forget(str(job_id))  # the swap rule's count of jobs that passed it
        if row is None:
            log.info("job %d had already ended; %s ignored", job_id, values.get("state"))
            return None
        return Job.from_row(row)

    async def _move(
        self, db: aiosqlite.Connection, job_id: int, states: tuple[str, ...], **values: object
    ) -> bool:
        """`Store.move_job_in`: a state only moves forward."""
        return await self.store.move_job_in(db, job_id, states, **values)

    async def _complete(self, r: GenerationResult) -> None:
        try:
            await self._record_result(r)
        finally:
            self._finals.discard(r.job_id)

    async def _record_result(self, r: GenerationResult) -> None:
        job_id = int(r.job_id)
        ran = {"steps_run": r.steps_run, "steps_total": r.steps_total, "seconds": r.seconds}
        ran["filtered"] = int(bool(getattr(r, "filtered", False)))  # the worker's answer
        if getattr(r, "withheld", False):
            # The GPU did the work, so the unit stays counted; no image exists to show.
            job = await self._end(job_id, state="withheld", nsfw=1, output_path=None, **ran)
            if job is not None:
                await self._deliver(job, self.delivery.deliver_withheld)
            return
        job = await self._end(
            job_id,
            state="done",
            nsfw=int(bool(getattr(r, "nsfw", False))),
            output_path=f"outputs/{r.job_id}.png",
            **ran,
        )
        if job is None:
            ended = await self.store.get_job(job_id)
            if ended is not None and ended.state in ("cancelled", "failed"):
                Path(r.output_path).unlink(missing_ok=True)  # cancelled meanwhile: discarded
            return
        await self._finish(job)

    async def _finish(self, job: Job) -> None:
        """Post a result, then tell the hooks (gallery) about it; a result that cannot be
        posted anywhere still reaches the gallery, then ends `undelivered`."""
        delivered, job = await self._deliver_row(job, self.delivery.deliver_result)
        for hook in self.hooks.finished:
            try:
                await hook(job)
            except Exception:
                log.exception("finished-hook failed for job %d", job.id)
        if delivered is None:
            await self._give_up(job)

    async def _deliver(
        self, job: Job, fn: Callable[..., Awaitable[int | None]], *args: object
    ) -> bool | None:
        """Send a job's final message; True once Discord has it (marked in SQLite), False
        after an error a later start may get past, None if it can never be delivered."""
        return (await self._deliver_row(job, fn, *args))[0]

    async def _deliver_row(
        self, job: Job, fn: Callable[..., Awaitable[int | None]], *args: object
    ) -> tuple[bool | None, Job]:
        """`_deliver`, and the job's row as it is after it (read once, before the message
        goes: the status message attached meanwhile), for the finished-hooks."""
        job = await self._with_status_message(job)
        delivered: bool | None = False
        values: dict[str, object] = {}
        async with self.status.lock(job.id):
            try:
                message_id = await fn(job, *args)
                if message_id is not None:
                    job.result_message_id = values["result_message_id"] = message_id
                delivered = True
            except Undeliverable as exc:
                log.warning("job %d cannot be delivered: %s", job.id, exc)
                delivered = None
            except Exception:
                log.exception("delivering job %d failed", job.id)
        self.status.release(job.id)
        if delivered:
            try:
                await self.store.update_job(job.id, **values, delivered_at=self.clock())
            except Exception:
                log.exception("recording the delivery of job %d failed", job.id)
        return delivered, job

    async def _with_status_message(self, job: Job) -> Job:
        """Wait (bounded) until the caller attached the status message or said there is
        none, so the final message replaces it instead of leaving it stale."""
        gate = self._status_gates.get(job.id)
        if gate is None or job.status_message_id:  # none to wait for, or already in the row
            self._status_gates.pop(job.id, None)
            return job
        if not gate.is_set():
            try:
                await asyncio.wait_for(gate.wait(), STATUS_ATTACH_WAIT_S)
            except TimeoutError:
                log.warning("job %d: no status message after %.0f s", job.id, STATUS_ATTACH_WAIT_S)
        self._status_gates.pop(job.id, None)
        return await self.store.get_job(job.id) or job  # the message attached meanwhile

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
