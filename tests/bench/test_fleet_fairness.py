"""The fleet benchmark's fairness figure counts what other servers cost a job, not what its
own server's earlier jobs do."""

from __future__ import annotations

from bench.fleet import fairness


def test_later_jobs_of_busier_servers_overtaking_a_waiting_job_are_counted() -> None:
    # q1 (a quiet server 1, one waiting) arrives first; busy server 2's five later jobs
    # (each with more waiting than server 1 had) all start before it.
    arrivals = {"q1": (0, 0, 0, 1)} | {f"b{i}": (i, 5 + i, 0, 2) for i in range(1, 6)}
    started = {"b1": 0, "b2": 1, "b3": 2, "b4": 3, "b5": 4, "q1": 5}
    assert fairness(arrivals, started) == 5


def test_jobs_that_arrived_earlier_or_from_quieter_servers_are_not_overtaking() -> None:
    arrivals = {"a": (1, 3, 0, 1), "early": (0, 9, 0, 2), "quiet": (2, 0, 0, 3)}
    started = {"early": 0, "quiet": 1, "a": 2}
    assert fairness(arrivals, started) == 0


def test_waiting_behind_its_own_servers_earlier_jobs_is_not_counted() -> None:
    # s2 waits behind s1 of its own server; busy server 2's later jobs start meanwhile, then
    # one more after s1 started, while s2 was its server's next job: only that one counts.
    arrivals = {
        "s1": (0, 0, 0, 1), "s2": (1, 1, 0, 1),
        "b1": (2, 5, 0, 2), "b2": (3, 6, 0, 2), "b3": (4, 7, 0, 2),
    }  # fmt: skip
    started = {"b1": 0, "s1": 1, "b2": 2, "s2": 3, "b3": 4}
    assert fairness(arrivals, started) == 1  # s1 by b1; s2 by b2 only (b1 came before s1)
    started = {"b1": 0, "b2": 1, "s1": 2, "s2": 3, "b3": 4}
    assert fairness(arrivals, started) == 2  # s1 by b1 and b2; s2 by none
