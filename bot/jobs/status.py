"""Throttled status edits: queue places and progress bars, at most one edit per interval.

Discord rate-limits edits of one message, and a busy queue changes every waiting job's
place at once, so edits are coalesced: only the newest text for a job is sent, and a job's
message is edited at most once every `interval` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Sender = Callable[[int, str, bool], Awaitable[None]]


@dataclass
class _Entry:
    text: str | None = None
    cancellable: bool = True
    sent_text: str | None = None
    last_sent: float | None = None


class StatusBoard:
    """Holds the newest status text per job and flushes it in the background."""

    def __init__(
        self,
        send: Sender,
        interval: float,
        tick: float = 0.25,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._interval = interval
        self._tick = tick
        self._clock = clock
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
        entry = self._entries.setdefault(job_id, _Entry())
        entry.text, entry.cancellable = text, cancellable

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
            self.flush_due()

    def flush_due(self) -> list[asyncio.Task[None]]:
        """Start the edits due now: the newest unsent text of each job whose last edit is
        at least `interval` old. Called every tick; returns the started edits."""
        now = self._clock()
        started: list[asyncio.Task[None]] = []
        for job_id, entry in list(self._entries.items()):
            if entry.text is None or entry.text == entry.sent_text:
                continue
            if entry.last_sent is not None and now - entry.last_sent < self._interval:
                continue
            text, entry.last_sent = entry.text, now
            task = asyncio.create_task(self._flush(job_id, text, entry.cancellable))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            started.append(task)
        return started

    async def _flush(self, job_id: int, text: str, cancellable: bool) -> None:
        async with self.lock(job_id):
            entry = self._entries.get(job_id)
            if entry is None:  # finished meanwhile
                return
            try:
                await self._send(job_id, text, cancellable)
                entry.sent_text = text
            except Exception:
                log.warning("status edit for job %s failed", job_id, exc_info=True)
