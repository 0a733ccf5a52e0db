"""How worker processes start: forked from one fork server that imported torch once, with the
bot's environment as it is at each start (what a spawned worker would have had)."""

from __future__ import annotations

import os
import sys
from typing import Any

import psutil
import pytest

from pipeline.request import EngineInfo
from pipeline.worker import WorkerClient, WorkerConfig, start_context

MARK_ENV = "IMG2IMG_TEST_WORKER_MARK"
ENGINE_REF = f"{__name__}:EnvEngine"


class EnvEngine:
    """No model: says, through its engine info, what `MARK_ENV` the worker process saw."""

    def __init__(self, info: EngineInfo) -> None:
        self.info = info

    @classmethod
    def load(cls, model_id: str, **_: Any) -> EnvEngine:
        mark = os.environ.get(MARK_ENV, "unset")
        return cls(EngineInfo(model_id, "cpu", "fp32", 64, f"EnvEngine:{mark}"))


async def started_worker() -> tuple[EngineInfo, int]:
    """Start a worker, return what it loaded and the pid of its parent process; stop it."""
    client = WorkerClient(WorkerConfig("env-engine"), start_timeout=120.0)
    client._engine_ref = ENGINE_REF
    info = await client.start()
    try:
        parent = psutil.Process(client._proc.pid).ppid()
    finally:
        await client.stop()
    return info, parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server: Linux here")
async def test_workers_fork_from_one_server_and_see_the_environment_of_their_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert start_context().get_start_method() == "forkserver"
    monkeypatch.setenv(MARK_ENV, "first")
    first, first_parent = await started_worker()
    monkeypatch.setenv(MARK_ENV, "second")  # after the fork server started
    second, second_parent = await started_worker()
    assert (first.pipeline_class, second.pipeline_class) == ("EnvEngine:first", "EnvEngine:second")
    # Both forked by the same server process, not by this one (nor spawned by it).
    assert first_parent == second_parent != os.getpid()
