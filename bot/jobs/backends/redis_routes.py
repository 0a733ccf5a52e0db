"""The routing half of `RedisBackend`: what the dispatcher needs to route jobs by model
(each worker's served and resident models, `bot.jobs.routing`), and the swap events a
worker sends, handed to the job service as events.

A mixin, split from `bot.jobs.backends.redis`; membership (where `Remote.models` and
`resident` come from, the heartbeat) is `bot.jobs.backends.redis_members`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from bot.jobs.backends.redis_lock import SchedulerLock
from bot.jobs.backends.redis_members import Remote
from bot.jobs.routing import Route, WorkerResident
from pipeline.worker_protocol import ModelLoaded, ModelLoading


class Routes:
    """Mixin of `RedisBackend`."""

    _workers: dict[str, Remote]
    _events: asyncio.Queue[Any]
    lock: SchedulerLock
    default_model: str

    if TYPE_CHECKING:  # provided by `Members`

        def _by_rank(self) -> list[Remote]: ...

    def on_model_loading(self, worker: Remote, event: ModelLoading) -> None:
        """The job service tells those jobs' members (`JobEvents._loading`)."""
        self._events.put_nowait(event)

    def on_model_loaded(self, worker: Remote, event: ModelLoaded) -> None:
        """Routing learns what the worker holds now."""
        self._events.put_nowait(WorkerResident(worker.id, event.resident))

    def routes(self) -> list[Route]:
        """Each worker that takes jobs now, with the models it serves and has resident
        (routing by model: `bot.jobs.routing`); none while this bot is not the scheduler."""
        if not self.lock.held:
            return []
        return [self._route(w) for w in self._by_rank()]

    def all_routes(self) -> list[Route]:
        """Every worker online, busy or not."""
        return [self._route(w) for w in self._workers.values()]

    def models_served(self) -> frozenset[str]:
        """The catalogue models some online worker serves."""
        return frozenset(m for w in self._workers.values() for m in self._serves(w))

    def _route(self, w: Remote) -> Route:
        return Route(w.id, w.slots, frozenset(self._serves(w)), w.resident)

    def _serves(self, w: Remote) -> tuple[str, ...]:
        """A worker that names no models (one from before catalogues) serves the default."""
        return w.models or (self.default_model,)
