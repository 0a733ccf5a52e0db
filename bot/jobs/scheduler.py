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

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler needs to know of a job. `batch_key` groups jobs that can share
    one pipeline call (same size, steps and guidance); None means never batch."""

    job_id: str
    guild_id: int
    user_id: int
    batch_key: Hashable | None = None
    group: str | None = None  # jobs of one series: one entry against the per-user cap
    model: str = ""  # the catalogue model it runs on: routing and the swap rule


class QueueFull(Exception):
    """A cap would be exceeded; the message says which one, for the user."""


@dataclass
class Caps:
    per_user: int = 3
    per_guild: int = 25
    total: int = 200


Members = OrderedDict[int, deque[QueuedJob]]  # a guild's members in turn order


def _lazy_interleave(sources: Iterable[Iterator[QueuedJob]]) -> Iterator[QueuedJob]:
    """`_interleave`, computed as it is read: the first few places cost the first few
    sources, not the whole queue (the dispatcher reads a batch's worth at a time)."""
    live: list[Iterator[QueuedJob]] = []
    for source in sources:
        for job in source:
            yield job
            live.append(source)
            break
    while live:
        still: list[Iterator[QueuedJob]] = []
        for source in live:
            for job in source:
                yield job
                still.append(source)
                break
        live = still


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

    The dispatcher asks for the length, the caps and the next batch on every pass, with
    hundreds of jobs waiting: those are kept as counts updated at each change (a job
    becomes active, leaves, or joins a group), and the order is computed only as far as
    it is read, so none of them walks the whole queue.
    """

    caps: Caps = field(default_factory=Caps)
    _queues: OrderedDict[int, Members] = field(default_factory=OrderedDict)
    _running: dict[str, QueuedJob] = field(default_factory=dict)
    _held: dict[str, QueuedJob] = field(default_factory=dict)
    _queued: dict[str, QueuedJob] = field(default_factory=dict)  # in `_queues`, held too
    _counts: Counter[object] = field(default_factory=Counter)  # active jobs, see `_count`
    _groups: dict[int, Counter[str]] = field(default_factory=dict)  # user -> group -> jobs

    # -- counts -----------------------------------------------------------------------
    def _count(self, job: QueuedJob, n: int) -> None:
        """A job becomes active (+1: waiting, held or running) or stops being (-1).
        Keys: None (all), ("g", guild), ("u", user), (guild, user), ("loose", user) for a
        job of no series, ("group", series) for a series, any member's."""
        keys: list[object] = [None, ("g", job.guild_id), ("u", job.user_id)]
        keys += [(job.guild_id, job.user_id)]
        keys += [("loose", job.user_id) if job.group is None else ("group", job.group)]
        for key in keys:
            self._counts[key] += n
            if not self._counts[key]:
                del self._counts[key]
        if job.group is not None:
            groups = self._groups.setdefault(job.user_id, Counter())
            groups[job.group] += n
            if not groups[job.group]:
                del groups[job.group]
            if not groups:
                del self._groups[job.user_id]

    # -- inspection -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queued) - len(self._held)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._queued and job_id not in self._held

    @property
    def running(self) -> list[QueuedJob]:
        """Jobs handed to a worker: started, then held (ready to join, not started)."""
        return [*self._running.values(), *self._held.values()]

    @property
    def held(self) -> list[QueuedJob]:
        """Jobs a worker holds but has not started, in the order they were handed over."""
        return list(self._held.values())

    def count(self, *, guild_id: int | None = None, user_id: int | None = None) -> int:
        """Waiting + running jobs, optionally for one guild and/or user."""
        if guild_id is None:
            return self._counts[None if user_id is None else ("u", user_id)]
        return self._counts[("g", guild_id) if user_id is None else (guild_id, user_id)]

    def entries(self, user_id: int) -> int:
        """A user's waiting + running entries: a job each, a series (group) once."""
        return self._counts[("loose", user_id)] + len(self._groups.get(user_id, ()))

    def guild_depth(self, guild_id: int) -> int:
        """How many of a guild's jobs wait (held ones not), without putting them in order."""
        members = self._queues.get(guild_id)
        if not members:
            return 0
        held = sum(1 for j in self._held.values() if j.guild_id == guild_id)
        return sum(len(q) for q in members.values()) - held

    def guild_waiting(self, guild_id: int, *, held: bool = False) -> list[QueuedJob]:
        """A guild's waiting jobs in the order its turns will serve them (with `held`: and
        the held ones, which keep their places)."""
        members = self._queues.get(guild_id)
        jobs = _interleave([list(q) for q in members.values()]) if members else []
        return jobs if held else [j for j in jobs if j.job_id not in self._held]

    def order(self, *, held: bool = False) -> list[QueuedJob]:
        """The order in which waiting jobs will be served if nothing else arrives."""
        return list(self._iter_order(held=held))

    def _iter_order(self, *, held: bool = False) -> Iterator[QueuedJob]:
        """`order()`, computed only as far as it is read. The first round (each server's
        next job: its first member's first job) is read straight from the queues: jobs
        handed to the workers keep their places there, often a hundred or more, and the
        dispatcher passes them on every batch."""
        guilds = list(self._queues.values())
        skip = {} if held else self._held
        for members in guilds:
            job = next(iter(members.values()))[0]
            if job.job_id not in skip:
                yield job
        tails = (
            islice(_lazy_interleave(iter(q) for q in members.values()), 1, None)
            for members in guilds
        )
        for job in _lazy_interleave(tails):
            if job.job_id not in skip:
                yield job

    def overtaken(self) -> list[QueuedJob]:
        """Held jobs that a waiting job would now be served before (it arrived after they
        were handed over, or came back ahead of them): recall them, so the waiting job
        takes the next free place. Only a waiting job of the held job's model counts: one
        of another model was passed over on purpose (the swap rule, `bot.jobs.routing`)."""
        if not self._held:
            return []
        out: list[QueuedJob] = []
        waiting_ahead: set[str] = set()  # the models of waiting jobs seen so far
        held_left = len(self._held)
        for job in self._iter_order(held=True):  # up to the last held job, not further
            if job.job_id not in self._held:
                waiting_ahead.add(job.model)
                continue
            held_left -= 1
            if job.model in waiting_ahead:
                out.append(job)
            if not held_left:
                break
        return out

    def position(self, job_id: str) -> tuple[int, int] | None:
        """(1-based place in its guild's queue, number of jobs served before it overall)."""
        if job_id not in self:
            return None
        for overall, job in enumerate(self._iter_order()):
            if job.job_id == job_id:
                guild_ids = [j.job_id for j in self.guild_waiting(job.guild_id)]
                return guild_ids.index(job_id) + 1, overall
        return None

    def places(self) -> Iterator[tuple[QueuedJob, int, int]]:
        """Every waiting job with its `position`, in one pass (status messages of a deep
        queue would cost O(n²) through `position`)."""
        in_guild: dict[int, int] = {}
        for overall, job in enumerate(self._iter_order()):
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
        new_entry = group is None or not self._counts[("group", group)]
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
        self._queued[job.job_id] = job
        self._count(job, 1)

    def _take(self, job: QueuedJob) -> None:
        """Drop a waiting job from its member's queue, and empty queues with it."""
        members = self._queues[job.guild_id]
        q = members[job.user_id]
        q.remove(job)
        del self._queued[job.job_id]
        if not q:
            del members[job.user_id]
        if not members:
            del self._queues[job.guild_id]

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a waiting job out of the queue (cancel). Returns it, or None if not waiting
        (a held job is cancelled through its worker)."""
        job = self._queued.get(job_id)
        if job is None or job_id in self._held:
            return None
        self._take(job)
        self._count(job, -1)
        return job

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
        for job in self._iter_order():
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
        for job in self._iter_order():
            if len(batch) >= max_batch:
                break
            if batch and (key(job) is None or key(job) != key(batch[0])):
                break
            batch.append(job)
        for job in batch:
            self._held[job.job_id] = job
        return batch

    def get(self, job_id: str) -> QueuedJob | None:
        """A waiting (or held) job."""
        return self._queued.get(job_id)

    def waiting(self) -> Iterator[QueuedJob]:
        """Waiting jobs (not held) in fair order, read lazily (`bot.jobs.routing`)."""
        return self._iter_order()

    def hold(self, batch: list[QueuedJob]) -> None:
        """Mark jobs picked by the caller held, as `take_batch` does."""
        for job in batch:
            self._held[job.job_id] = job

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
        if job.job_id not in self._running and job.job_id not in self._queued:
            self._count(job, 1)
        self._running[job.job_id] = job

    def release(self, job_id: str) -> bool:
        """A held job came back unstarted (recalled, or its worker died): it waits again in
        the place it never left. False if it was not held."""
        return self._held.pop(job_id, None) is not None

    def set_group(self, job_id: str, group: str) -> None:
        """Mark a waiting or running job as part of a series (`group`), for jobs queued
        one at a time by a caller that knows they belong together."""
        if job_id in self._running:
            old = self._running[job_id]
            self._running[job_id] = new = replace(old, group=group)
            self._count(old, -1)
            self._count(new, 1)
            return
        old = self._queued.get(job_id)
        if old is None:
            return
        new = replace(old, group=group)
        if job_id in self._held:
            self._held[job_id] = new
        q = self._queues[old.guild_id][old.user_id]
        q[q.index(old)] = new
        self._queued[job_id] = new
        self._count(old, -1)
        self._count(new, 1)

    def requeue_front(self, job: QueuedJob) -> None:
        """Put a job that never started back where it was served from: first of its
        member's queue, that member first in its guild's turns, that guild first. A held
        job never left its place: it just waits again."""
        if self.release(job.job_id):
            return
        was = self._running.pop(job.job_id, None)
        if was is not None:
            self._count(was, -1)
        self._count(job, 1)
        self._queued[job.job_id] = job
        members = self._queues.setdefault(job.guild_id, OrderedDict())
        members.setdefault(job.user_id, deque()).appendleft(job)
        members.move_to_end(job.user_id, last=False)
        self._queues.move_to_end(job.guild_id, last=False)

    def finish(self, job_id: str) -> None:
        """A job ended: it counts no more. One that ends held (no start was reported)
        counts as started first, so the turns move past it all the same."""
        self.start(job_id)
        job = self._running.pop(job_id, None)
        if job is not None:
            self._count(job, -1)
