"""The routing half of the job service: which worker takes which model's jobs, and what a
waiting job whose model no GPU serves is told.

A mixin of `JobService` (through `JobDispatch`); the rule itself, pure, is
`bot.jobs.routing`. Routing is skipped in a one-model deployment (`JobDispatch._dispatch`
takes the next batch in fair order for every worker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.jobs.routing import Residency, Route, SwapRule
from bot.jobs.scheduler import FairQueue, QueuedJob
from bot.models import ModelChoice
from config import Settings
from pipeline.request import EngineInfo, GenerationRequest
from pipeline.worker_backend import WorkerBackend


class ModelRoutes:
    """Mixin: routes by model, the swap rule's picks, models online, model sizes."""

    settings: Settings
    worker: WorkerBackend
    queue: FairQueue
    models: ModelChoice
    worker_models: tuple[str, ...]
    residency: Residency
    swaps: SwapRule
    resolution: int
    ready: asyncio.Event
    fatal: str | None
    engine_info: EngineInfo | None
    _online: frozenset[str]
    _online_at: float

    if TYPE_CHECKING:  # provided by JobDispatch

        def _batch_key(self, queued: QueuedJob) -> Hashable: ...

    def resolution_of(self, model: str | None) -> int:
        """The size a model renders at (long side), as its worker sizes it (`served_specs`):
        its catalogue `resolution`, else RESOLUTION as set, else the worker's (the default
        model's native size: a model of another native size needs its own `resolution`)."""
        entry = self.models.catalogue.models.get(model or "")
        own = entry.resolution if entry is not None else None
        return own or self.settings.resolution_setting or self.resolution

    def structures_of(self, model: str | None) -> tuple[str, ...] | None:
        """The structure kinds `model` has a ControlNet for: with a catalogue file, its
        entry's (`controlnet_edges`, `controlnet_lines`: each model its own); with one
        model, the ready worker's (CONTROLNET_*_ID), None before one is ready."""
        if self.settings.models_file is not None:
            return self.models.catalogue.model(model).structures
        info = self.engine_info
        return None if info is None else info.structures

    def _routes(self) -> list[Route]:
        """Each worker that takes jobs now, with the models it serves and has resident
        (as the bot last granted them, else as it said), most free slots first."""
        listed = getattr(self.worker, "routes", None)
        if listed is None:  # the local worker: serves WORKER_MODELS
            free = self.worker.free_slots
            raw = [Route(None, free, frozenset(self.worker_models))] if free > 0 else []
        else:
            raw = listed()
        return [
            replace(r, resident=self.residency.of(r.worker) or r.resident)
            for r in sorted(raw, key=lambda r: -r.free)
        ]

    def _take_for(self, route: Route, everyone: list[Route]) -> list[QueuedJob]:
        """`route`'s next batch by the swap rule (`bot.jobs.routing`), marked held.
        `everyone`: `_all_routes()`, read once per dispatch pass (grants come after the
        pass, so it holds for every route of it; once per route made a pass O(workers²))."""
        elsewhere = frozenset(
            m for r in everyone if r.worker != route.worker for m in r.resident
        )
        batch = self.swaps.pick(
            self.queue.waiting(),
            route,
            min(self.settings.max_batch, route.free),
            self._batch_key,
            elsewhere,
        )
        self.queue.hold(batch)
        return batch

    def _all_routes(self) -> list[Route]:
        """Every worker online, busy or not (whose resident models a job may wait for)."""
        every = getattr(self.worker, "all_routes", None)
        if every is None:
            return []
        return [replace(r, resident=self.residency.of(r.worker) or r.resident) for r in every()]

    def _submit(self, requests: list[GenerationRequest], route: Route | None) -> None:
        """Grant to the route's worker (the backend's choice without one), and note the
        model it will load."""
        if route is None or route.worker is None:
            self.worker.submit(requests)
        else:
            self.worker.submit(requests, worker_id=route.worker)  # type: ignore[call-arg]
        if route is not None:
            self.residency.granted(route.worker, requests[0].model or self.models.catalogue.default)

    def models_online(self) -> frozenset[str]:
        """The catalogue models some online worker serves (routing waits for the others):
        the workers' word through a backend that knows it (`models_served`), else every
        model once the local worker is ready."""
        served = getattr(self.worker, "models_served", None)
        if served is not None:
            return frozenset(served())
        if not self.ready.is_set() or self.fatal:
            return frozenset()
        return frozenset(self.worker_models)

    def _model_note(self, job_id: int) -> str | None:
        """"Waiting for a GPU with *anime*": no online worker serves the job's model (it
        runs once one does). Only where the catalogue has several models."""
        queued = self.queue.get(str(job_id))
        now = time.monotonic()
        if now - self._online_at > 1.0:  # once a second, not once per waiting job
            self._online, self._online_at = self.models_online(), now
        if queued is None or not queued.model or queued.model in self._online:
            return None
        return f"⏸️ Waiting for a GPU with *{self.models.title(queued.model) or queued.model}*"
