"""Which waiting jobs go to which worker when workers hold different models, and the swap
rule that keeps model loads rare.

On a real GPU loading a model costs seconds to minutes, so a worker that alternates models
job by job spends its time loading. The rule: a worker takes the first job in fair order
among the models it serves; if that job's model is not resident there, the worker first
looks up to `window` places further (in fair order, among the jobs it serves) for a job of
a model it has resident, and takes that one instead. Each job so passed over counts the
jobs that went ahead of it this way; once `window` have, it is passed over no more: the
next worker free for it takes it, loading its model if it must. So a job is overtaken by
at most `window` jobs of other models (plus one batch) beyond fair order, and with models
alternating, a worker swaps about once per `window` jobs instead of on every one.

Bot side, pure: the dispatcher feeds it the fair queue's order and each worker's routes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from bot.jobs.scheduler import QueuedJob

DEFAULT_WINDOW = 8


@dataclass(frozen=True)
class WorkerResident:
    """Bot-side event: a remote worker's load ended and it holds `resident` now (its
    `ModelLoaded`, with who said it)."""

    worker: str
    resident: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """One worker that takes jobs now, as the dispatcher sees it."""

    worker: str | None
    """The backend's id for it; None: the backend has one worker (local)."""
    free: int
    serves: frozenset[str] | None
    """The catalogue models it serves; None: every model."""
    resident: tuple[str, ...] = ()
    """Models loaded there (or on their way: granted), least recently used first."""

    def takes(self, job: QueuedJob) -> bool:
        return self.serves is None or job.model in self.serves


class Residency:
    """What each worker has loaded, as the bot last knew it: updated when it grants a job
    (the worker will load that model) and when the worker reports its resident models."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._by_worker: dict[str | None, OrderedDict[str, None]] = {}

    def of(self, worker: str | None) -> tuple[str, ...]:
        return tuple(self._by_worker.get(worker, ()))

    def granted(self, worker: str | None, model: str) -> None:
        loaded = self._by_worker.setdefault(worker, OrderedDict())
        loaded[model] = None
        loaded.move_to_end(model)
        while len(loaded) > self.slots:
            loaded.popitem(last=False)

    def reported(self, worker: str | None, resident: Iterable[str]) -> None:
        """The worker's own word (a load ended): it replaces what grants suggested."""
        self._by_worker[worker] = OrderedDict((m, None) for m in resident)

    def forget(self, worker: str | None) -> None:
        self._by_worker.pop(worker, None)


class SwapRule:
    """Picks a worker's next batch (see the module's docstring); keeps, per waiting job,
    how many jobs of other models went ahead of it."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = max(0, window)
        self.passed: dict[str, int] = {}
        self.swaps = 0
        """Batches granted to a worker that did not have their model resident."""
        self.largest_pass = 0
        """The most jobs of other models that went ahead of one job (its displacement)."""

    def pick(
        self,
        order: Iterable[QueuedJob],
        route: Route,
        max_batch: int,
        key: Callable[[QueuedJob], Hashable | None],
        elsewhere: frozenset[str] = frozenset(),
    ) -> list[QueuedJob]:
        """The batch for `route`: its first job by the rule, then the jobs that follow it
        in fair order with the same batch key (a prefix as `FairQueue.take_batch` takes).
        `elsewhere`: models resident on other online workers; a job of one goes there,
        not to a worker that would load it, unless it is due. The caller marks the batch
        held."""
        ahead: list[QueuedJob] = []
        first: QueuedJob | None = None
        jobs = (job for job in order if route.takes(job))
        for job in jobs:
            if self._fits(job, route) or (not ahead and self._due(job)):
                first = job
                break
            ahead.append(job)
            if len(ahead) > self.window:
                break
        if first is None:  # nothing resident within the window: load a model
            loads = [j for j in ahead if j.model not in elsewhere or self._due(j)]
            if not loads:
                return []  # their models are resident on workers that will take them
            first = loads[0]
            rest = ahead[ahead.index(first) + 1 :]
            ahead = ahead[: ahead.index(first)]
            jobs = iter(rest)
        batch = [first]
        first_key = key(first)
        for job in jobs:
            if len(batch) >= max(1, max_batch):
                break
            if first_key is None or key(job) != first_key:
                break
            batch.append(job)
        if route.resident and first.model not in route.resident:
            self.swaps += 1
        for job in ahead:
            self.passed[job.job_id] = n = self.passed.get(job.job_id, 0) + len(batch)
            self.largest_pass = max(self.largest_pass, n)
        for job in batch:
            self.passed.pop(job.job_id, None)
        return batch

    def _fits(self, job: QueuedJob, route: Route) -> bool:
        return not route.resident or job.model in route.resident

    def _due(self, job: QueuedJob) -> bool:
        """Passed over by `window` jobs already: it goes next, on this worker."""
        return self.passed.get(job.job_id, 0) >= self.window

    def forget(self, job_id: str) -> None:
        self.passed.pop(job_id, None)
