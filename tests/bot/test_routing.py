"""Routing by model and the swap rule (`bot.jobs.routing`), on the real fair queue."""

from __future__ import annotations

import pytest

from bot.jobs.routing import Residency, Route, SwapRule
from bot.jobs.scheduler import Caps, FairQueue, QueuedJob


def queue_of(models: list[str]) -> FairQueue:
    """One member per job, so fair order is submission order."""
    queue = FairQueue(Caps(100, 100, 1000))
    for n, model in enumerate(models):
        queue.push(QueuedJob(str(n), 1, n, ("k",), model=model))
    return queue


def key(job: QueuedJob) -> object:
    return job.model, job.batch_key


def run_one_worker(models: list[str], window: int, slots: int = 1) -> tuple[list[str], int]:
    """Serve the queue with one worker of `slots` resident models, a job at a time; returns
    the order jobs ran in and how many loads the worker did."""
    queue, rule, residency = queue_of(models), SwapRule(window), Residency(slots)
    ran: list[str] = []
    loads = 0
    while len(queue):
        route = Route(None, 1, None, residency.of(None))
        batch = rule.pick(queue.waiting(), route, 1, key)
        assert batch, "a free worker always gets a job"
        queue.hold(batch)
        for job in batch:
            if job.model not in residency.of(None):
                loads += 1
            residency.granted(None, job.model)
            queue.start(job.job_id)
            queue.finish(job.job_id)
            ran.append(job.job_id)
    return ran, loads


def test_alternating_models_load_rarely_and_nobody_waits_past_the_window() -> None:
    models = ["a", "b"] * 8
    ran, loads = run_one_worker(models, window=8)
    assert sorted(ran, key=int) == [str(n) for n in range(16)]
    assert loads / len(models) <= 0.25
    displacement = max(ran.index(str(n)) - n for n in range(16))
    assert displacement <= 8  # the documented bound: the window (a batch of one here)


def test_window_zero_is_strict_fair_order() -> None:
    ran, loads = run_one_worker(["a", "b"] * 4, window=0)
    assert ran == [str(n) for n in range(8)]
    assert loads == 8  # every change of model is a load: what the rule exists to avoid


def test_two_resident_models_never_swap() -> None:
    _, loads = run_one_worker(["a", "b"] * 6, window=0, slots=2)
    assert loads == 2


def test_a_worker_only_gets_the_models_it_serves() -> None:
    queue = queue_of(["b", "a", "b"])
    only_a = Route("w1", 4, frozenset({"a"}))
    batch = SwapRule(8).pick(queue.waiting(), only_a, 4, key)
    assert [j.job_id for j in batch] == ["1"]
    nobody = Route("w2", 4, frozenset({"c"}))
    assert SwapRule(8).pick(queue.waiting(), nobody, 4, key) == []


def test_a_job_whose_model_is_resident_elsewhere_waits_for_that_worker() -> None:
    queue = queue_of(["b", "b"])
    has_a = Route("w1", 1, None, ("a",))
    rule = SwapRule(8)
    assert rule.pick(queue.waiting(), has_a, 1, key, elsewhere=frozenset({"b"})) == []
    # with nothing resident elsewhere, the idle worker loads b rather than idle
    assert [j.job_id for j in rule.pick(queue.waiting(), has_a, 1, key)] == ["0"]


@pytest.mark.parametrize("window", [1, 3])
def test_a_passed_job_is_due_after_window_jobs(window: int) -> None:
    queue = queue_of(["b"] + ["a"] * 10)
    rule = SwapRule(window)
    route = Route(None, 1, None, ("a",))
    taken = []
    while True:
        batch = rule.pick(queue.waiting(), route, 1, key)
        queue.hold(batch)
        taken += [j.job_id for j in batch]
        if "0" in taken:
            break
    assert taken.index("0") == window  # exactly `window` jobs of `a` went ahead


def test_a_held_job_is_recalled_only_for_a_waiting_job_of_its_model() -> None:
    queue = queue_of(["b", "a", "a"])
    rule = SwapRule(8)
    batch = rule.pick(queue.waiting(), Route(None, 1, None, ("a",)), 1, key)
    queue.hold(batch)
    assert [j.job_id for j in batch] == ["1"]
    assert queue.overtaken() == []  # "b" ahead of it was passed over on purpose
    queue.push(QueuedJob("9", 0, 999, ("k",), model="a"))  # another server's "a" job
    assert [j.job_id for j in queue.overtaken()] == ["1"]
