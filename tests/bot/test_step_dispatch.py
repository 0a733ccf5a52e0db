"""Batch keys under step batching: jobs share a running set by size alone."""

from __future__ import annotations

from types import SimpleNamespace

from bot.jobs.dispatch import JobDispatch
from bot.jobs.scheduler import QueuedJob
from pipeline.request import EngineInfo, plan_steps


def key(step_slots: int, size: tuple[int, int], steps: int, strength: float, guidance: float):
    info = EngineInfo("tiny", "cpu", "fp32", 256, "Fake", step_slots=step_slots)
    service = SimpleNamespace(engine_info=info, resolution=256)
    queued = QueuedJob("1", 1, 2, (size, plan_steps(steps, strength), guidance, "img2img"))
    return JobDispatch._batch_key(service, queued)  # type: ignore[arg-type]


def test_step_batching_keys_by_size_only() -> None:
    mixed = {key(4, (640, 480), s, st, g) for s, st, g in ((20, 0.35, 7.5), (30, 0.8, 0.0))}
    assert len(mixed) == 1
    assert key(4, (640, 480), 20, 0.5, 7.5) != key(4, (480, 640), 20, 0.5, 7.5)
    assert key(4, (1024, 768), 20, 0.5, 7.5) == key(4, (640, 480), 30, 0.65, 3.0)  # same shape


def test_call_batching_keeps_the_full_key() -> None:
    assert key(0, (640, 480), 20, 0.35, 7.5) != key(0, (640, 480), 30, 0.8, 7.5)
    assert key(0, (640, 480), 20, 0.5, 7.5) != key(0, (640, 480), 20, 0.5, 0.0)
    assert key(0, (640, 480), 20, 0.5, 7.5) == key(0, (640, 480), 20, 0.5, 7.5)
