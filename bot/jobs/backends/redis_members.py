"""The membership half of `RedisBackend`: which worker processes are online, what they may
take, and which jobs they hold.

A mixin, split from `bot.jobs.backends.redis` (connection, grants, the reader and the
writer); what their events mean is `bot.jobs.backends.redis_events`.
Rules kept here:
- A worker is a process: its id and the nonce it drew at start. An event is used only if
  that process holds that (job, attempt) now (the grant the ledger in SQLite recorded), so
  a stale event (an earlier attempt, a process that died or restarted) is never applied.
- A worker's free slots are what it last said (heartbeat or ask, the newest by its own
  version number); a grant counts against it until the worker says it saw it.
- A worker whose heartbeat expires, that goes silent with jobs, or whose id comes back with
  another nonce (a restart) is dropped: its jobs come back as a `WorkerDied`
  (`unstarted`: run again as the next attempt; `job_ids`: started `max_attempts` times,
  failed) and its keys are deleted.
- A worker must match the bot where it matters (model, safety checker, batching mode,
  resolution) or it is refused, with the reason logged on both sides and kept for /queue.
- A job adopted at start (running when the last bot stopped) stays running if a live
  worker process lists it in its heartbeat within one heartbeat period; else it waits again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.jobs.backends.redis_ledger import GrantLedger
from bot.jobs.backends.redis_lock import SchedulerLock
from pipeline import stream_codec as codec
from pipeline.request import EngineInfo, GenerationRequest
from pipeline.worker_protocol import (
    BatchDone,
    WorkerDied,
    WorkerEvent,
)

log = logging.getLogger(__name__)


GrantFile = tuple[bytes, str, int | None]
"""A file a grant carries: its field name, its stored path, and the working size it is
scaled to on the way (None: sent as stored)."""


_SLOT_FIELDS = frozenset({"free", "pending"})


@dataclass
class Remote:
    """A worker process online, as the bot sees it."""

    id: str
    model: str
    info: EngineInfo | None
    max_batch: int
    free: int  # what it last said it takes, after `seen` grants
    seen: int
    nonce: str = ""
    host: str = ""
    version: int = 0  # of the newest status applied
    held: frozenset[tuple[str, int]] = frozenset()
    loading: bool = False  # loading a model: silent for a while, not dead
    last_seen: float = field(default_factory=time.monotonic)
    last_event: float = field(default_factory=time.monotonic)
    unacked: dict[int, tuple[dict[bytes, bytes], list[GrantFile], int]] = field(
        default_factory=dict
    )
    pending: int = 0  # jobs in `unacked`, kept: `slots` is read on every dispatch pass
    models: tuple[str, ...] = ()
    """The catalogue models it serves (WORKER_MODELS), its default first."""
    resident: tuple[str, ...] = ()
    """Those loaded now, least recently used first (heartbeat, and each `ModelLoaded`)."""
    rank: int = 0
    """Its place among the workers online (first registered first): ties go to the first."""
    watcher: Callable[[Remote], None] | None = field(default=None, repr=False, compare=False)
    """Told whenever `free` or `pending` changes (the backend's index of workers with free
    slots, which every dispatch pass reads: a hundred workers cost 50 µs a scan)."""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _SLOT_FIELDS and (watcher := self.__dict__.get("watcher")) is not None:
            watcher(self)

    @property
    def slots(self) -> int:
        return max(0, self.free - self.pending)

    def granted(self, seq: int, entry: dict[bytes, bytes], files: list[GrantFile], n: int) -> None:
        """A grant of `n` jobs is on its way: they count against the slots until seen."""
        self.unacked[seq] = (entry, files, n)
        self.pending += n


@dataclass
class Grant:
    worker: str
    attempt: int
    request: GenerationRequest
    seq: int
    nonce: str = ""
    started: bool = False
    final: bool = False
    """Its final event is queued for the job service: kept (so it still counts as running)
    until the service has handled it."""
    adopting: bool = False
    """Running when the bot started: kept only if its holder says it still runs it."""


SAFETY_RANK = {"off": 0, "missing": 1, "on": 2}
"""How much a worker filters (`EngineInfo.safety_checker`)."""
SAFETY_REQUIRED = {"off": 0, "auto": 1, "on": 2}
"""What the bot's SAFETY_CHECKER requires of a worker's `EngineInfo.safety_checker`."""
REFUSALS_KEPT = 20


class Members:
    """Mixin of `RedisBackend`: worker membership and worker events."""

    model_id: str
    catalogue_models: dict[str, str]
    safety_checker: str
    batching: str | None
    resolution: int | None
    heartbeat_s: float
    silence_s: float
    max_attempts: int
    keys: codec.Keys
    epoch: str
    lock: SchedulerLock
    discarded: int
    _closing: bool
    ran_by: collections.OrderedDict[str, str]
    refusals: collections.OrderedDict[str, tuple[str, str]]
    _r: aioredis.Redis | None
    _info: EngineInfo | None
    _ledger: GrantLedger | None
    _events: asyncio.Queue[WorkerEvent]
    _outbox: asyncio.Queue[tuple[str, str, dict[bytes, bytes], list[Any]]]
    _workers: dict[str, Remote]
    _takers: dict[str, Remote]
    _ranks: itertools.count[int]
    _refused: set[tuple[str, str]]
    _last_ids: dict[str, bytes]
    _seq: dict[str, int]
    _jobs: dict[str, Grant]
    _attempts: dict[str, int]
    _starts: dict[str, int]
    _handed: list[str]
    _adopt_until: float | None
    _drained: set[str]
    _batches: dict[tuple[str, int], set[str]]
    _batch_ids: dict[tuple[str, int], tuple[str, ...]]

    def _send(
        self, key: str, entry: dict[bytes, bytes], files: list[GrantFile] | None = None
    ) -> None:
        raise NotImplementedError

    # -- workers ----------------------------------------------------------------------
    def _mismatch(self, data: dict[str, Any], info: EngineInfo | None) -> tuple[str, str] | None:
        """Why this worker cannot serve this bot, or None: (a few words safe to show any
        member, the details for the operator's log and /healthz)."""
        other = self._other_models(data)
        if other is not None:
            return "another model", other
        if info is None:
            return "an older release", "this worker sent no engine info (an older release?)"
        needed = SAFETY_REQUIRED.get(self.safety_checker, 2)
        if SAFETY_RANK.get(info.safety_checker, 0) < needed:
            return "its safety checker is off", (
                f"the bot has SAFETY_CHECKER={self.safety_checker}; this worker's safety "
                f"checker is {info.safety_checker!r}"
            )
        batching = data.get("batching")
        if self.batching and batching and batching != self.batching:
            detail = f"the bot has BATCHING={self.batching}; this worker has BATCHING={batching}"
            return "another batching mode", detail
        if self.resolution and info.resolution != self.resolution:
            return "another resolution", (
                f"the bot has RESOLUTION={self.resolution}; this worker works at {info.resolution}"
            )
        for other in self._workers.values():  # one fleet: every worker batches alike
            ref = other.info
            if ref is not None and (ref.resolution, bool(ref.step_slots)) != (
                info.resolution,
                bool(info.step_slots),
            ):
                return "not like the other workers", (
                    f"worker {other.id} works at {ref.resolution} "
                    f"({'step' if ref.step_slots else 'call'} batching); this worker at "
                    f"{info.resolution} ({'step' if info.step_slots else 'call'} batching)"
                )
            break
        return None

    def _other_models(self, data: dict[str, Any]) -> str | None:
        """Why the worker's models are not the bot's (for the log), or None: it serves at
        least one model of the bot's catalogue, from the same source. A worker of an older
        release names only its one model's source."""
        served = data.get("models")
        if served is None:
            model = str(data.get("model") or "")
            if model.rstrip("/") != self.model_id.rstrip("/"):
                return f"the bot uses MODEL_ID {self.model_id!r}; this worker loaded {model!r}"
            return None
        known = [str(m) for m in served if m in self.catalogue_models]
        if not known:
            return (
                f"this worker serves {', '.join(map(str, served)) or 'no model'}; none is in the "
                f"bot's catalogue ({', '.join(self.catalogue_models)})"
            )
        sources = data.get("sources") or {}
        for name in known:
            source, ours = str(sources.get(name) or ""), self.catalogue_models[name]
            if source and source.rstrip("/") != ours.rstrip("/"):
                return f"the bot's model {name!r} is {ours!r}; this worker loads {source!r}"
        return None

    def _register(self, data: dict[str, Any]) -> None:
        wid, nonce = str(data.get("id") or ""), str(data.get("nonce") or "")
        if not wid or (wid, nonce) in self._refused:
            return
        w = self._workers.get(wid)
        if w is not None and w.nonce != nonce:
            self._drop(w, "it restarted (a new process under the same id)", restarted=True)
            w = None
        if w is not None:
            w.last_seen = time.monotonic()
            self._apply_status(w, data)
            return
        if data.get("loading"):
            return  # it says hello once its model is loaded
        info = codec.decode_info(data["info"]) if data.get("info") else None
        mismatch = self._mismatch(data, info)
        if mismatch is not None:
            reason = mismatch[1]
            self._refused.add((wid, nonce))
            self.refusals[wid] = mismatch
            while len(self.refusals) > REFUSALS_KEPT:
                self.refusals.popitem(last=False)
            log.warning("refusing worker %s: %s", wid, reason)
            refusal = {b"t": b"refused", b"p": nonce.encode(), b"reason": reason.encode()}
            self._send(self.keys.grants(wid), refusal)
            return
        self.refusals.pop(wid, None)
        w = Remote(wid, str(data.get("model")), info, int(data.get("max_batch") or 1), 0, 0)
        w.nonce, w.host = nonce, str(data.get("host") or "")
        w.rank = next(self._ranks)
        self._apply_status(w, data)
        self._workers[wid] = w
        w.watcher = self._slots_changed
        self._slots_changed(w)
        if info is not None:
            self._info = info
        log.info(
            "worker %s online (host %s, %d slots); %d worker(s) online",
            wid, w.host or "?", w.max_batch, len(self._workers),
        )  # fmt: skip
        self._events.put_nowait(BatchDone(()))  # wakes dispatch; statuses show the change

    def _slots_changed(self, w: Remote) -> None:
        """Keep `_takers`, the workers online with a free slot, in step with `w`."""
        if w.slots > 0 and self._workers.get(w.id) is w:
            self._takers[w.id] = w
        else:
            self._takers.pop(w.id, None)

    def _by_rank(self) -> list[Remote]:
        """The workers with a free slot, in the order they came online."""
        return sorted(self._takers.values(), key=lambda w: w.rank)

    def _apply_status(self, w: Remote, data: dict[str, Any]) -> None:
        """Free slots, grants seen and jobs held, as the worker said them at one moment;
        an older status (a heartbeat read after a newer ask) changes nothing."""
        version = int(data.get("v") or 0)
        if version and version <= w.version:
            return
        w.version = version
        w.free = int(data.get("free") or 0)
        w.loading = bool(data.get("loading"))
        if "models" in data:  # a heartbeat (an ask carries only slots)
            w.models = tuple(str(m) for m in data["models"] or ())
            w.resident = tuple(str(m) for m in data.get("resident") or ())
        if data.get("epoch") == self.epoch:
            seen = int(data.get("seen") or 0)
            self._ack(w, seen)
            w.seen = max(w.seen, seen)
        held = data.get("held")
        if held is not None:
            w.held = frozenset((str(j), int(a)) for j, a in held)
            for job_id, attempt in w.held:
                g = self._jobs.get(job_id)
                if g is not None and g.adopting and self._holds(g, w.id, w.nonce, attempt):
                    self._adopted(g, job_id)

    def _adopted(self, g: Grant, job_id: str) -> None:
        g.adopting = False
        log.info("job %s attempt %d still runs on worker %s: adopted", job_id, g.attempt, g.worker)

    def _drop(
        self, w: Remote, reason: str, *, graceful: bool = False, restarted: bool = False
    ) -> None:
        """The worker process is gone: its jobs run again elsewhere (or fail after their
        last attempt); its grants not taken yet are deleted so it never runs them late,
        and so are its other keys (unless the same id already runs again)."""
        self._workers.pop(w.id, None)
        w.watcher = None
        self._takers.pop(w.id, None)
        self._drained.discard(w.id)
        retry, fail = [], []
        for job_id, g in list(self._jobs.items()):
            if g.worker != w.id or g.nonce != w.nonce or g.final:
                continue
            del self._jobs[job_id]
            spent = g.started and self._starts.get(job_id, 0) >= self.max_attempts
            (fail if spent else retry).append(job_id)
        for key in [k for k in self._batches if k[0] == w.id]:
            self._batches.pop(key, None)
            self._batch_ids.pop(key, None)
        self._seq.pop(w.id, None)
        self._outbox.put_nowait(("del", self.keys.grants(w.id), {}, []))
        if not restarted:  # a new process under this id writes there now
            self._last_ids.pop(w.id, None)
            self._outbox.put_nowait(("del", self.keys.events(w.id), {}, []))
            self._outbox.put_nowait(("srem", self.keys.workers, {}, [w.id]))
        log.log(
            logging.INFO if graceful else logging.ERROR,
            "worker %s is gone (%s): jobs %s wait again, %s failed after %d attempts; "
            "%d worker(s) online",
            w.id, reason, retry or "none", fail or "none", self.max_attempts, len(self._workers),
        )  # fmt: skip
        if retry or fail:
            self._events.put_nowait(WorkerDied(None, tuple(fail), tuple(retry)))
        else:
            self._events.put_nowait(BatchDone(()))

    async def _watch_loop(self) -> None:
        """Every third of a TTL: read the heartbeats of the workers in the workers set (a
        bot started after them missed their hello), drop those whose key expired or that
        went silent, and after one period give back jobs no live worker adopted."""
        down = False
        while not self._closing:
            await asyncio.sleep(self.heartbeat_s / 3)
            try:
                assert self._r is not None
                await self.lock.refresh(self._r)
                members = sorted(m.decode() for m in await self._r.smembers(self.keys.workers))
                keys = [self.keys.heartbeat(m) for m in members]
                values = await self._r.mget(keys) if keys else []
            except (RedisError, OSError):
                down = True
                continue
            now = time.monotonic()
            if down:  # the keys may be gone with a restarted server: give them a TTL
                down = False
                for w in self._workers.values():
                    w.last_seen = now
            beats: dict[str, dict[str, Any]] = {}
            for wid, raw in zip(members, values, strict=True):
                data = codec.loads(raw) if raw else None
                if data and data.get("id"):
                    beats[str(data["id"])] = data
                elif wid not in self._workers:  # gone before this bot knew it
                    self._outbox.put_nowait(("srem", self.keys.workers, {}, [wid]))
            for wid, data in beats.items():
                w = self._workers.get(wid)
                if w is None or w.nonce != data.get("nonce"):
                    self._register(data)
                    continue
                w.last_seen = now
                self._apply_status(w, data)
            for w in list(self._workers.values()):
                if w.id not in beats and now - w.last_seen > self.heartbeat_s:
                    self._drop(w, f"no heartbeat for {self.heartbeat_s:g} s")
                elif w.loading:
                    w.last_event = now  # loading a model says nothing for a while
                elif self._holds_jobs(w) and now - w.last_event > self.silence_s:
                    self._drop(w, f"no event for {self.silence_s:g} s while running jobs")
            if (
                self._adopt_until is not None
                and now >= self._adopt_until
                and self._drained >= set(self._workers)  # results sent meanwhile are read
            ):
                self._give_back_unadopted()

    def _give_back_unadopted(self) -> None:
        """One heartbeat period after start (and once the events every worker online sent
        meanwhile were read): a job that was running when the last bot stopped and that no
        live worker lists or answered waits again (its next grant is the next attempt, so
        a late answer of the old one is recognised)."""
        self._adopt_until = None
        back = [j for j, g in self._jobs.items() if g.adopting]
        for job_id in back:
            del self._jobs[job_id]
        if back:
            log.warning("jobs %s were running before the restart and no worker has them", back)
            self._events.put_nowait(WorkerDied(None, (), tuple(back)))

    def _holds_jobs(self, w: Remote) -> bool:
        return any(g.worker == w.id and not g.final for g in self._jobs.values())

    def _ack(self, w: Remote, seen: int) -> None:
        for seq in [s for s in w.unacked if s <= seen]:
            w.pending -= w.unacked.pop(seq)[2]

    @staticmethod
    def _holds(g: Grant, wid: str, nonce: str, attempt: int) -> bool:
        return g.worker == wid and g.nonce == nonce and g.attempt == attempt and not g.final
