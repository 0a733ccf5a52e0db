"""The worker's step-batching mode: `Run`s are taken while others run (worker child side).

With iteration-level batching (`Engine.run_steps`, `pipeline.stepbatch`) the worker does
not run one batch at a time: jobs of every `Run` that arrives join the running set at the
next step boundary while a slot is free, and each job leaves when it is done. Events are
per job (`Started` when it joins, `Progress`, exactly one final event); a `Run` gets its
`BatchDone` once all its jobs had theirs, so the client's bookkeeping stays per `Run`.
`Started` and `Progress` gathered at one step boundary go out together (one `Started` for
the jobs that joined, one `Progress` per step count), so a set of jobs costs the bot, and
a Redis stream, about as many messages as one batch of the pipeline-call path.

An error stops only what it touched: one job's own work (its encode, decode, safety check,
PNG) fails that job; a failed UNet call sends its set's jobs back as `Failed(retry=True)`
(the bot runs them again as a new attempt); an error that leaves the state unknowable (a
broken device, or one escaping the loop) sends back every job the loop held.

A job the bot recalls (`Recall`: a fairer job should take its place) before it joined is
handed back as `Recalled`, and its Run's `BatchDone` leaves it out; one that joined runs on.

A `Run` with an inpaint job keeps the pipeline-call path: the worker stops taking new
`Run`s, lets the running set drain, runs that batch alone, then goes on in order.
Imports no torch itself (the engine does).
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING, Any

from pipeline.request import GenerationRequest, GenerationResult
from pipeline.worker_protocol import (
    BatchDone,
    Cancelled,
    Failed,
    Finished,
    Progress,
    Recalled,
    Run,
    Started,
)

if TYPE_CHECKING:
    from pipeline.worker_child import _Worker

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 1.0
"""Per job (and per call on the call path): at most one Progress a second, its first and
last step always sent. The bot edits a status at most every PROGRESS_INTERVAL_S (2 s by
default) and only at a few run stages, so more would be events it reads and drops: over
Valkey each one is a stream entry the bot parses (the fleet benchmark's jobs sent six
events each at 0.2 s, four now). A live preview still goes out at its own boundary."""


def step_run(run: Run, engine: Any = None) -> bool:
    """Whether a Run can go through the step loop: plain img2img jobs only, each of a model
    with a step path (`ModelPool.steps_for`; an engine without it serves one model)."""
    steps_for = getattr(engine, "steps_for", None)
    return all(
        getattr(r, "mode", "img2img") == "img2img" and (steps_for is None or steps_for(r))
        for r in run.batch
    )


class StepServer:
    """Serves Runs through `engine.run_steps` until nothing is left to run."""

    def __init__(self, worker: _Worker, engine: Any, max_batch: int) -> None:
        self.worker = worker
        self.engine = engine
        self.max_batch = max_batch
        self.run_of: dict[str, tuple[str, ...]] = {}  # job → the job ids of its Run
        self.open: dict[tuple[str, ...], set[str]] = {}  # Run → jobs without a final event
        self.last_progress: dict[str, float] = {}
        self.deferred: list[Run] = []  # Runs for the pipeline-call path, in order
        self.joined: list[str] = []  # Started, not sent yet
        self.stepped: dict[tuple[int, int], list[str]] = {}  # (step, total) → jobs, not sent
        self.at: dict[str, tuple[int, int]] = {}  # job → its newest (step, total)
        self.previews: dict[str, bytes] = {}  # job → its newest preview, not sent
        self.began: set[str] = set()  # jobs that joined a running set
        self.returned: set[str] = set()  # jobs handed back by a recall

    def serve(self, first: Run) -> list[Run]:
        """Run `first` and every step Run that arrives meanwhile; return the Runs that need
        the pipeline-call path (to run next, in order) and stop taking Runs once one came."""
        from pipeline.stepbatch import StepHooks

        hooks = StepHooks(
            on_finished=self._finished,
            on_failed=lambda job_id, message: self._final(Failed(job_id, message)),
            on_cancelled=lambda job_id: self._final(Cancelled(job_id)),
            on_started=self._started,
            on_progress=self._progress,
            is_cancelled=self._leaves,
            on_step_end=self._flush,
            on_job_error=self._job_error,
            on_set_error=self._set_error,
            on_preview=self._preview,
        )
        try:
            self.engine.run_steps(
                self._take(first), hooks, max_batch=self.max_batch, more=self._more
            )
        except self.worker.job_cancelled:  # an engine may stop a whole set this way
            self._end_all(None)
        except Exception as exc:  # the loop's state is unknowable: its jobs run again
            log.exception("step batch %s failed", ", ".join(self.run_of))
            self._end_all(self.worker._failure_message(exc), retry=True)
        from pipeline.worker_child import NO_IMAGE_MESSAGE

        self._flush()
        self._end_all(NO_IMAGE_MESSAGE)  # a job the engine dropped without a word
        return self.deferred

    # -- Runs in --------------------------------------------------------------------------
    def _take(self, run: Run) -> list[GenerationRequest]:
        if not step_run(run, self.engine):
            self.deferred.append(run)
            return []
        job_ids = tuple(r.job_id for r in run.batch)
        self.open[job_ids] = set(job_ids)
        for job_id in job_ids:
            self.run_of[job_id] = job_ids
        return list(run.batch)

    def _more(self) -> list[GenerationRequest]:
        """Runs that arrived since the last step (none once a call-path Run waits, so the
        set drains and the order of Runs is kept)."""
        taken: list[GenerationRequest] = []
        while not self.deferred and not self.worker.stopping.is_set():
            try:
                command = self.worker.commands.get_nowait()
            except queue.Empty:
                break
            if command is None:  # stop: is_cancelled now says yes to every job
                self.worker.commands.put(None)
                break
            taken.extend(self._take(command))
        return taken

    # -- events out -----------------------------------------------------------------------
    def _leaves(self, job_id: str) -> bool:
        """Cancelled, or recalled before it joined (a recall after that is dropped)."""
        return self.worker._is_cancelled(job_id) or self._recalled(job_id)

    def _recalled(self, job_id: str) -> bool:
        if job_id in self.began:
            return False
        with self.worker.cancel_lock:
            return job_id in self.worker.recalled

    def _started(self, job_id: str) -> None:
        self.began.add(job_id)
        with self.worker.cancel_lock:
            self.worker.recalled.discard(job_id)
        self.joined.append(job_id)

    def _progress(self, job_id: str, step: int, total: int) -> None:
        self.at[job_id] = (step, total)
        now = time.monotonic()
        last = self.last_progress.get(job_id, -1.0)
        if last < 0 or step >= total or now - last >= PROGRESS_MIN_INTERVAL_S:
            self.last_progress[job_id] = now
            self.stepped.setdefault((step, total), []).append(job_id)

    def _preview(self, job_id: str, data: bytes) -> None:
        """A live preview rides in the job's next Progress (sent at this boundary even
        if that step's progress was throttled); a newer one replaces an unsent one."""
        self.previews[job_id] = data
        at = self.at.get(job_id)
        if at is not None and not any(job_id in jobs for jobs in self.stepped.values()):
            self.stepped.setdefault(at, []).append(job_id)

    def _flush(self) -> None:
        """Send the Started and Progress gathered since the last boundary, in that order."""
        if self.joined:
            self.worker._send(Started(tuple(self.joined)))
            self.joined = []
        for (step, total), job_ids in self.stepped.items():
            shown = {j: self.previews.pop(j) for j in job_ids if j in self.previews}
            self.worker._send(Progress(tuple(job_ids), step, total, shown))
        self.stepped = {}

    def _job_error(self, job_id: str, exc: BaseException) -> None:
        """An error in one job's own work fails that job only, unless it broke the device."""
        log.error("job %s failed", job_id, exc_info=exc)
        message = self.worker._failure_message(exc)
        if self.worker.device_broken:
            raise exc  # nothing on the device can be trusted: `serve` sends every job back
        self._final(Failed(job_id, message))

    def _set_error(self, job_ids: list[str], exc: BaseException) -> None:
        """A shared UNet call failed: its jobs lost their latents, through no fault of their
        own, and go back to run again (the bot fails one that comes back twice)."""
        log.error("the UNet call of jobs %s failed", ", ".join(job_ids), exc_info=exc)
        message = self.worker._failure_message(exc)
        if self.worker.device_broken:
            raise exc
        for job_id in job_ids:
            self._final(self._ended(job_id, message, retry=True))

    def _ended(self, job_id: str, message: str, *, retry: bool = False) -> Failed | Cancelled:
        if self.worker._is_cancelled(job_id):
            return Cancelled(job_id)
        return Failed(job_id, message, retry=retry)

    def _finished(self, result: GenerationResult) -> None:
        self._final(Finished(result))

    def _final(self, event: Finished | Failed | Cancelled) -> None:
        job_id = event.job_id
        run = self.run_of.pop(job_id, None)
        if run is None:
            return  # already ended
        self._flush()  # its Started and Progress go out before its end
        self.last_progress.pop(job_id, None)
        self.at.pop(job_id, None)
        self.previews.pop(job_id, None)
        out: Finished | Failed | Cancelled | Recalled = event
        recalled = self._recalled(job_id) and not self.worker._is_cancelled(job_id)
        if isinstance(event, Cancelled) and recalled:  # recalled only: it runs later
            self.returned.add(job_id)
            out = Recalled(job_id)
        self.began.discard(job_id)
        with self.worker.cancel_lock:  # a Cancel or Recall for it must not linger
            self.worker.cancelled.discard(job_id)
            self.worker.recalled.discard(job_id)
        self.worker._send(out)
        left = self.open[run]
        left.discard(job_id)
        if not left:
            del self.open[run]
            ended = tuple(j for j in run if j not in self.returned)
            self.returned.difference_update(run)
            self.worker._send(BatchDone(ended, worker_exiting=self.worker.device_broken))

    def _end_all(self, message: str | None, *, retry: bool = False) -> None:
        """Every job still owed a final event gets one: Cancelled if it was cancelled (or
        `message` is None), else Failed with `message` (to run again if `retry`)."""
        for job_id in list(self.run_of):
            if message is None:
                self._final(Cancelled(job_id))
            else:
                self._final(self._ended(job_id, message, retry=retry))
