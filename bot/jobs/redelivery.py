"""What a start delivers that the last stop cut off, and when the bot gives up on a result.

A mixin of `JobService` (through `bot.jobs.events.JobEvents`, which marks every final
message that reached Discord in `jobs.delivered_at`). At start, before the worker runs,
files a stop left half-written are swept, then every ended job whose final message (result,
or failed, cancelled or withheld notice) never reached Discord is delivered again, each at
most `MAX_DELIVERY_TRIES` starts (`jobs.delivery_tries`). A result that never gets through
ends `undelivered`: its quota unit is refunded and /gallery keeps its picture.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.store.db import Job, Store
from bot.store.files import sweep_partial_files

if TYPE_CHECKING:
    from bot.jobs.events import Delivery
    from config import Settings

log = logging.getLogger(__name__)

MAX_DELIVERY_TRIES = 3
"""Starts that try to deliver a final message a stop cut off before giving up on it."""
SHARED_KINDS = ("series", "compare")
"""Jobs shown on a message they share (an album, a comparison; see `KindDelivery`): that
message is re-rendered when one ends, so giving up on one leaves its state alone."""


class JobRedelivery:
    """Mixin: `_redeliver` at start, `_give_up` on a result no message can show."""

    settings: Settings
    store: Store
    delivery: Delivery

    if TYPE_CHECKING:  # provided by JobEvents

        async def _finish(self, job: Job) -> None: ...
        async def _deliver(
            self, job: Job, fn: Callable[..., Awaitable[None]], *args: object
        ) -> bool | None: ...
        def _spawn(self, coro: Awaitable[None]) -> None: ...

    async def _give_up(self, job: Job) -> None:
        """A result no message can show: the job ends `undelivered` and its quota unit is
        refunded; its picture stays in /gallery. (A job on a shared message keeps its
        state: that message shows it whenever it can be edited again.)"""
        if job.kind in SHARED_KINDS:
            return
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE jobs SET state='undelivered', counted=0 WHERE id=? AND state='done'",
                (job.id,),
            )
        log.warning("job %d ends undelivered (refunded; kept in the gallery)", job.id)

    async def _redeliver(self) -> None:
        """Final messages a stop cut off (results and notices: `delivered_at` unset) go out
        again, each at most `MAX_DELIVERY_TRIES` starts; then a result is given up on.
        Files a stop left half-written go first (see `sweep_partial_files`)."""
        await asyncio.to_thread(sweep_partial_files, self.settings.data_dir)
        cursor = await self.store.db.execute(
            "SELECT * FROM jobs WHERE delivered_at IS NULL "
            "AND state IN ('done', 'failed', 'cancelled', 'withheld') ORDER BY id"
        )
        for row in await cursor.fetchall():
            job = Job.from_row(row)
            stored = bool(job.output_path) and (self.settings.data_dir / job.output_path).is_file()
            if job.delivery_tries >= MAX_DELIVERY_TRIES or (job.state == "done" and not stored):
                if job.state == "done":
                    log.warning("job %d: giving up on its result", job.id)
                    await self._give_up(job)
                continue
            job.delivery_tries += 1
            await self.store.update_job(job.id, delivery_tries=job.delivery_tries)
            log.info(
                "job %d ended before the last stop; its %s message goes out again (try %d of %d)",
                job.id, job.state, job.delivery_tries, MAX_DELIVERY_TRIES,
            )  # fmt: skip
            self._spawn(self._redeliver_one(job))

    async def _redeliver_one(self, job: Job) -> None:
        if job.state == "done":
            await self._finish(job)
        elif job.state == "failed":
            from bot.jobs.dispatch import DISPATCH_FAILED  # (both import this module)
            from bot.jobs.events import CRASH_MESSAGE

            # `error` holds the words the user was shown, or a code for the two kept here.
            said = {"worker died": CRASH_MESSAGE, "dispatch failed": DISPATCH_FAILED}
            message = said.get(job.error or "", job.error or "")
            await self._deliver(job, self.delivery.deliver_failure, message)
        elif job.state == "cancelled":
            await self._deliver(job, self.delivery.deliver_cancelled)
        else:
            await self._deliver(job, self.delivery.deliver_withheld)
