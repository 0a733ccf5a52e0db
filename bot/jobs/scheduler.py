"""The fair scheduler: per-guild queues served in round-robin order, with caps and fair
batching. Bot side only: the bot is the one scheduler, whatever the number of workers.

Two levels of turns: a server with 50 waiting jobs delays another server's job by at most
one job (the scheduler takes one job from each guild in turn), and inside a guild's turn the
members take turns too, so one member's series of ten delays another member's job by at
most one image. Jobs of one `group` (a series) count as one entry against the per-user cap.
Pure data structure; the bot rebuilds it from SQLite at start, so nothing here needs to
survive a restart.

The turns move when a job *starts*, not when it is handed to a worker: a worker may hold
jobs ready to join its running set (prefetch), and those stay in their place here, marked
held (`take_batch`), until the worker says they started (`start`). So a job that arrives
meanwhile is ordered as if nothing were prefetched, and `overtaken` names the held jobs it
should go ahead of: the bot recalls them (`release`). The one fairness rule: a job never
waits behind more than the jobs already running when it arrived.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler needs to know of a job. `batch_key` groups jobs that can share
    one pipeline call (same size, steps and guidance); None means never batch."""

    job_id: str
    guild_id: int
    user_id: int
    batch_key: Hashable | None = None
    group: str | None = None  # jobs of one series: one entry against the per-user cap


class QueueFull(Exception):
    """A cap would be exceeded; the message says which one, for the user."""


@dataclass
class Caps:
    per_user: int = 3
    per_guild: int = 25
    total: int = 200


Members = OrderedDict[int, deque[QueuedJob]]  # a guild's members in turn order


def _interleave(queues: list[list[QueuedJob]]) -> list[QueuedJob]:
    """One from each queue in turn: the first of each, then the second of each, ..."""
    out: list[QueuedJob] = []
    depth = 0
    while True:
        layer = [q[depth] for q in queues if depth < len(q)]
        if not layer:
            return out
        out.extend(layer)
        depth += 1


@dataclass
class FairQueue:
    """Round-robin over guilds, round-robin over members inside a guild, FIFO per member.

    `running` jobs (started, or held by a worker) count towards the caps until `finish`
    is called. Held jobs keep their place in their member's queue but are not waiting.
    """

    caps: Caps = field(default_factory=Caps)
    _queues: OrderedDict[int, Members] = field(default_factory=OrderedDict)
    _running: dict[str, QueuedJob] = field(default_factory=dict)
    _held: dict[str, QueuedJob] = field(default_factory=dict)

    # -- inspection -------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(1 for _ in self._iter_waiting())

    def __contains__(self, job_id: str) -> bool:
        return any(j.job_id == job_id for j in self._iter_waiting())

    @property
    def running(self) -> list[QueuedJob]:
        """Jobs handed to a worker: started, then held (ready to join, not started)."""
        return [*self._running.values(), *self._held.values()]

    @property
    def held(self) -> list[QueuedJob]:
        """Jobs a worker holds but has not started, in the order they were handed over."""
        return list(self._held.values())

    def _iter_waiting(self) -> Iterator[QueuedJob]:
        for members in self._queues.values():
            for q in members.values():
                yield from (j for j in q if j.job_id not in self._held)

    def _active(self) -> list[QueuedJob]:
        return [*self.running, *self._iter_waiting()]

    def count(self, *, guild_id: int | None = None, user_id: int | None = None) -> int:
        """Waiting + running jobs, optionally for one guild and/or user."""
        return sum(
            1
            for j in self._active()
            if (guild_id is None or j.guild_id == guild_id)
            and (user_id is None or j.user_id == user_id)
        )

    def entries(self, user_id: int) -> int:
        """A user's waiting + running entries: a job each, a series (group) once."""
        jobs = [j for j in self._active() if j.user_id == user_id]
        return sum(1 for j in jobs if j.group is None) + len({j.group for j in jobs if j.group})

    def guild_waiting(self, guild_id: int, *, held: bool = False) -> list[QueuedJob]:
        """A guild's waiting jobs in the order its turns will serve them (with `held`: and
        the held ones, which keep their places)."""
        members = self._queues.get(guild_id)
        jobs = _interleave([list(q) for q in members.values()]) if members else []
        return jobs if held else [j for j in jobs if j.job_id not in self._held]

    def order(self, *, held: bool = False) -> list[QueuedJob]:
        """The order in which waiting jobs will be served if nothing else arrives."""
        jobs = _interleave([self.guild_waiting(g, held=True) for g in self._queues])
        return jobs if held else [j for j in jobs if j.job_id not in self._held]

    def overtaken(self) -> list[QueuedJob]:
        """Held jobs that a waiting job would now be served before (it arrived after they
        were handed over, or came back ahead of them): recall them, so the waiting job
        takes the next free place."""
        if not self._held:
            return []
        out: list[QueuedJob] = []
        waiting_ahead = False
        for job in self.order(held=True):
            if job.job_id not in self._held:
                waiting_ahead = True
            elif waiting_ahead:
                out.append(job)
        return out

    def position(self, job_id: str) -> tuple[int, int] | None:
        """(1-based place in its guild's queue, number of jobs served before it overall)."""
        for overall, job in enumerate(self.order()):
            if job.job_id == job_id:
                guild_ids = [j.job_id for j in self.guild_waiting(job.guild_id)]
                return guild_ids.index(job_id) + 1, overall
        return None

    def places(self) -> Iterator[tuple[QueuedJob, int, int]]:
        """Every waiting job with its `position`, in one pass (status messages of a deep
        queue would cost O(n²) through `position`)."""
        in_guild: dict[int, int] = {}
        for overall, job in enumerate(self.order()):
            in_guild[job.guild_id] = place = in_guild.get(job.guild_id, 0) + 1
            yield job, place, overall

    def is_running(self, job_id: str) -> bool:
        return job_id in self._running

    # -- changes ----------------------------------------------------------------------
    def check_caps(
        self, guild_id: int, user_id: int, size: int = 1, group: str | None = None
    ) -> None:
        """Raise `QueueFull` if `size` more jobs (one entry: a job, or a series when
        `size` > 1) from this user in this guild break a cap."""
        new_entry = group is None or all(j.group != group for j in self._active())
        if new_entry and self.entries(user_id) >= self.caps.per_user:
            raise QueueFull(
                f"You already have {self.caps.per_user} jobs waiting or running. "
                "Wait for one to finish (or cancel one) and try again."
            )
        in_guild = self.count(guild_id=guild_id)
        if in_guild + size > self.caps.per_guild:
            if size == 1:
                raise QueueFull(
                    f"This server's queue is full ({self.caps.per_guild} jobs). "
                    "Try again in a few minutes."
                )
            raise QueueFull(
                f"This server's queue has room for {max(0, self.caps.per_guild - in_guild)} "
                f"more images; a series of {size} does not fit. Try again in a few minutes "
                "or send fewer images."
            )
        if self.count() + size > self.caps.total:
            raise QueueFull("The bot is at capacity right now. Try again in a few minutes.")

    def push(self, job: QueuedJob, *, enforce_caps: bool = True) -> None:
        if enforce_caps:
            self.check_caps(job.guild_id, job.user_id, group=job.group)
        members = self._queues.setdefault(job.guild_id, OrderedDict())
        members.setdefault(job.user_id, deque()).append(job)

    def _take(self, job: QueuedJob) -> None:
        """Drop a waiting job from its member's queue, and empty queues with it."""
        members = self._queues[job.guild_id]
        q = members[job.user_id]
        q.remove(job)
        if not q:
            del members[job.user_id]
        if not members:
            del self._queues[job.guild_id]

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a waiting job out of the queue (cancel). Returns it, or None if not waiting
        (a held job is cancelled through its worker)."""
        for job in self._iter_waiting():
            if job.job_id == job_id:
                self._take(job)
                return job
        return None

    def pop_batch(
        self, max_batch: int = 1, key: Callable[[QueuedJob], Hashable | None] | None = None
    ) -> list[QueuedJob]:
        """Take the next jobs to run and mark them running.

        The batch is always a prefix of `order()` whose jobs share one batch key, so
        batching never lets a job jump ahead of one that round-robin would serve first.
        `key` derives the key at dispatch time (default: the job's `batch_key`), for keys
        that depend on something learnt after queueing, such as the model's resolution.
        The served members move to the back of their guild's turns, and the served guilds
        to the back of the rotation.
        """
        key = key or (lambda job: job.batch_key)
        batch: list[QueuedJob] = []
        first_key: Hashable | None = None
        for job in self.order():
            if len(batch) >= max_batch:
                break
            job_key = key(job)
            if batch and (job_key is None or job_key != first_key):
                break
            if not batch:
                first_key = job_key
            batch.append(job)
        for job in batch:
            members = self._queues[job.guild_id]
            members.move_to_end(job.user_id)
            self._queues.move_to_end(job.guild_id)
            self._take(job)
            self._running[job.job_id] = job
        return batch

    def take_batch(
        self, max_batch: int = 1, key: Callable[[QueuedJob], Hashable | None] | None = None
    ) -> list[QueuedJob]:
        """Like `pop_batch`, but the jobs are only marked held: they keep their place, and
        the turns move when the worker starts them (`start`)."""
        key = key or (lambda job: job.batch_key)
        batch: list[QueuedJob] = []
        for job in self.order():
            if len(batch) >= max_batch:
                break
            if batch and (key(job) is None or key(job) != key(batch[0])):
                break
            batch.append(job)
        for job in batch:
            self._held[job.job_id] = job
        return batch

    def start(self, job_id: str) -> None:
        """A held job started: it leaves its member's queue, and the member and the guild
        move to the back of the turns (as `pop_batch` does when it serves a job)."""
        job = self._held.pop(job_id, None)
        if job is None:
            return
        members = self._queues[job.guild_id]
        members.move_to_end(job.user_id)
        self._queues.move_to_end(job.guild_id)
        self._take(job)
        self._running[job_id] = job

    def mark_running(self, job: QueuedJob) -> None:
        """Count a job as running without serving it: one a remote worker may still run
        after a bot restart (its backend hands it back, to `requeue_front`, if no worker
        has it). The turns do not move: it was served before the restart."""
        self._running[job.job_id] = job

    def release(self, job_id: str) -> bool:
        """A held job came back unstarted (recalled, or its worker died): it waits again in
        the place it never left. False if it was not held."""
        return self._held.pop(job_id, None) is not None

    def set_group(self, job_id: str, group: str) -> None:
        """Mark a waiting or running job as part of a series (`group`), for jobs queued
        one at a time by a caller that knows they belong together."""
        if job_id in self._running:
            self._running[job_id] = replace(self._running[job_id], group=group)
            return
        if job_id in self._held:
            self._held[job_id] = replace(self._held[job_id], group=group)
        for members in self._queues.values():
            for q in members.values():
                for i, job in enumerate(q):
                    if job.job_id == job_id:
                        q[i] = replace(job, group=group)
                        return

    def requeue_front(self, job: QueuedJob) -> None:
        """Put a job that never started back where it was served from: first of its
        member's queue, that member first in its guild's turns, that guild first. A held
        job never left its place: it just waits again."""
        if self.release(job.job_id):
            return
        self._running.pop(job.job_id, None)
        members = self._queues.setdefault(job.guild_id, OrderedDict())
        members.setdefault(job.user_id, deque()).appendleft(job)
        members.move_to_end(job.user_id, last=False)
        self._queues.move_to_end(job.guild_id, last=False)

    def finish(self, job_id: str) -> None:
        """A job ended: it counts no more. One that ends held (no start was reported)
        counts as started first, so the turns move past it all the same."""
        self.start(job_id)
        self._running.pop(job_id, None)
