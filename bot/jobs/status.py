"""Status edits bounded per job, whatever the queue's depth.

A bot in front of many GPUs runs out of requests before it runs out of GPUs if every completion
re-renders every waiting job's place (1,000 waiting: about 500 edits a second). So a job's
status message is edited only when there is something worth knowing:

- waiting: when its place in its server's queue first reaches a milestone
  (`PLACE_MILESTONES`: 20th, 5th, 1st), so at most `WAIT_EDITS` edits at any depth, plus one
  whenever the backend's note (e.g. "no image workers online") appears or goes; such an edit
  goes out `place_grace` (the service: the interval) after it became due, showing the newest
  place by then, so a job that starts meanwhile (a fleet serves its 20 places in well under
  a second) goes from the place it was posted with straight to its run, one request fewer;
- running: "Starting…", the first step, and half-way: at most `RUN_EDITS` edits however long
  the job runs (the bar shows the newest step each time); the first of them comes `run_grace`
  (the service: the interval) after the job was handed to a GPU, showing what is newest by
  then, so a job done sooner (SD-Turbo on a fast GPU: about a second) goes from its place
  straight to its picture, one request fewer and no "Starting…" flashing past;
- a live preview (issue 29) rides in the running job's next edit, never one of its own: the
  newest one received replaces an unsent one, and one older than `PREVIEW_MAX_AGE_S` when
  its edit goes out is dropped (never queued); a hidden one (the checker flagged it) removes
  the picture shown and says so;
- every edit at least `interval` (PROGRESS_INTERVAL_S) after the previous one of that message,
  the newest text winning, and at most one edit in flight per message: no new edit starts while
  the previous one still waits (a 429), so edits never pile up behind a job's lock.

With its acknowledgement and status message (1 request, or 3 for a slow upload: see
`bot.actions`) and its final message, a job costs at most `REQUESTS_PER_JOB` requests
(docs/operators.md). Places are read in one pass over the queue at
most once per tick (`places_changed` only marks them stale), never once per event per job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from bot.ui.render import progress_text

log = logging.getLogger(__name__)

Sender = Callable[..., Awaitable[None]]
"""(job id, text, cancellable[, preview=bytes]): `preview` only when an edit carries one."""
Places = Callable[[], Iterable[tuple[int, int, int]]]
"""Every waiting job as (job id, place in its server's queue, jobs served before it)."""
PlaceText = Callable[[int, int, str | None], str]
"""The waiting text for (place, jobs served before it, the backend's note)."""

PLACE_MILESTONES = (20, 5, 1)
"""Places worth an edit: a waiting job's message changes when it first reaches one of these."""
WAIT_EDITS = len(PLACE_MILESTONES)
RUN_EDITS = 3  # "Starting…", the first step, half-way
ACK_REQUESTS = 3  # at most: a private acknowledgement, its "queued" text, the status message
PREVIEW_MAX_AGE_S = 10.0
"""A live preview not sent within this long of its arrival is dropped: a stale picture of a
job that moved on is worth less than the request it costs."""
PREVIEW_HIDDEN = b""
"""The preview bytes of a preview the safety checker flagged (`pipeline.previews.HIDDEN`)."""
PREVIEW_HIDDEN_TEXT = "🙈 Preview hidden by the safety filter."
REQUESTS_PER_JOB = ACK_REQUESTS + WAIT_EDITS + RUN_EDITS + 1
"""Acknowledgement + status message, the edits above, the result: 10 (without a gallery)."""


def milestone_reached(shown: int, place: int) -> bool:
    """The place moved from `shown` to a milestone or past it (e.g. 23rd → 20th or 4th)."""
    return any(place <= m < shown for m in PLACE_MILESTONES)


def run_stage(step: int, total: int) -> int:
    """0: starting, 1: a step done, 2: half-way or more."""
    if step <= 0:
        return 0
    return 2 if 2 * step >= max(1, total) else 1


@dataclass
class _Entry:
    text: str | None = None
    cancellable: bool = True
    sent_text: str | None = None
    last_sent: float | None = None
    inflight: bool = False
    place: int | None = None  # the place its message shows while waiting; None: running
    note: str | None = None  # the backend's note its message shows
    stage: int = -1  # the run stage its text shows; -1 while waiting
    run_from: float | None = None  # when it was handed to a GPU; None while waiting
    due_from: float | None = None  # when its pending waiting text became due
    edits: int = 0  # edits sent (for tests and the fleet bench)
    preview: bytes | None = None  # the newest live preview not sent yet
    preview_at: float = 0.0  # when it arrived
    previews_sent: int = 0  # edits that carried a preview (for tests)


class StatusBoard:
    """Holds the newest status text per job and flushes it in the background."""

    def __init__(
        self,
        send: Sender,
        interval: float,
        tick: float = 0.25,
        *,
        clock: Callable[[], float] = time.monotonic,
        places: Places | None = None,
        place_text: PlaceText | None = None,
        note: Callable[[], str | None] = lambda: None,
        job_note: Callable[[int], str | None] | None = None,
        run_grace: float = 0.0,
        place_grace: float = 0.0,
    ) -> None:
        self._send = send
        self._interval = interval
        self._run_grace = run_grace
        self._place_grace = place_grace
        self._tick = tick
        self._clock = clock
        self._places = places
        self._place_text = place_text
        self._note = note
        self._job_note = job_note
        """A waiting job's own note where the backend has none (no GPU serves its model)."""
        self._places_stale = False
        self._entries: dict[int, _Entry] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="status-board")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def set(self, job_id: int, text: str, *, cancellable: bool = True) -> None:
        """Show `text` at the next allowed edit (e.g. "Starting…": run stage 0)."""
        entry = self._entries.setdefault(job_id, _Entry())
        if entry.stage < 0:  # it starts now (again, if it was put back in the queue)
            entry.run_from = self._clock()
        entry.text, entry.cancellable = text, cancellable
        entry.place, entry.stage = None, max(entry.stage, 0)

    def progress(self, job_id: int, step: int, total: int, preview: bytes | None = None) -> None:
        """A running job reached `step`: its bar is edited at a new run stage only, and a
        text still waiting for its edit is refreshed to the newest step (no extra edit).
        A live `preview` waits for the job's next edit, replacing an unsent one."""
        entry = self._entries.setdefault(job_id, _Entry())
        if preview is not None:
            entry.preview, entry.preview_at = preview, self._clock()
        stage = run_stage(step, total)
        if stage > entry.stage or (entry.text != entry.sent_text and entry.place is None):
            entry.stage = max(entry.stage, stage)
            entry.place = None
            entry.text = progress_text(step, total)

    def places_changed(self) -> None:
        """Queue places moved; they are read once, at the next flush."""
        self._places_stale = True

    def edits(self, job_id: int) -> int:
        entry = self._entries.get(job_id)
        return entry.edits if entry else 0

    def previews_sent(self, job_id: int) -> int:
        entry = self._entries.get(job_id)
        return entry.previews_sent if entry else 0

    def lock(self, job_id: int) -> asyncio.Lock:
        """Held while editing a job's message, so a final edit never races a status edit."""
        return self._locks.setdefault(job_id, asyncio.Lock())

    def forget(self, job_id: int) -> None:
        """Stop showing status for a job (it ended); its final message comes next."""
        self._entries.pop(job_id, None)

    def release(self, job_id: int) -> None:
        """The final message is out: nothing will edit this job's message again."""
        self._entries.pop(job_id, None)
        self._locks.pop(job_id, None)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                self.flush_due()
            except Exception:
                log.exception("status board tick failed")

    def _refresh_places(self) -> None:
        """One pass over the waiting jobs: a job's text changes only at a milestone, when the
        note changed, or while an edit of it is still pending (then at no extra cost)."""
        self._places_stale = False
        if self._places is None or self._place_text is None:
            return
        common = self._note()
        now = self._clock()
        for job_id, place, before in self._places():
            note = common or (self._job_note(job_id) if self._job_note else None)
            entry = self._entries.get(job_id)
            if entry is None:  # its status message was just posted showing this place
                self._entries[job_id] = entry = _Entry(place=place)
            if not (
                entry.place is None  # it ran and waits again
                or milestone_reached(entry.place, place)
                or entry.note != note
                or (entry.text is not None and entry.text != entry.sent_text)
            ):
                continue
            if entry.text is None or entry.text == entry.sent_text:  # newly due
                entry.due_from = now
            entry.place, entry.note, entry.stage, entry.run_from = place, note, -1, None
            entry.text = self._place_text(place, before, note)

    def flush_due(self) -> list[asyncio.Task[None]]:
        """Start the edits due now: the newest unsent text of each job whose last edit is
        at least `interval` old and has no edit in flight. Called every tick; returns the
        started edits."""
        if self._places_stale:
            self._refresh_places()
        now = self._clock()
        started: list[asyncio.Task[None]] = []
        for job_id, entry in self._entries.items():
            if entry.text is None or entry.text == entry.sent_text or entry.inflight:
                continue
            if entry.last_sent is not None and now - entry.last_sent < self._interval:
                continue
            if entry.run_from is not None and now - entry.run_from < self._run_grace:
                continue  # a running job's first edit waits (the module docstring)
            if (
                entry.place is not None
                and entry.due_from is not None
                and now - entry.due_from < self._place_grace
            ):
                continue  # so does a waiting job's, for a job that starts meanwhile
            # The text counts as sent from now on, so a newer one is a new edit, never a
            # refresh of this one; a failed edit puts the old mark back (retried later).
            before, entry.sent_text = entry.sent_text, entry.text
            entry.last_sent, entry.inflight = now, True
            preview, entry.preview = entry.preview, None
            if preview is not None and now - entry.preview_at > PREVIEW_MAX_AGE_S:
                preview = None  # too late for this job's picture: dropped, not queued
            task = asyncio.create_task(
                self._flush(job_id, entry, entry.text, entry.cancellable, before, preview)
            )
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            started.append(task)
        return started

    async def _flush(
        self,
        job_id: int,
        entry: _Entry,
        text: str,
        cancellable: bool,
        before: str | None,
        preview: bytes | None = None,
    ) -> None:
        try:
            async with self.lock(job_id):
                if self._entries.get(job_id) is not entry:  # finished meanwhile
                    return
                entry.edits += 1
                if preview is None:
                    await self._send(job_id, text, cancellable)
                else:
                    if preview == PREVIEW_HIDDEN:
                        text = f"{text}\n{PREVIEW_HIDDEN_TEXT}"
                    entry.previews_sent += 1
                    await self._send(job_id, text, cancellable, preview=preview)
        except Exception:
            log.warning("status edit for job %s failed", job_id, exc_info=True)
            if entry.sent_text == text:
                entry.sent_text = before
        finally:
            entry.inflight = False
            entry.last_sent = self._clock()  # the interval counts from the edit's end
