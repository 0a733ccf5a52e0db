"""The one interface the job service drives a worker backend through.

`WorkerClient` (the local spawned worker, `pipeline.worker`) implements it today; a
scale-out backend (many workers behind a server) implements the same, so `JobService`
never knows which it has. The bot stays the only scheduler: it asks `free_slots`, takes
that many jobs from its own fair queue and `submit`s them; every submitted job gets exactly
one final event (`Finished`, `Failed`, `Cancelled`, or a place in a `WorkerDied`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pipeline.request import EngineInfo, GenerationRequest
from pipeline.worker_protocol import WorkerEvent


@runtime_checkable
class WorkerBackend(Protocol):
    @property
    def info(self) -> EngineInfo | None:
        """What the workers loaded; None while no worker is ready."""

    @property
    def free_slots(self) -> int:
        """How many more jobs `submit` takes now (0: wait for an event)."""

    @property
    def running(self) -> tuple[str, ...]:
        """Submitted jobs that have not had their final event yet."""

    async def start(self) -> EngineInfo: ...

    async def restart(self) -> EngineInfo: ...

    async def stop(self, timeout: float = 10.0) -> None: ...

    def submit(self, batch: Sequence[GenerationRequest]) -> None:
        """Hand over at most `free_slots` jobs; never raises for a dead worker (the jobs
        come back as a `WorkerDied`'s `unstarted`)."""

    def cancel(self, job_id: str) -> None: ...

    async def next_event(self) -> WorkerEvent: ...
