"""The job service: accepts jobs, keeps the fair queue, drives the worker, reports back.

State lives in SQLite (`Store`); the in-memory `FairQueue` is rebuilt from it at start, so
waiting jobs survive a restart. The worker is a separate process behind a `WorkerBackend`; this
service only sends it small messages and reacts to its events, so the event loop stays free.
This module is intake and the life cycle; `bot.jobs.dispatch` runs the dispatch loop and
`bot.jobs.events` handles the worker's events.

Shutdown (`stop`) never loses a finished result: it waits a bounded time for results being
posted, and `start` posts any that a shutdown still cut off.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace

import aiosqlite

from bot.errors import UserError
from bot.jobs.dispatch import JobDispatch
from bot.jobs.events import Delivery
from bot.jobs.routing import Residency, SwapRule
from bot.jobs.scheduler import Caps, FairQueue, QueueFull
from bot.jobs.status import StatusBoard
from bot.loras import LORA_GONE, LoraTags
from bot.models import MODEL_GONE, ModelChoice
from bot.store.db import ACTIVE_STATES, Job, Store, insert_job_in
from bot.ui.render import queue_text
from config import Settings
from config.lora_tags import LoraTagError
from pipeline.request import MAX_SEED, EngineInfo, plan_steps
from pipeline.worker_backend import WorkerBackend
from pipeline.worker_protocol import WorkerEvent

log = logging.getLogger(__name__)

TOKEN_LIFETIME_S = 15 * 60 - 30  # Discord's 15 min, minus a margin for the last edit
DEFAULT_JOB_SECONDS = 20.0
STOP_DELIVERY_GRACE_S = 3.0
"""`stop()` waits this long for results being posted; with the worker's stop below, the
whole shutdown fits inside Docker's 10 s grace period (`bot.app` allows the job service 7 s)."""
STOP_WORKER_TIMEOUT_S = 2.5

__all__ = ["Delivery", "Hooks", "JobService", "NewJob"]


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
    mode: str = "img2img"  # "inpaint": only the masked region is regenerated
    mask_path: str | None = None  # inpaint: the mask stored beside the input
    mask_source: str | None = None  # inpaint: "mask", "transparent area" or region words
    region: str | None = None  # inpaint: words the worker turns into a mask
    crop: str = "auto"  # inpaint: auto | on | off
    counted: bool = True  # uses a unit of quota (an upscale's tiles: one in four does)
    model: str | None = None  # the catalogue's name (`bot.models`); None: the default
    structure: str | None = None  # edges | lines: the input's structure held (ControlNet)
    structure_weight: float = 1.0
    structure_skipped: str | None = None  # the style's kind, not offered on its model


ReserveHook = Callable[[sqlite3.Connection, NewJob, float], None]
"""Plain sqlite3 code, run in the database thread inside the transaction that inserts the
job (so a submit is one round trip, not one per statement of every hook)."""
JobHook = Callable[[Job], Awaitable[None]]
GroupHook = Callable[[aiosqlite.Connection, list[Job]], Awaitable[str]]
NEW_GROUP = "\0new"
"""Stands for a group not queued yet when the caps of a whole set are checked."""


@dataclass
class Hooks:
    """Extension points for quotas and galleries, run by the service at fixed moments.

    `reserve` runs inside the transaction that inserts a job and may raise `UserError` to
    refuse it; `finished` runs after a result was delivered; `deleted` after a delete.
    """

    reserve: list[ReserveHook] = field(default_factory=list)
    finished: list[JobHook] = field(default_factory=list)
    deleted: list[JobHook] = field(default_factory=list)


class JobService(JobDispatch):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        worker: WorkerBackend,
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
        self.status = StatusBoard(
            self._send_status,
            settings.progress_interval_s,
            places=self._places,
            place_text=self._place_text,
            note=self._status_note,
            # a waiting job's model note exists only where there are models to choose
            job_note=self._model_note if len(settings.catalogue.models) > 1 else None,
            run_grace=settings.progress_interval_s,  # a job done by then: no "Starting…"
            place_grace=settings.progress_interval_s,  # one started by then: no new place
        )
        self.resolution = settings.resolution or 512
        self.model_name = settings.model_id
        self.loras = LoraTags(settings.catalogue, settings.max_loras_per_job)
        self.models = ModelChoice(
            settings.catalogue, settings.default_steps, settings.default_guidance
        )
        self.worker_models = tuple(getattr(settings, "served_models", ())) or (
            settings.catalogue.default,
        )
        """What the local worker serves (WORKER_MODELS; routing for one worker)."""
        self.residency = Residency(getattr(settings, "resident_models", 1))
        self.swaps = SwapRule(settings.swap_window)
        self.on_model_loading: list[Callable[[str, tuple[str, ...]], None]] = []
        """Called with (model, job ids) when a worker starts loading a model (the bench
        counts swaps with it)."""
        self._online: frozenset[str] = frozenset()
        self._online_at = -1e9
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
        self._finals: set[str] = set()  # a final event came; its row is being written
        self._status_gates: dict[int, asyncio.Event] = {}
        self._admitting = asyncio.Lock()  # one submit between its caps check and its push
        self._dispatch_errors: dict[str, int] = {}
        self._hold_until = 0.0  # monotonic time before which dispatch waits (after an error)
        self._stopping = False
        self._event_task: asyncio.Task[WorkerEvent] | None = None

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild the queue from SQLite, deliver results a shutdown cut off, then start
        the worker and the dispatch loop."""
        self._stopping = False
        adopt = getattr(self.worker, "adopt", None)  # remote workers outlive the bot
        held: list[Job] = []
        for job in await self._runnable(await self.store.jobs_in_states(ACTIVE_STATES)):
            if job.state == "running" and adopt is not None:
                # Its worker may still run it: it counts as running, and the backend either
                # keeps it or hands it back (`WorkerDied.unstarted`) to wait again.
                held.append(job)
                self.queue.mark_running(self._queued(job))
                continue
            if job.state == "running":  # interrupted by a restart: it waits again
                await self.store.update_job(job.id, state="queued", started_at=None)
            self.queue.push(self._queued(job), enforce_caps=False)
        if len(self.queue):
            log.info("restored %d waiting jobs", len(self.queue))
        if adopt is not None:
            await adopt(self.store, [self._request(job) for job in held])
        await self._redeliver()
        self.status.start()
        self._task = self._start_task(self._run())

    async def _runnable(self, jobs: list[Job]) -> list[Job]:
        """The restored jobs that can still run; one asking for a LoRA the catalogue no
        longer offers (MODELS_FILE changed across the restart) fails now, refunded."""
        keep = []
        for job in jobs:
            error = MODEL_GONE if self.models.gone(job.model) else None
            try:
                self.loras.for_worker(job.prompt, self.models.for_worker(job.model) or None)
            except LoraTagError:
                error = error or LORA_GONE
            if error is not None:
                ended = await self._end(job.id, state="failed", error=error, counted=0)
                if ended is not None:
                    self._spawn(self._deliver(ended, self.delivery.deliver_failure, error))
                continue
            keep.append(job)
        return keep

    async def stop(self) -> None:
        """Stop dispatching, let deliveries in flight finish (bounded), put running jobs
        back in the queue for the next start (unless the backend's workers outlive the bot:
        remote workers keep running them and the next start adopts them), then stop the
        worker."""
        self._stopping = True
        self._wake.set()
        await self._drain(STOP_DELIVERY_GRACE_S)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.status.stop()
        for task in list(self._background):
            task.cancel()  # still unsent after the grace: `start()` delivers it next time
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            if not getattr(self.worker, "keeps_running_jobs", False):
                async with self.store.transaction() as db:
                    await db.execute(
                        "UPDATE jobs SET state='queued', started_at=NULL WHERE state='running'"
                    )
        except Exception:
            log.exception("could not put running jobs back in the queue")
        await self.worker.stop(timeout=STOP_WORKER_TIMEOUT_S)

    async def _drain(self, grace: float) -> None:
        """Wait up to `grace` seconds for background deliveries (new ones included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._background and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._background), timeout=left)
        if self._background:
            log.warning("%d deliveries still in flight at shutdown", len(self._background))

    def _start_task(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name="job-service")
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The supervisor's own guard: a service task that ends while the bot runs is
        started again (without starting the worker a second time)."""
        if self._stopping or task is not self._task or self.fatal is not None:
            return
        reason = "cancelled" if task.cancelled() else repr(task.exception())
        log.error("the job service's task ended (%s); restarting it", reason)
        self._task = self._start_task(self._supervise())

    # -- accepting jobs ---------------------------------------------------------------
    def check_caps(self, guild_id: int, user_id: int) -> None:
        """Cheap refusal before any download; `submit` checks again atomically."""
        try:
            self.queue.check_caps(guild_id, user_id)
        except QueueFull as exc:
            raise UserError(str(exc)) from None

    async def submit(self, new: NewJob) -> Job:
        """Store and queue a job; raise `UserError` (nothing stored) if it is refused.

        A job from an interaction gets a status message from its caller, who must then call
        `attach_status_message` (with None if posting it failed)."""
        return (await self.submit_many([new]))[0]

    async def submit_many(
        self, news: list[NewJob], *, group: GroupHook | None = None, enforce_caps: bool = True
    ) -> list[Job]:
        """Store and queue every job or none, in one transaction (a series).

        Caps are checked for the whole set as one entry and each job is reserved by the
        hooks (quota) in turn, so a set that does not fit is refused whole and nothing is
        ever partly queued. `group(db, jobs)` runs in the same transaction (the series
        writes its rows there) and names the group that makes the jobs one entry in the
        fair queue. `enforce_caps` False: the jobs continue work already admitted (an
        upscale's check of its blended picture), so the queue caps do not apply."""
        for new in news:
            plan_steps(new.steps, new.strength)  # raises InputError for an impossible strength
        now = self.clock()
        first = news[0]

        def insert(conn: sqlite3.Connection) -> list[Job]:
            return [self._insert(conn, new, now) for new in news]

        # One admission at a time: the caps are read before the rows go in and the queue
        # grows after, so no other submit may pass the same caps in between.
        async with self._admitting:
            try:
                if enforce_caps:
                    self.queue.check_caps(
                        first.guild_id,
                        first.user_id,
                        size=len(news),
                        group=NEW_GROUP if group is not None else None,
                    )
            except QueueFull as exc:
                raise UserError(str(exc)) from None
            name = None
            if group is None:  # hooks and rows in one round trip, grouped with other writes
                jobs = await self.store.run_transaction(insert)
            else:  # the group writes its own rows, in the same transaction
                async with self.store.transaction() as db:
                    jobs = await self.store.in_thread(insert, db)
                    name = await group(db, jobs)
            for job in jobs:
                self.queue.push(replace(self._queued(job), group=name), enforce_caps=False)
        for new, job in zip(news, jobs, strict=True):
            if new.interaction_token:
                self._status_gates[job.id] = asyncio.Event()
            log.info("queued job %d (guild %d, user %d)", job.id, job.guild_id, job.user_id)
        self._wake.set()
        return jobs

    def _insert(self, conn: sqlite3.Connection, new: NewJob, now: float) -> Job:
        """Reserve (hooks may refuse with `UserError`) and insert one job row, in the
        database thread."""
        for hook in self.hooks.reserve:
            hook(conn, new, now)
        seed = new.seed if new.seed is not None else secrets.randbelow(MAX_SEED + 1)
        token_from = new.interaction_created_at if new.interaction_created_at is not None else now
        return insert_job_in(
            conn,
            guild_id=new.guild_id, channel_id=new.channel_id, user_id=new.user_id,
            kind=new.kind, parent_id=new.parent_id, prompt=new.prompt,
            negative_prompt=new.negative_prompt, strength=new.strength, seed=seed,
            steps=new.steps, guidance=new.guidance, input_path=new.input_path,
            input_width=new.input_width, input_height=new.input_height,
            application_id=new.application_id, interaction_token=new.interaction_token,
            token_expires_at=token_from + TOKEN_LIFETIME_S if new.interaction_token else None,
            reply_to_message_id=new.reply_to_message_id, created_at=now,
            channel_public=int(new.channel_public), channel_nsfw=int(new.channel_nsfw),
            style=new.style, mode=new.mode, mask_path=new.mask_path,
            mask_source=new.mask_source, region=new.region, crop=new.crop,
            counted=int(new.counted), model=new.model or self.models.catalogue.default,
            structure=new.structure, structure_weight=new.structure_weight,
            structure_skipped=new.structure_skipped,
        )  # fmt: skip

    async def attach_status_message(self, job_id: int, message_id: int | None) -> None:
        """Remember the message that shows this job's place and progress; None: the caller
        could not post one. Either way the job's final message may go out now."""
        try:
            if message_id is not None:
                await self.store.update_job(job_id, status_message_id=message_id)
        finally:
            gate = self._status_gates.get(job_id)
            if gate is not None:
                gate.set()
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
            ended = await self._end(job_id, state="cancelled", counted=0)
            if ended is not None:
                self._spawn(self._deliver(ended, self.delivery.deliver_cancelled))
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
        return guild_place, self._eta_s(before)

    def _eta_s(self, before: int) -> float:
        """Seconds until a job with `before` jobs served ahead of it probably starts: every
        worker online serves a batch at a time (a hundred of them, a hundred times sooner)."""
        running = len(self.queue.running)
        step, total = next(iter(self._progress.values()), (0, 1))
        remaining_running = (1 - step / max(1, total)) * self.seconds_per_image if running else 0
        workers = max(1, int(getattr(self.worker, "workers_online", 1) or 1))
        batch = max(1, self.settings.max_batch) * workers
        return remaining_running + (before // batch + 1) * self.seconds_per_image

    def progress_of(self, job_id: int) -> tuple[int, int]:
        return self._progress.get(job_id, (0, 1))

    def _refresh_positions(self) -> None:
        """Places moved: the status board reads them once at its next tick (one pass over
        the queue), not once per event per waiting job."""
        self.status.places_changed()

    def _places(self) -> Iterator[tuple[int, int, int]]:
        for queued, place, before in self.queue.places():
            yield int(queued.job_id), place, before

    def _place_text(self, place: int, before: int, note: str | None) -> str:
        text = queue_text(place, self._eta_s(before))
        return f"{text}\n{note}" if note else text

    def _status_note(self) -> str | None:
        return getattr(self.worker, "status_note", lambda: None)()  # e.g. no workers online

    async def _send_status(
        self, job_id: int, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None:
        job = await self.store.get_job(job_id)
        if job is None or job.state not in ACTIVE_STATES:
            return
        if preview is None:
            await self.delivery.show_status(job, text, cancellable)
        else:  # a live preview rides in this edit
            await self.delivery.show_status(job, text, cancellable, preview=preview)
