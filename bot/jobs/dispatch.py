"""The dispatch half of the job service: the loop, its supervisor, batches to the worker.

A mixin of `JobService` (see `bot.jobs.service`). The loop cannot die while the bot runs: an error
while dispatching puts back (or, after a few tries, fails) only the jobs it touched and
is logged with its traceback, and the supervisor runs the loop again if it ever ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Hashable
from pathlib import Path

from bot.jobs.events import JobEvents
from bot.jobs.model_routes import ModelRoutes
from bot.jobs.previews import previews_on, with_preview
from bot.jobs.routing import Route
from bot.jobs.scheduler import QueuedJob
from bot.loras import LoraTags
from bot.models import ModelChoice
from bot.startup import engine_summary
from bot.store.db import ACTIVE_STATES, Job
from pipeline.prepare import target_size
from pipeline.request import (
    TEXT_TO_IMAGE,
    ControlRef,
    EngineInfo,
    GenerationRequest,
    NoiseStart,
    plan_steps,
)
from pipeline.worker import WorkerEvent, WorkerStartError

log = logging.getLogger(__name__)

DISPATCH_ATTEMPTS = 3
"""A job whose dispatch fails this many times fails (refunded) instead of waiting again."""
DISPATCH_RETRY_S = 1.0
LOOP_RESTART_S = 1.0
EVENTS_PER_PASS = 64
"""Events already waiting that the loop handles before its next dispatch."""
BATCHES_PER_PASS = 32
"""Batches one dispatch takes at most (one transaction): a hundred free workers are
filled in a few passes, none of which holds the event loop long."""

DISPATCH_FAILED = (
    "Something went wrong on our side while starting this image. "
    "It did not count against your quota; please try again."
)


class JobDispatch(ModelRoutes, JobEvents):
    """Mixin of `JobService`: from the fair queue to the worker."""

    resolution: int
    engine_info: EngineInfo | None
    loras: LoraTags
    models: ModelChoice
    ready: asyncio.Event
    fatal: str | None
    on_fatal: Callable[[str], None] | None
    _wake: asyncio.Event
    _dispatch_errors: dict[str, int]
    _hold_until: float
    _event_task: asyncio.Task[WorkerEvent] | None

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @functools.cached_property
    def _outputs(self) -> Path:
        """Where workers write results, resolved once: a realpath per job costs a stat per
        folder of the path."""
        return (self.data_dir / "outputs").resolve()

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
        await self._supervise()

    async def _supervise(self) -> None:
        """Run the loop; if it ever ends while the bot runs, log it and run it again."""
        while not self._stopping:
            try:
                await self._loop()
                log.error("the dispatch loop returned; restarting it")
            except Exception:
                log.exception("the dispatch loop failed; restarting it")
            await asyncio.sleep(LOOP_RESTART_S)

    async def _loop(self) -> None:
        # The pending read outlives a failed loop, so the restarted loop loses no event.
        try:
            dispatches = 1  # one per event handled (or wake), as when each had its pass
            while True:
                self._wake.clear()
                self._recall_overtaken()
                for _ in range(dispatches):
                    if not (self._can_dispatch() and await self._dispatch()):
                        break
                dispatches = 1
                if self._event_task is None:
                    self._event_task = asyncio.create_task(self.worker.next_event())
                event_task = self._event_task
                wake_task = asyncio.create_task(self._wake.wait())
                try:
                    done, _ = await asyncio.wait(
                        {event_task, wake_task},
                        timeout=self._retry_in(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    wake_task.cancel()
                if event_task in done:
                    self._event_task = None
                    await self._handle_logged(event_task.result())
                    dispatches += await self._handle_waiting_events()
        except asyncio.CancelledError:
            if self._event_task is not None:
                self._event_task.cancel()
                self._event_task = None
            raise

    async def _handle_logged(self, event: WorkerEvent) -> None:
        try:
            await self._handle(event)
        except Exception:
            log.exception("handling worker event %r failed", event)

    async def _handle_waiting_events(self) -> int:
        """Handle the events that already wait before dispatching again: with a hundred
        workers they come faster than one dispatch (a transaction) per event, and a start
        handled late keeps its job held (passed over by every batch taken meanwhile) and
        its worker's next grant waiting. Events are handled in their order as before;
        the first one not there yet is left pending for the loop to wait on. Returns how
        many were handled: the loop may dispatch as often (a worker's ask each)."""
        handled = 0
        for _ in range(EVENTS_PER_PASS):
            # Kept where the loop keeps its pending read, so a cancel or a restarted loop
            # loses no event.
            self._event_task = task = asyncio.create_task(self.worker.next_event())
            await asyncio.sleep(0)  # the task's first step: done if an event was waiting
            if not task.done():
                break
            self._event_task = None
            await self._handle_logged(task.result())
            handled += 1
        return handled

    def _recall_overtaken(self) -> None:
        """A job that arrived after others were handed to the worker as ready-to-join, and
        that the turns put ahead of them, takes their place: they are recalled (a backend
        without `recall` keeps them). A recall the worker answers too late is harmless:
        the job started, and the one that arrived waits for the next place."""
        recall = getattr(self.worker, "recall", None)
        if recall is None or self._stopping:
            return
        for queued in self.queue.overtaken():
            recall(queued.job_id)

    def _can_dispatch(self) -> bool:
        return (
            not self._stopping
            and len(self.queue) > 0
            and self.worker.free_slots > 0  # 0 also while no worker is ready
            and time.monotonic() >= self._hold_until
        )

    def _retry_in(self) -> float | None:
        """Seconds until a dispatch held back by an error may be tried again."""
        left = self._hold_until - time.monotonic()
        return left if left > 0 and len(self.queue) else None

    def _on_ready(self, info: EngineInfo) -> None:
        self.engine_info = info
        self.resolution = self.settings.resolution or getattr(info, "resolution", 512)
        self.model_name = getattr(info, "model_id", self.settings.model_id)
        log.info("worker ready: %s", engine_summary(info))
        self.ready.set()

    def _queued(self, job: Job) -> QueuedJob:
        """The queue's view of a job; its batch key holds the input size, sized later, and
        the mode: an inpaint job's key is its own (its id), so it never shares a call
        (nor with img2img jobs). Its model is the request's (`bot.models`)."""
        plan = plan_steps(job.steps, job.strength)
        mode: Hashable = ("inpaint", job.id) if job.mode == "inpaint" else job.mode
        # the call path runs one structure (kind and weight) a call; step rows mix them
        control = (job.structure, job.structure_weight) if job.structure else None
        raw_key = ((job.input_width, job.input_height), plan, job.guidance, mode, control)
        model = self.models.for_worker(job.model) or self.models.catalogue.default
        return QueuedJob(str(job.id), job.guild_id, job.user_id, raw_key, model=model)

    def _batch_key(self, queued: QueuedJob) -> Hashable:
        """Jobs share a call when they render with one model at one size with one step plan
        and guidance (and one structure kind and weight). The size depends on the model's
        resolution, known only once the worker is ready, so it is derived here at dispatch
        time rather than when the job was queued. With step batching
        (`EngineInfo.step_slots`) jobs need only one model and one size (latent shape)."""
        (width, height), plan, guidance, mode, control = queued.batch_key  # type: ignore[misc]
        size = target_size(width, height, self.resolution_of(queued.model))
        if self.engine_info is not None and self.engine_info.step_slots:
            return queued.model, size, mode
        return queued.model, size, plan, guidance, mode, control

    def _free_batches(self) -> list[int]:
        """The batch sizes the workers take now, one per worker with free slots (most
        first), as a backend with many workers lists them; else one, `free_slots`."""
        sizes = getattr(self.worker, "free_batches", None)
        return list(sizes()) if sizes is not None else [self.worker.free_slots]

    async def _dispatch(self) -> bool:
        """Hand the next batches to the workers: one per worker with free slots, their
        jobs marked running in one transaction (with a hundred workers, one transaction
        each would queue the loop behind every other write). An error puts back (or
        fails) only the jobs it touched. True if a batch left the queue (sent, or
        dropped as no longer queued)."""
        info = self.worker.info
        if info is not None and info != self.engine_info:  # a remote worker told us more
            self._on_ready(info)
        batches: list[list[QueuedJob]] = []
        routes: list[Route | None] = []
        try:
            if len(self.models.catalogue.models) > 1:
                everyone = self._all_routes()
                for route in self._routes()[:BATCHES_PER_PASS]:
                    batch = self._take_for(route, everyone)
                    if batch:
                        batches.append(batch)
                        routes.append(route)
            else:  # one model: every worker takes the next batch in fair order
                for size in self._free_batches()[:BATCHES_PER_PASS]:
                    batch = self.queue.take_batch(
                        min(self.settings.max_batch, size), key=self._batch_key
                    )
                    if not batch:
                        break
                    batches.append(batch)
                    routes.append(None)
        except Exception:
            log.exception("choosing the next batch failed")
            self._hold_until = time.monotonic() + DISPATCH_RETRY_S
            for queued in (q for batch in batches for q in batch):
                self.queue.release(queued.job_id)  # taken, not sent: it waits where it was
            return False
        if not batches:
            return False
        taken = [q for batch in batches for q in batch]
        try:
            requests = {r.job_id: r for r in await self._mark_running(taken)}
        except Exception:
            ids = ", ".join(q.job_id for q in taken)
            log.exception("dispatching jobs %s failed; they wait again", ids)
            self._hold_until = time.monotonic() + DISPATCH_RETRY_S
            await self._dispatch_failed(taken)
            return False
        for n, batch in enumerate(batches):
            sent = [requests[q.job_id] for q in batch if q.job_id in requests]
            try:
                if sent:
                    self._submit(sent, routes[n])
            except Exception:
                rest = [q for later in batches[n:] for q in later]
                ids = ", ".join(q.job_id for q in rest)
                log.exception("dispatching jobs %s failed; they wait again", ids)
                self._hold_until = time.monotonic() + DISPATCH_RETRY_S
                await self._dispatch_failed(rest)
                self._refresh_positions()
                return n > 0
            self._sent(batch, sent)
        self._refresh_positions()
        return True

    def _sent(self, batch: list[QueuedJob], requests: list[GenerationRequest]) -> None:
        """The batch's jobs (those still queued when marked) are with a worker now."""
        ids = {r.job_id for r in requests}
        for request in requests:
            self._dispatch_errors.pop(request.job_id, None)
            if request.job_id in self._cancel_requested:
                self.worker.cancel(request.job_id)
        for queued in batch:
            if queued.job_id in ids:
                self.status.set(int(queued.job_id), "🎨 Starting…", cancellable=True)

    async def _mark_running(self, batch: list[QueuedJob]) -> list[GenerationRequest]:
        """Mark the batch's jobs running (queued → running only) and build their requests,
        in one round trip to the database (`Store.start_jobs`). A job that is no longer
        queued (it ended meanwhile) is left out, never run again."""
        ids = [int(q.job_id) for q in batch]
        jobs, servers = await self.store.start_jobs(ids, self.clock())
        requests: list[GenerationRequest] = []
        for job in jobs:
            nsfw_channels, previews = servers.get(job.guild_id, ("filter", None))
            # `/settings nsfw-channels allow`: unfiltered results in age-restricted channels
            request = self._request(job, allow_nsfw=nsfw_channels == "allow")
            on = previews_on(self.settings.preview, previews)
            requests.append(with_preview(request, job, on))
        started = {str(job.id) for job in jobs}
        for queued in batch:
            if queued.job_id not in started:
                log.warning("job %s is no longer queued; it is not run again", queued.job_id)
                self.queue.finish(queued.job_id)
        return requests

    async def _dispatch_failed(self, batch: list[QueuedJob]) -> None:
        """Jobs whose dispatch failed wait again at the head of their queue; one that
        failed `DISPATCH_ATTEMPTS` times fails for good (refunded), so no job loops."""
        again: list[QueuedJob] = []
        for queued in batch:
            tries = self._dispatch_errors.get(queued.job_id, 0) + 1
            self._dispatch_errors[queued.job_id] = tries
            if tries < DISPATCH_ATTEMPTS:
                again.append(queued)
                continue
            self._dispatch_errors.pop(queued.job_id, None)
            try:
                job = await self._end(
                    int(queued.job_id), state="failed", counted=0, error="dispatch failed"
                )
            except Exception:
                log.exception("recording the failed dispatch of job %s failed", queued.job_id)
                self.queue.finish(queued.job_id)
                continue
            if job is not None:
                self._spawn(self._deliver(job, self.delivery.deliver_failure, DISPATCH_FAILED))
        try:
            await self._requeue(again)
        except Exception:
            log.exception("recording jobs %s as waiting failed", [q.job_id for q in again])

    async def _requeue(self, queued: list[QueuedJob]) -> None:
        """Put jobs that never ran back at the head of their guild's queue, untouched.
        The in-memory queue changes first, so a failing database cannot lose them; a job
        whose cancel was asked for meanwhile ends cancelled instead, and one whose row says
        it ended leaves the queue again (an end never goes back)."""
        dropped = [q for q in queued if q.job_id in self._cancel_requested]
        queued = [q for q in queued if q not in dropped]
        for q in reversed(queued):
            self.queue.requeue_front(q)  # a held one just waits again where it was
        self._refresh_positions()
        self._wake.set()
        ended: list[str] = []
        if queued:
            async with self.store.transaction() as db:
                for q in queued:
                    if not await self._move(
                        db, int(q.job_id), ACTIVE_STATES, state="queued", started_at=None
                    ):
                        ended.append(q.job_id)
        for job_id in ended:
            log.warning("job %s had already ended; it does not wait again", job_id)
            self.queue.remove(job_id)
        if ended:
            self._refresh_positions()
        for q in dropped:
            job = await self._end(int(q.job_id), state="cancelled", counted=0)
            if job is not None:
                self._spawn(self._deliver(job, self.delivery.deliver_cancelled))

    def _request(self, job: Job, *, allow_nsfw: bool = False) -> GenerationRequest:
        text = job.mode == TEXT_TO_IMAGE  # no input: noise of the size its batch key holds
        model = self.models.for_worker(job.model)
        size = target_size(job.input_width, job.input_height, self.resolution_of(model))
        start = NoiseStart(*size)
        # Tags out, trigger words first; checked at submit, and at start for restored jobs.
        prompt, loras = self.loras.for_worker(job.prompt, model or None)
        return GenerationRequest(
            job_id=str(job.id),
            image_path="" if text else str(self.data_dir / job.input_path),
            start=start if text else None,
            prompt=prompt,
            negative_prompt=job.negative_prompt,
            strength=1.0 if text else job.strength,
            seed=job.seed,
            steps=job.steps,
            guidance=job.guidance,
            output_path=str(self._outputs / f"{job.id}.png"),
            allow_nsfw=bool(job.channel_nsfw) and allow_nsfw,
            mode="img2img" if text else job.mode,
            mask_path=str((self.data_dir / job.mask_path).resolve()) if job.mask_path else None,
            region=job.region,
            crop=job.crop,
            mask_blur=self.settings.mask_blur,
            loras=loras,
            model=model,
            control=ControlRef(job.structure, job.structure_weight) if job.structure else None,
        )
