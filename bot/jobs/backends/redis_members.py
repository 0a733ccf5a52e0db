"""The membership and event half of `RedisBackend`: which workers are online, and what
their events mean for the jobs granted to them.

A mixin, split from `bot.jobs.backends.redis` (connection, grants, the reader and the writer).
Rules kept here: an event is used only if its worker holds that (job, attempt) now; a
worker whose heartbeat expires or that goes silent with jobs is dropped and its jobs come
back as a `WorkerDied` (`unstarted`: run again; `job_ids`: started `max_attempts` times,
failed); a worker with another model is refused.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bot.store.files import write_file
from pipeline import stream_codec as codec
from pipeline.request import EngineInfo, GenerationRequest
from pipeline.worker_protocol import (
    BatchDone,
    Cancelled,
    Failed,
    Finished,
    Progress,
    Started,
    WorkerDied,
    WorkerEvent,
)

log = logging.getLogger(__name__)


@dataclass
class Remote:
    """A worker online, as the bot sees it."""

    id: str
    model: str
    info: EngineInfo | None
    max_batch: int
    free: int  # what it last said it takes, after `seen` grants
    seen: int
    host: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    last_event: float = field(default_factory=time.monotonic)
    unacked: dict[int, tuple[dict[bytes, bytes], list[tuple[bytes, str]], int]] = field(
        default_factory=dict
    )

    @property
    def slots(self) -> int:
        return max(0, self.free - sum(n for _, _, n in self.unacked.values()))


@dataclass
class Grant:
    worker: str
    attempt: int
    request: GenerationRequest
    seq: int
    started: bool = False


class Members:
    """Mixin of `RedisBackend`: worker membership and worker events."""

    model_id: str
    heartbeat_s: float
    silence_s: float
    max_attempts: int
    keys: codec.Keys
    epoch: str
    discarded: int
    _closing: bool
    ran_by: collections.OrderedDict[str, str]
    _r: aioredis.Redis | None
    _info: EngineInfo | None
    _events: asyncio.Queue[WorkerEvent]
    _outbox: asyncio.Queue[tuple[str, str, dict[bytes, bytes], list[Any]]]
    _workers: dict[str, Remote]
    _refused: set[str]
    _jobs: dict[str, Grant]
    _starts: dict[str, int]
    _batches: dict[tuple[str, int], set[str]]
    _batch_ids: dict[tuple[str, int], tuple[str, ...]]

    def _send(
        self, key: str, entry: dict[bytes, bytes], files: list[tuple[bytes, str]] | None = None
    ) -> None:
        raise NotImplementedError

    # -- workers ----------------------------------------------------------------------
    def _register(self, data: dict[str, Any]) -> None:
        wid, model = str(data.get("id") or ""), str(data.get("model") or "")
        if not wid or wid in self._refused:
            return
        if model.rstrip("/") != self.model_id.rstrip("/"):
            self._refused.add(wid)
            reason = f"the bot uses MODEL_ID {self.model_id!r}; this worker loaded {model!r}"
            log.warning("refusing worker %s: %s", wid, reason)
            self._send(self.keys.grants(wid), {b"t": b"refused", b"reason": reason.encode()})
            return
        w = self._workers.get(wid)
        if w is not None:
            w.last_seen = time.monotonic()
            return
        info = codec.decode_info(data["info"]) if data.get("info") else None
        seen = int(data.get("seen") or 0) if data.get("epoch") == self.epoch else 0
        w = Remote(
            wid, model, info, int(data.get("max_batch") or 1), int(data.get("free") or 0), seen
        )
        w.host = str(data.get("host") or "")
        self._workers[wid] = w
        if info is not None:
            self._info = info
        log.info(
            "worker %s online (host %s, %d slots); %d worker(s) online",
            wid, w.host or "?", w.max_batch, len(self._workers),
        )  # fmt: skip
        self._events.put_nowait(BatchDone(()))  # wakes dispatch; statuses show the change

    def _drop(self, w: Remote, reason: str, *, graceful: bool = False) -> None:
        """The worker is gone: its jobs run again elsewhere (or fail after their last
        attempt); its grants not taken yet are deleted so it never runs them late."""
        self._workers.pop(w.id, None)
        retry, fail = [], []
        for job_id, g in list(self._jobs.items()):
            if g.worker != w.id:
                continue
            del self._jobs[job_id]
            spent = g.started and self._starts.get(job_id, 0) >= self.max_attempts
            (fail if spent else retry).append(job_id)
        for key in [k for k in self._batches if k[0] == w.id]:
            self._batches.pop(key, None)
            self._batch_ids.pop(key, None)
        self._outbox.put_nowait(("del", self.keys.grants(w.id), {}, []))
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
        """Every third of a TTL: find workers by their heartbeat keys (a bot started after
        them missed their hello) and drop those whose key expired or that went silent."""
        down = False
        while not self._closing:
            await asyncio.sleep(self.heartbeat_s / 3)
            try:
                assert self._r is not None
                found = [k async for k in self._r.scan_iter(self.keys.heartbeat_pattern)]
                values = await self._r.mget(found) if found else []
            except (RedisError, OSError):
                down = True
                continue
            now = time.monotonic()
            if down:  # the keys may be gone with a restarted server: give them a TTL
                down = False
                for w in self._workers.values():
                    w.last_seen = now
            beats: dict[str, dict[str, Any]] = {}
            for raw in values:
                data = codec.loads(raw) if raw else None
                if data and data.get("id"):
                    beats[str(data["id"])] = data
            for wid, data in beats.items():
                w = self._workers.get(wid)
                if w is None:
                    self._register(data)
                    continue
                w.last_seen = now
                if data.get("epoch") == self.epoch:
                    self._ack(w, int(data.get("seen") or 0))
            for w in list(self._workers.values()):
                if w.id not in beats and now - w.last_seen > self.heartbeat_s:
                    self._drop(w, f"no heartbeat for {self.heartbeat_s:g} s")
                elif self._holds_jobs(w) and now - w.last_event > self.silence_s:
                    self._drop(w, f"no event for {self.silence_s:g} s while running jobs")

    def _holds_jobs(self, w: Remote) -> bool:
        return any(g.worker == w.id for g in self._jobs.values())

    def _ack(self, w: Remote, seen: int) -> None:
        for seq in [s for s in w.unacked if s <= seen]:
            del w.unacked[seq]

    # -- events -----------------------------------------------------------------------
    def _current(self, wid: str, job_id: str, attempt: int) -> Grant | None:
        g = self._jobs.get(job_id)
        return g if g is not None and g.worker == wid and g.attempt == attempt else None

    async def _on_event(self, wid: str, entry: codec.Fields) -> None:
        kind = codec.text(entry, "t")
        w = self._workers.get(wid)
        if w is not None:
            w.last_seen = w.last_event = time.monotonic()
        if kind == "ask":
            if w is not None:
                if codec.text(entry, "e") == self.epoch:
                    self._ack(w, codec.number(entry, "seen"))
                    w.seen = max(w.seen, codec.number(entry, "seen"))
                w.free = codec.number(entry, "free")
                self._events.put_nowait(BatchDone(()))  # a slot may be free: dispatch
        elif kind in ("started", "progress"):
            pairs = codec.loads(entry.get(b"jobs")) or []
            live = tuple(str(j) for j, a in pairs if self._current(wid, str(j), int(a)))
            if not live:
                return
            if kind == "started":
                for job_id in live:
                    self._jobs[job_id].started = True
                    self._starts[job_id] = self._starts.get(job_id, 0) + 1
                self._events.put_nowait(Started(live))
            else:
                step, total = codec.number(entry, "step"), codec.number(entry, "total")
                self._events.put_nowait(Progress(live, step, total))
        elif kind in ("finished", "failed", "cancelled", "released"):
            await self._on_final(wid, kind, entry)
        elif kind == "bye":
            if w is not None:
                self._drop(w, "it stopped", graceful=True)
        else:
            log.warning("ignoring unknown event %r from worker %s", kind, wid)

    async def _on_final(self, wid: str, kind: str, entry: codec.Fields) -> None:
        job_id, attempt = codec.text(entry, "job"), codec.number(entry, "a")
        g = self._current(wid, job_id, attempt)
        if g is None:
            self.discarded += 1
            log.info(
                "discarded a late %s of job %s attempt %d from worker %s: no longer its job",
                kind, job_id, attempt, wid,
            )  # fmt: skip
            return
        del self._jobs[job_id]
        if kind == "finished":
            result = codec.decode_result(entry[b"result"])
            png = entry.get(b"png")
            if png is not None:
                await asyncio.to_thread(write_file, g.request.output_path, png)
            result = replace(result, output_path=g.request.output_path)
            self.ran_by[job_id] = wid
            while len(self.ran_by) > 1000:
                self.ran_by.popitem(last=False)
            log.info(
                "job %s attempt %d made by worker %s in %.1f s",
                job_id, attempt, wid, result.seconds,
            )  # fmt: skip
            self._events.put_nowait(Finished(result))
        elif kind == "failed":
            self._events.put_nowait(Failed(job_id, codec.text(entry, "message")))
        elif kind == "cancelled":
            self._events.put_nowait(Cancelled(job_id))
        else:  # released: the worker stopped; the job runs again, the try not counted
            if g.started:
                self._starts[job_id] = max(0, self._starts.get(job_id, 1) - 1)
            self._events.put_nowait(WorkerDied(None, (), (job_id,)))
        key = (wid, g.seq)
        left = self._batches.get(key)
        if left is not None:
            left.discard(job_id)
            if not left:
                del self._batches[key]
                self._events.put_nowait(BatchDone(self._batch_ids.pop(key, ())))
