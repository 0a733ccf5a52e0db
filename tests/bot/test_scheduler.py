"""Fair-queue order and caps: pure tables, no model."""

from __future__ import annotations

import random

import pytest

from bot.jobs.scheduler import Caps, FairQueue, QueuedJob, QueueFull, _interleave


def job(n: int, guild: int, user: int = 0, key: object = "k") -> QueuedJob:
    return QueuedJob(str(n), guild, user or guild * 100 + n, key)


def drain(q: FairQueue, max_batch: int = 1) -> list[list[str]]:
    out = []
    while len(q):
        batch = q.pop_batch(max_batch)
        out.append([j.job_id for j in batch])
        for j in batch:
            q.finish(j.job_id)
    return out


def test_round_robin_busy_guild_delays_other_by_at_most_one_job() -> None:
    q = FairQueue(Caps(per_user=99, per_guild=99, total=999))
    for n in range(50):
        q.push(job(n, guild=1))
    q.push(job(1000, guild=2))
    served = [b[0] for b in drain(q)]
    assert served.index("1000") <= 1


@pytest.mark.parametrize(
    ("pushes", "expected"),
    [
        ([(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)], ["1", "4", "2", "5", "3"]),
        ([(1, 1), (2, 2), (3, 3), (4, 1)], ["1", "2", "3", "4"]),
        ([(1, 2), (2, 1), (3, 2), (4, 1)], ["1", "2", "3", "4"]),
    ],
)
def test_order_is_round_robin_and_fifo_within_guild(
    pushes: list[tuple[int, int]], expected: list[str]
) -> None:
    q = FairQueue(Caps(99, 99, 999))
    for n, guild in pushes:
        q.push(job(n, guild))
    assert [j.job_id for j in q.order()] == expected
    assert [b[0] for b in drain(q)] == expected


def test_served_guild_moves_to_back_and_new_guilds_join_at_the_back() -> None:
    q = FairQueue(Caps(99, 99, 999))
    q.push(job(1, 1))
    q.push(job(2, 1))
    q.push(job(3, 2))
    assert [j.job_id for j in q.pop_batch()] == ["1"]
    q.push(job(4, 3))
    assert [j.job_id for j in q.order()] == ["3", "2", "4"]


def test_batch_is_a_compatible_prefix_of_the_fair_order() -> None:
    q = FairQueue(Caps(99, 99, 999))
    q.push(job(1, 1, key="a"))
    q.push(job(2, 2, key="a"))
    q.push(job(3, 1, key="b"))
    q.push(job(4, 2, key="a"))
    # "4" would fit with "3"'s neighbours, but never jumps ahead of the fair order
    assert drain(q, max_batch=4) == [["1", "2"], ["3"], ["4"]]


def test_batch_respects_max_batch_and_none_key() -> None:
    q = FairQueue(Caps(99, 99, 999))
    for n in range(5):
        q.push(job(n, guild=n % 2 + 1))
    assert [len(b) for b in drain(q, max_batch=2)] == [2, 2, 1]
    q.push(job(10, 1, key=None))
    q.push(job(11, 2, key=None))
    assert drain(q, max_batch=4) == [["10"], ["11"]]


def test_position_reports_guild_place_and_jobs_before() -> None:
    q = FairQueue(Caps(99, 99, 999))
    for n, guild in [(1, 1), (2, 1), (3, 1), (4, 2)]:
        q.push(job(n, guild))
    assert q.position("3") == (3, 3)
    assert q.position("4") == (1, 1)
    assert q.position("nope") is None


@pytest.mark.parametrize(
    ("caps", "existing", "new", "message"),
    [
        (Caps(1, 9, 9), [(1, 1, 7)], (1, 7), "You already have 1 jobs"),
        (Caps(9, 2, 9), [(1, 1, 7), (2, 1, 8)], (1, 9), "This server's queue is full"),
        (Caps(9, 9, 2), [(1, 1, 7), (2, 2, 8)], (3, 9), "at capacity"),
    ],
)
def test_caps_refuse_with_a_clear_message(
    caps: Caps, existing: list[tuple[int, int, int]], new: tuple[int, int], message: str
) -> None:
    q = FairQueue(caps)
    for n, guild, user in existing:
        q.push(QueuedJob(str(n), guild, user))
    with pytest.raises(QueueFull, match=message):
        q.push(QueuedJob("new", *new))


def test_running_jobs_count_towards_caps_until_finished() -> None:
    q = FairQueue(Caps(1, 9, 9))
    q.push(QueuedJob("1", 1, 7))
    q.pop_batch()
    with pytest.raises(QueueFull):
        q.push(QueuedJob("2", 1, 7))
    q.finish("1")
    q.push(QueuedJob("2", 1, 7))


def test_remove_takes_a_waiting_job_out() -> None:
    q = FairQueue(Caps(9, 9, 9))
    q.push(job(1, 1))
    q.push(job(2, 1))
    assert q.remove("1") is not None
    assert q.remove("1") is None
    assert [j.job_id for j in q.order()] == ["2"]


def test_batch_key_can_be_derived_at_dispatch_time() -> None:
    q = FairQueue(Caps(99, 99, 999))
    for n, size in [(1, 100), (2, 101), (3, 300)]:
        q.push(job(n, guild=n, key=size))
    # the raw keys all differ; a coarser key known only now groups the first two
    assert [j.job_id for j in q.pop_batch(4, key=lambda j: j.batch_key // 100)] == ["1", "2"]


def test_members_take_turns_inside_their_guild_and_guilds_take_turns() -> None:
    """Alice's series of 10 in guild 1 interleaves with Bob's and Carol's jobs there and
    with guild 2's: nobody waits behind more than one of her images per turn."""
    q = FairQueue(Caps(per_user=9, per_guild=99, total=999))
    alice, bob, carol, dave = 1, 2, 3, 4
    for n in range(10):
        q.push(QueuedJob(f"a{n}", 1, alice, group="s1"))
    q.push(QueuedJob("b0", 1, bob))
    q.push(QueuedJob("b1", 1, bob))
    q.push(QueuedJob("c0", 1, carol))
    q.push(QueuedJob("d0", 2, dave))
    q.push(QueuedJob("d1", 2, dave))
    expected = ["a0", "d0", "b0", "d1", "c0", "a1", "b1", "a2", *[f"a{n}" for n in range(3, 10)]]
    assert [j.job_id for j in q.order()] == expected
    assert q.guild_waiting(1)[:5] == [q.order()[i] for i in (0, 2, 4, 5, 6)]
    assert q.position("c0") == (3, 4)
    assert [b[0] for b in drain(q)] == expected


def test_a_member_arriving_during_a_series_waits_for_at_most_one_of_its_images() -> None:
    q = FairQueue(Caps(per_user=9, per_guild=99, total=999))
    for n in range(4):
        q.push(QueuedJob(f"a{n}", 1, 1, group="s"))
    assert [j.job_id for j in q.pop_batch()] == ["a0"]
    q.push(QueuedJob("b0", 1, 2))  # joins the turns at the back, like a new guild
    q.push(QueuedJob("b1", 1, 2))
    assert [j.job_id for j in q.order()] == ["a1", "b0", "a2", "b1", "a3"]


def test_a_series_is_one_entry_against_the_per_user_cap() -> None:
    q = FairQueue(Caps(per_user=2, per_guild=99, total=999))
    for n in range(10):
        q.check_caps(1, 7, size=10 - n, group="s1")
        q.push(QueuedJob(f"s{n}", 1, 7, group="s1"))
    assert q.entries(7) == 1 and q.count(user_id=7) == 10
    q.push(QueuedJob("single", 1, 7))
    assert q.entries(7) == 2
    with pytest.raises(QueueFull, match="You already have 2 jobs"):
        q.check_caps(1, 7, size=3, group="s2")
    q.remove("single")
    q.check_caps(1, 7, size=3, group="s2")


@pytest.mark.parametrize(
    ("caps", "size", "message"),
    [
        (Caps(9, 12, 99), 3, "room for 2 more images; a series of 3 does not fit"),
        (Caps(9, 99, 12), 3, "at capacity"),
    ],
)
def test_a_series_must_fit_the_queue_whole(caps: Caps, size: int, message: str) -> None:
    q = FairQueue(caps)
    for n in range(10):
        q.push(QueuedJob(str(n), 1, 100 + n))
    q.check_caps(1, 7, size=2, group="fits")
    with pytest.raises(QueueFull, match=message):
        q.check_caps(1, 7, size=size, group="big")


def test_requeue_front_puts_a_job_back_where_it_was_served_from() -> None:
    q = FairQueue(Caps(per_user=9, per_guild=99, total=999))
    for n, guild, user in [(1, 1, 1), (2, 1, 1), (3, 1, 2), (4, 2, 3)]:
        q.push(QueuedJob(str(n), guild, user))
    before = [j.job_id for j in q.order()]
    (first,) = q.pop_batch()
    q.requeue_front(first)
    assert [j.job_id for j in q.order()] == before
    assert q.running == []


def test_set_group_joins_queued_and_running_jobs_into_one_entry() -> None:
    q = FairQueue(Caps(per_user=2, per_guild=99, total=999))
    q.push(QueuedJob("1", 1, 7))
    q.pop_batch()
    q.push(QueuedJob("2", 1, 7))
    assert q.entries(7) == 2
    q.set_group("1", "s")
    q.set_group("2", "s")
    q.set_group("nope", "s")
    assert q.entries(7) == 1
    q.push(QueuedJob("3", 1, 7))
    assert [j.group for j in q.order()] == ["s", None]


def test_requeue_front_of_a_whole_unstarted_batch_restores_the_order() -> None:
    """What the bot does with a WorkerDied's `unstarted`: finish, then requeue_front each
    in reverse, so the batch waits at the head again in the order it was served."""
    q = FairQueue(Caps(per_user=9, per_guild=99, total=999))
    for n, guild, user in [(1, 1, 1), (2, 2, 2), (3, 1, 3), (4, 2, 4), (5, 1, 1)]:
        q.push(QueuedJob(str(n), guild, user, batch_key="k"))
    before = [j.job_id for j in q.order()]
    batch = q.pop_batch(3)
    assert [j.job_id for j in batch] == before[:3]
    for job in batch:
        q.finish(job.job_id)
    for job in reversed(batch):
        q.requeue_front(job)
    assert [j.job_id for j in q.order()] == before
    assert q.running == [] and len(q) == 5


def test_finish_of_an_unknown_job_is_a_no_op() -> None:
    q = FairQueue()
    q.push(QueuedJob("1", 1, 1))
    q.finish("nope")
    q.finish("1")  # waiting, not running: nothing to finish
    assert [j.job_id for j in q.order()] == ["1"] and q.running == []


# -- held jobs (handed to a worker as ready-to-join, not started) ---------------------------
def test_held_jobs_keep_their_place_and_the_turns_move_when_they_start() -> None:
    q = FairQueue(Caps(per_user=99, per_guild=99, total=999))
    for n in range(1, 7):
        q.push(job(n, guild=1, user=7))
    assert [j.job_id for j in q.take_batch(2)] == ["1", "2"]
    assert [j.job_id for j in q.take_batch(2)] == ["3", "4"]  # the worker's prefetch
    assert len(q) == 2 and q.count() == 6 and [j.job_id for j in q.held] == ["1", "2", "3", "4"]
    assert "3" not in q and q.remove("3") is None  # a held job is cancelled via its worker
    q.start("1")
    q.start("2")
    q.push(job(9, guild=2, user=8))  # another server's job arrives
    assert [j.job_id for j in q.order(held=True)] == ["3", "9", "4", "5", "6"]
    assert [j.job_id for j in q.overtaken()] == ["4"]  # 9 goes ahead of it
    assert q.release("4") and not q.overtaken()
    assert [j.job_id for j in q.take_batch(1)] == ["9"]  # the place 4 would have taken
    assert [j.job_id for j in q.order()] == ["4", "5", "6"] and not q.overtaken()


def test_a_held_job_that_ends_without_a_start_moves_the_turns_all_the_same() -> None:
    q = FairQueue(Caps(per_user=99, per_guild=99, total=999))
    q.push(job(1, guild=1, user=7))
    q.push(job(2, guild=1, user=7))
    q.push(job(3, guild=2, user=8))
    [first] = q.take_batch(1)
    q.finish(first.job_id)  # e.g. its input failed to load in the worker
    assert q.running == [] and q.count() == 2
    assert [j.job_id for j in q.order()] == ["3", "2"]


def test_a_held_job_handed_back_unstarted_waits_where_it_was() -> None:
    q = FairQueue(Caps(per_user=99, per_guild=99, total=999))
    for n, guild in ((1, 1), (2, 2), (3, 1)):
        q.push(job(n, guild=guild, user=guild))
    batch = q.take_batch(2, key=lambda j: "same")
    for j in reversed(batch):
        q.requeue_front(j)  # its worker died before starting it
    assert q.held == [] and [j.job_id for j in q.order()] == ["1", "2", "3"]


def test_a_job_running_before_a_restart_counts_as_running_then_may_wait_again() -> None:
    q = FairQueue(Caps(per_user=2, per_guild=10, total=10))
    adopted = job(1, guild=1, user=7)
    q.mark_running(adopted)  # a remote worker may still run it
    q.push(job(2, guild=1, user=7))
    assert [j.job_id for j in q.running] == ["1"] and len(q) == 1
    with pytest.raises(QueueFull):
        q.check_caps(1, 7)  # it counts against the member's cap
    q.requeue_front(adopted)  # no worker had it: it waits again, first
    assert [j.job_id for j in q.order()] == ["1", "2"] and q.running == []


# -- counts kept as the queue changes (the dispatcher reads them on every pass) -------------
def test_kept_counts_agree_with_the_jobs_after_any_sequence_of_changes() -> None:
    """Length, membership, per-server/member counts, entries and the group check are kept
    as counts, not recounted, and the order is read lazily: after each of 2,000 random
    changes they must equal what the jobs themselves say (`running`, and the order as the
    eager interleave of every server's queue builds it)."""
    rng = random.Random(24)
    q = FairQueue(Caps(per_user=99, per_guild=999, total=9999))
    ids = iter(range(10**6))
    for _ in range(2000):
        running = [j for j in q.running if j not in q.held]
        waiting, held = q.order(), q.held
        move = rng.choice(
            ["push", "push", "push", "take", "start", "finish", "remove", "requeue",
             "group", "release", "mark", "pop"]
        )  # fmt: skip
        if move == "push":
            n, guild = next(ids), rng.randint(1, 4)
            group = rng.choice([None, None, f"s{rng.randint(1, 3)}"])
            q.push(QueuedJob(str(n), guild, guild * 10 + rng.randint(1, 3), "k", group))
        elif move == "take":
            q.take_batch(rng.randint(1, 3))
        elif move == "pop":
            q.pop_batch(rng.randint(1, 2))
        elif move == "start" and held:
            q.start(rng.choice(held).job_id)
        elif move == "finish" and (running or held):
            q.finish(rng.choice(running + held).job_id)
        elif move == "remove" and waiting:
            assert q.remove(rng.choice(waiting).job_id) is not None
        elif move == "requeue" and (running or held):
            q.requeue_front(rng.choice(running + held))
        elif move == "group" and (running or waiting):
            q.set_group(rng.choice(running + waiting).job_id, f"s{rng.randint(1, 3)}")
        elif move == "release" and held:
            q.release(rng.choice(held).job_id)
        elif move == "mark":
            n, guild = next(ids), rng.randint(1, 4)
            q.mark_running(QueuedJob(str(n), guild, guild * 10 + 1, "k"))
        active = [*q.running, *q.order()]
        everyone = _interleave([q.guild_waiting(g, held=True) for g in q._queues])
        assert q.order(held=True) == everyone  # the lazy order is the eager one
        assert q.order() == [j for j in everyone if j not in q.held]
        assert len(q) == len(q.order()) and q.count() == len(active)
        assert all(j.job_id in q for j in q.order()) and not any(j.job_id in q for j in q.held)
        for guild in range(1, 5):
            assert q.count(guild_id=guild) == sum(j.guild_id == guild for j in active)
            assert q.guild_depth(guild) == len(q.guild_waiting(guild))
            for user in (guild * 10 + u for u in range(1, 4)):
                mine = [j for j in active if j.user_id == user]
                assert q.count(user_id=user) == len(mine)
                assert q.count(guild_id=guild, user_id=user) == len(mine)
                loose = sum(j.group is None for j in mine)
                assert q.entries(user) == loose + len({j.group for j in mine if j.group})
        for group in ("s1", "s2", "s3"):  # at the cap: only a series already queued fits
            q.caps.per_user = q.entries(11)
            try:
                q.check_caps(1, 11, group=group)
                fits = True
            except QueueFull:
                fits = False
            q.caps.per_user = 99
            assert fits == any(j.group == group for j in active)
