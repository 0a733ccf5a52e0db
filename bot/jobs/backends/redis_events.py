"""The event half of `RedisBackend`'s worker side: what a worker's events mean for the jobs
granted to it.

A mixin, split from `bot.jobs.backends.redis_members` (membership). An event names (job,
attempt) and carries its process's nonce; it is used only if that process holds that
attempt now. A final event (finished, failed, cancelled) leaves the job listed as running
until the job service has handled it, so nothing can put the job back meanwhile; a result
that cannot be written (a full disk) becomes a plain `Failed`, refunded, never a job left
running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from bot.jobs.backends.redis_members import Grant, Members, Remote
from bot.store.files import write_file
from pipeline import stream_codec as codec
from pipeline.request import structure_map_path
from pipeline.worker_protocol import (
    BatchDone,
    Cancelled,
    Failed,
    Finished,
    ModelLoaded,
    ModelLoading,
    Progress,
    Started,
    WorkerDied,
    WorkerEvent,
)

log = logging.getLogger(__name__)

WRITE_FAILED_MESSAGE = (
    "The picture was made but could not be saved on our side. "
    "It did not count against your quota; please try again."
)


class Events(Members):
    """Mixin of `RedisBackend`: worker events in, `WorkerEvent`s for the job service out."""

    def _current(self, wid: str, nonce: str, job_id: str, attempt: int) -> Grant | None:
        """The grant this event answers, if that process holds that attempt now."""
        g = self._jobs.get(job_id)
        if g is None or not self._holds(g, wid, nonce, attempt):
            return None
        if g.adopting:  # its holder answers: it still runs it
            self._adopted(g, job_id)
        return g

    async def _on_event(self, wid: str, entry: codec.Fields) -> None:
        kind, nonce = codec.text(entry, "t"), codec.text(entry, "p")
        w = self._workers.get(wid)
        if w is not None and w.nonce != nonce:
            w = None  # an earlier (or not yet registered) process under this id
        if w is not None:
            w.last_seen = w.last_event = time.monotonic()
        if kind == "ask":
            if w is not None:
                self._on_ask(w, entry)
        elif kind in ("started", "progress"):
            pairs = codec.loads(entry.get(b"jobs")) or []
            live = tuple(str(j) for j, a in pairs if self._current(wid, nonce, str(j), int(a)))
            if not live:
                return
            if kind == "started":
                for job_id in live:
                    self._jobs[job_id].started = True
                    self._starts[job_id] = self._starts.get(job_id, 0) + 1
                self._events.put_nowait(Started(live))
            else:
                step, total = codec.number(entry, "step"), codec.number(entry, "total")
                previews = codec.previews_of(entry, live)
                self._events.put_nowait(Progress(live, step, total, previews))
        elif kind in ("model_loading", "model_loaded"):
            if w is not None:
                self._on_model_event(w, wid, nonce, kind, entry)
        elif kind in ("finished", "failed", "cancelled", "released"):
            batch_done = await self._on_final(wid, nonce, kind, entry)
            if w is not None and b"free" in entry:  # the slot it freed, said in the same event
                self._on_ask(w, entry, wake=not batch_done)  # its BatchDone wakes dispatch
        elif kind == "bye":
            if w is not None:
                self._drop(w, "it stopped", graceful=True)
        else:
            log.warning("ignoring unknown event %r from worker %s", kind, wid)

    def _on_ask(self, w: Remote, entry: codec.Fields, *, wake: bool = True) -> None:
        """The worker's free slots and grants seen, as it said them at one moment; unless
        `wake` is False (an event queued just before wakes it), dispatch looks at them."""
        status = {k: codec.text(entry, k) for k in ("v", "free", "seen")}
        self._apply_status(w, {**status, "epoch": codec.text(entry, "e")})
        if wake:
            self._events.put_nowait(BatchDone(()))  # a slot may be free: dispatch

    def _on_model_event(
        self, w: Remote, wid: str, nonce: str, kind: str, entry: codec.Fields
    ) -> None:
        """A worker swaps a model in: `ModelLoading` (its jobs this bot still gave it) or
        `ModelLoaded` (what it holds now, kept on `Remote.resident` for routing)."""
        model = codec.text(entry, "model")
        if kind == "model_loading":
            pairs = codec.loads(entry.get(b"jobs")) or []
            live = tuple(str(j) for j, a in pairs if self._current(wid, nonce, str(j), int(a)))
            self.on_model_loading(w, ModelLoading(model, live))
        else:
            w.resident = tuple(str(m) for m in codec.loads(entry.get(b"resident")) or ())
            self.on_model_loaded(w, ModelLoaded(model, w.resident))

    def on_model_loading(self, worker: Remote, event: ModelLoading) -> None:
        """Hook: `worker` started loading `event.model` for `event.job_ids` (their status
        can say "loading model X"). Nothing by default."""

    def on_model_loaded(self, worker: Remote, event: ModelLoaded) -> None:
        """Hook: a load on `worker` ended; `event.resident` is what it holds now (already
        on `worker.resident`). Nothing by default."""

    async def _on_final(self, wid: str, nonce: str, kind: str, entry: codec.Fields) -> bool:
        """Queue the job's final event; True if its batch's `BatchDone` followed it."""
        job_id, attempt = codec.text(entry, "job"), codec.number(entry, "a")
        g = self._current(wid, nonce, job_id, attempt)
        if g is None:
            self.discarded += 1
            log.info(
                "discarded a late %s of job %s attempt %d from worker %s: no longer its job",
                kind, job_id, attempt, wid,
            )  # fmt: skip
            return False
        event: WorkerEvent
        if kind == "finished":
            event = await self._result(wid, job_id, g, entry)
        elif kind == "failed":
            retry = codec.text(entry, "retry") == "1"  # a shared call failed: not its fault
            event = Failed(job_id, codec.text(entry, "message"), retry=retry)
        elif kind == "cancelled":
            event = Cancelled(job_id)
        else:  # released: the worker stopped; the job runs again, the try not counted
            del self._jobs[job_id]
            if g.started:
                self._starts[job_id] = max(0, self._starts.get(job_id, 1) - 1)
            event = WorkerDied(None, (), (job_id,))
        if job_id in self._jobs:  # kept until the service handled its final event
            g.final = True
        self._events.put_nowait(event)
        key = (wid, g.seq)
        left = self._batches.get(key)
        if left is not None:
            left.discard(job_id)
            if not left:
                del self._batches[key]
                self._events.put_nowait(BatchDone(self._batch_ids.pop(key, ())))
                return True
        return False

    async def _result(self, wid: str, job_id: str, g: Grant, entry: codec.Fields) -> WorkerEvent:
        """Write the PNG where the bot keeps it: `Finished`, or `Failed` (refunded) when it
        cannot be written (a full disk): the job ends either way and nothing is lost."""
        try:
            result = codec.decode_result(entry[b"result"])
            png = entry.get(b"png")
            if png is not None:
                await asyncio.to_thread(write_file, g.request.output_path, png)
            thumb = entry.get(b"map")  # a structure job's map thumbnail, beside the PNG
            if thumb is not None:
                map_path = structure_map_path(g.request.output_path)
                await asyncio.to_thread(write_file, map_path, thumb)
                result = replace(result, structure_map=map_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("job %s: could not store the result of worker %s: %r", job_id, wid, exc)
            return Failed(job_id, WRITE_FAILED_MESSAGE)
        self.ran_by[job_id] = wid
        while len(self.ran_by) > 1000:
            self.ran_by.popitem(last=False)
        log.info(
            "job %s attempt %d made by worker %s in %.1f s",
            job_id, g.attempt, wid, result.seconds,
        )  # fmt: skip
        return Finished(replace(result, output_path=g.request.output_path))

    def _handing(self, event: WorkerEvent) -> None:
        """Note a final event on its way to the job service (see `_forget_handled`)."""
        if isinstance(event, (Finished, Failed, Cancelled)):
            g = self._jobs.get(event.job_id)
            if g is not None and g.final:
                self._handed.append(event.job_id)

    def _forget_handled(self) -> None:
        """The job service asks for an event only once it handled the one before: the jobs
        whose final events it was handed are over, so every per-job map lets them go."""
        if not self._handed:
            return
        done = [j for j in self._handed if j in self._jobs and self._jobs[j].final]
        self._handed.clear()
        for job_id in done:
            del self._jobs[job_id]
            self._attempts.pop(job_id, None)
            self._starts.pop(job_id, None)
        if done and self._ledger is not None:
            self._outbox.put_nowait(("forget", "", {}, done))
