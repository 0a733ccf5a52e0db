"""`WORKER_BACKEND=redis`: any number of remote workers behind a Valkey/Redis server.

The bot stays the only scheduler. Workers announce themselves (a heartbeat key with a TTL,
and a hello once their model is loaded) and say how many jobs they take (`ask` events);
the job service asks `free_slots`, takes that many jobs from its own fair queue and
`submit`s them, and this backend grants them to one worker's own grants stream. Nothing
waits in a shared broker queue, so the fair order is exact with any number of workers.

Every grant is (job, attempt, worker process nonce), recorded in SQLite (`redis_ledger`)
before it is sent; every event a worker sends names all three, and an event is used only
if that process holds that attempt of that job now. A worker whose heartbeat expires (or
that goes silent with jobs for WORKER_SILENCE_S, or restarts under its id) is dropped: its
jobs come back as a `WorkerDied` whose `unstarted` the job service puts at the head of
their guild's queue (same seed, so the same image); a job that had started twice already
fails instead. A late answer from a dropped worker is discarded, so a result is posted once.

A deploy loses nothing: `stop` sends no cancel (workers keep running what they hold and
keep their results in their events streams), the job rows stay `running`, and the next
bot `adopt`s them: a job a live worker lists in its heartbeat within one heartbeat period
stays running and its result is delivered once; any other waits again as its next attempt.

One reader task XREADs the hello stream and the events stream of every worker online (the
set changes only when a worker joins, which the hello itself announces); one writer task
sends grants in order, retrying while the server is away (both in `redis_streams`). After
the server comes back, grants a worker has not acknowledged are sent again (a worker skips
those it took). Membership (hello, heartbeats, drops, refusals, adoption) is in
`bot.jobs.backends.redis_members`, the meaning of each event in `redis_events`, the SQLite
record of who holds what in `redis_ledger`; the worker side is `pipeline.remote_worker`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.jobs.backends.redis_ledger import GrantLedger, Holder
from bot.jobs.backends.redis_lock import SchedulerLock
from bot.jobs.backends.redis_members import Grant, Remote
from bot.jobs.backends.redis_routes import Routes
from bot.jobs.backends.redis_streams import BLOCK_MS, Streams, _files_of
from bot.store.db import Store
from config.catalogue import DEFAULT_MODEL_NAME
from pipeline import stream_codec as codec
from pipeline.request import EngineInfo, GenerationRequest
from pipeline.worker import WorkerStartError
from pipeline.worker_protocol import (
    WorkerDied,
    WorkerEvent,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
"""A job that started on this many workers that all died fails instead of running again."""
NO_WORKERS_TEXT = "No image workers online right now; your job waits until one joins."


class RedisBackend(Routes, Streams):
    """`WorkerBackend` over Valkey/Redis streams; use from one event loop."""

    def __init__(
        self,
        url: str,
        *,
        model_id: str,
        resolution: int | None = None,
        safety_checker: str = "off",
        batching: str | None = None,
        heartbeat_s: float = 15.0,
        silence_s: float = 300.0,
        max_attempts: int = MAX_ATTEMPTS,
        keys: codec.Keys | None = None,
        default_model: str = DEFAULT_MODEL_NAME,
        model_resolutions: dict[str, int] | None = None,
        models: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url
        self.model_id = model_id
        self.default_model = default_model
        """The catalogue's default: what a worker naming no models serves."""
        self.model_resolutions = model_resolutions or {}
        """Catalogue models with a `resolution` of their own: their inputs travel at it."""
        self.catalogue_models = dict(models) if models else {default_model: model_id}
        """The bot's catalogue, name → source: a worker serving none of these is refused."""
        self.safety_checker = safety_checker
        self.batching = batching
        self.resolution = resolution
        self.heartbeat_s = heartbeat_s
        self.silence_s = silence_s
        self.max_attempts = max_attempts
        self.keys = keys or codec.Keys()
        self.epoch = secrets.token_hex(6)
        self.lock = SchedulerLock(self.keys, self.epoch, ttl_s=2 * heartbeat_s)
        self._provisional = EngineInfo(
            model_id=model_id,
            device="remote",
            dtype="auto",
            resolution=resolution or 512,
            pipeline_class="remote",
            safety_checker="remote",
        )
        self._info: EngineInfo | None = None
        self._r: aioredis.Redis | None = None
        self._events: asyncio.Queue[WorkerEvent] = asyncio.Queue()
        self._outbox: asyncio.Queue[tuple[str, str, dict[bytes, bytes], list[Any]]] = (
            asyncio.Queue()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[str, Remote] = {}
        self._takers: dict[str, Remote] = {}  # those with a free slot (`_slots_changed`)
        self._ranks = itertools.count()
        self._refused: set[tuple[str, str]] = set()  # (worker id, process nonce)
        self.refusals: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()
        """Worker id → why it was refused (a few words for /queue, the details for /healthz
        and the log), the newest few."""
        self._ledger: GrantLedger | None = None
        self._handed: list[str] = []
        self._adopt_until: float | None = None
        self._drained: set[str] = set()  # workers whose events were read to the end once
        self._last_ids: dict[str, bytes] = {}  # events stream position, kept past a death
        self._hello_id = b"0-0"
        self._hello_known = False
        self._seq: dict[str, int] = {}
        self._jobs: dict[str, Grant] = {}
        self._attempts: dict[str, int] = {}
        self._starts: dict[str, int] = {}
        self._batches: dict[tuple[str, int], set[str]] = {}
        self._batch_ids: dict[tuple[str, int], tuple[str, ...]] = {}
        self.connected = False
        self._closing = False
        self.discarded = 0
        """Late final events dropped because their (job, attempt) was no longer current."""
        self.granted: collections.deque[str] = collections.deque(maxlen=1000)
        """Job ids in the order they were granted (newest last)."""
        self.ran_by: collections.OrderedDict[str, str] = collections.OrderedDict()
        """Job id → the worker whose result was used (the newest 1000)."""

    # -- WorkerBackend ----------------------------------------------------------------
    @property
    def info(self) -> EngineInfo | None:
        return self._info

    @property
    def workers_online(self) -> int:
        return len(self._workers)

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self._workers)

    @property
    def engine_infos(self) -> tuple[EngineInfo, ...]:
        """What each worker online loaded: `bot.safety_notice` warns when one filters nothing."""
        return tuple(w.info for w in self._workers.values() if w.info is not None)

    @property
    def free_slots(self) -> int:
        """The most jobs one worker takes now (a batch goes to one worker); none while
        this bot is not the namespace's scheduler."""
        if not self.lock.held:
            return 0
        return max((w.slots for w in self._takers.values()), default=0)

    def free_batches(self) -> list[int]:
        """The free slots of each worker that takes jobs now, most first. The job service
        takes a batch for each and marks them all running in one transaction, then
        `submit`s them in this order: each goes to the worker with the most free slots,
        so batch and worker match as listed here."""
        if not self.lock.held:
            return []
        return sorted((w.slots for w in self._takers.values()), reverse=True)

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._jobs)

    def status_note(self) -> str | None:
        """What a waiting job's status adds: nothing, or that no worker is online."""
        return None if self._workers else NO_WORKERS_TEXT

    keeps_running_jobs = True
    """Remote workers outlive the bot: its running jobs stay running across a restart."""

    async def adopt(self, store: Store, running: Sequence[GenerationRequest]) -> None:
        """Before `start`: record grants in `store` from now on, and take over `running`
        (jobs the last bot left running) as their holders recorded them. Those a live
        worker lists within one heartbeat period stay; the rest come back as unstarted."""
        self._ledger = GrantLedger(store)
        holders = await self._ledger.running()
        for job_id, holder in holders.items():
            self._attempts[job_id] = holder.attempt
        for request in running:
            h = holders.get(request.job_id) or Holder(0, "", "")
            self._jobs[request.job_id] = Grant(
                h.worker_id, h.attempt, request, 0, h.nonce, started=True, adopting=True
            )
        if running:
            ids = [r.job_id for r in running]
            log.info("waiting one heartbeat for workers to claim jobs %s", ids)

    async def start(self) -> EngineInfo:
        """Connect and start the reader, writer and watcher; never waits for a worker
        (jobs wait in the queue until one joins)."""
        self._closing = False
        if any(g.adopting for g in self._jobs.values()):
            self._adopt_until = time.monotonic() + self.heartbeat_s
        if self._r is None:
            self._r = aioredis.Redis.from_url(
                self._url,
                socket_timeout=BLOCK_MS / 1000 + 10,
                socket_connect_timeout=5,
                socket_keepalive=True,
            )
        log.info(
            "redis backend on %s (epoch %s), heartbeat TTL %g s",
            codec.redact_url(self._url), self.epoch, self.heartbeat_s,
        )  # fmt: skip
        try:
            holder = await self.lock.acquire_or_wait(self._r)
        except (RedisError, OSError) as exc:  # the watch loop takes it once the server is back
            log.warning("could not take the scheduler lock yet (%s)", exc)
            holder = None
        if holder is not None:
            raise WorkerStartError(
                f"Another bot is the scheduler of {self.keys.prefix!r} on "
                f"{codec.redact_url(self._url)}: {holder}. Stop it first, or give this bot "
                "its own Valkey database."
            )
        for coro in (self._read_loop(), self._write_loop(), self._watch_loop()):
            self._tasks.append(asyncio.create_task(coro))
        return self._info or self._provisional

    async def restart(self) -> EngineInfo:
        """Remote workers are not ours to restart: report what is known."""
        return self._info or self._provisional

    async def stop(self, timeout: float = 10.0) -> None:
        """Disconnect, cancelling nothing: workers go on with what they hold and the next
        bot adopts it (grants still in the outbox were never sent: their jobs wait again)."""
        r = self._r
        # redis-py may turn a cancel inside a read into a connection error, which the
        # loops treat as an outage: they also stop on `_closing`, and are cancelled again.
        self._closing = True
        pending = set(self._tasks)
        for _ in range(20):
            if not pending:  # (none at all when `start` stopped at the lock)
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.25)
        if pending:
            log.warning("%d redis backend task(s) did not stop", len(pending))
        self._tasks.clear()
        if r is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.lock.release(r)  # the next bot need not wait for its TTL
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await r.aclose()
        self._r = None

    def submit(self, batch: Sequence[GenerationRequest], worker_id: str | None = None) -> None:
        """Grant the batch to `worker_id` (routing by model), else to the worker with the most
        free slots. Never raises for a missing worker: the jobs come back as a
        `WorkerDied`'s `unstarted`."""
        batch = tuple(batch)
        if not batch:
            raise ValueError("empty batch")
        ids = tuple(r.job_id for r in batch)
        if worker_id is not None:
            worker = self._workers.get(worker_id)
        else:
            worker = max(self._by_rank(), key=lambda w: w.slots, default=None)
        if worker is None or worker.slots < 1:
            log.warning("no worker takes jobs %s now; they wait again", ids)
            self._events.put_nowait(WorkerDied(None, (), unstarted=ids))
            return
        seq = self._seq.get(worker.id, 0) + 1
        self._seq[worker.id] = seq
        items, files, records = [], [], []
        for request in batch:
            attempt = self._attempts.get(request.job_id, 0) + 1
            self._attempts[request.job_id] = attempt
            self._jobs[request.job_id] = Grant(worker.id, attempt, request, seq, worker.nonce)
            items.append({"a": attempt, "req": codec.encode_request(request)})
            size = self.model_resolutions.get(request.model) or (
                worker.info.resolution if worker.info else None
            )
            files += _files_of(request, size)
            records.append((request.job_id, Holder(attempt, worker.id, worker.nonce)))
            self.granted.append(request.job_id)
            log.info("job %s attempt %d granted to worker %s", request.job_id, attempt, worker.id)
        entry = {
            b"t": b"run",
            b"e": self.epoch.encode(),
            b"n": str(seq).encode(),
            b"p": worker.nonce.encode(),
            b"f": str(self.lock.token).encode(),
            b"batch": codec.dumps(items),
        }
        worker.granted(seq, entry, files, len(batch))
        self._batches[(worker.id, seq)] = set(ids)
        self._batch_ids[(worker.id, seq)] = ids
        self._outbox.put_nowait(("grant", self.keys.grants(worker.id), entry, [files, records]))

    def cancel(self, job_id: str) -> None:
        """Stop the job where it runs (an adopted one too: its grant names the process)."""
        g = self._jobs.get(job_id)
        if g is not None and g.worker and not g.final:
            self._send(self.keys.grants(g.worker), self._cancel_entry(job_id, g))

    async def next_event(self) -> WorkerEvent:
        """The next event; the service calls this only after it handled the last one."""
        self._forget_handled()
        event = await self._events.get()
        self._handing(event)
        return event
