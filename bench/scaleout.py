"""Scale-out section of `make bench`: the job path through Valkey against the local worker,
and two remote workers against one.

- ratio_redis_local: one `python -m pipeline worker` through a local Valkey server vs. the
  local spawned worker, same jobs (SIZE px, MAX_BATCH=1), same torch threads (target ≥ 0.90:
  the streams cost little next to a denoising run).
- ratio_2workers: two remote workers with one CPU thread each vs. one worker with one
  thread (target ≥ 1.7 on a 2-core machine: the bot's scheduling keeps both busy).

Both use the real `JobService` with `RedisBackend` (bot side) and real worker processes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.fullpath import FullPath, Recording
from bench.inputs import JobSpec, make_jobs
from bench.report import ratio
from bench.scenarios import Bench, ModeResult, _rounds
from bench.valkey import Valkey
from bot.jobs.backends.redis import RedisBackend
from config import Settings

WORKER_START_TIMEOUT_S = 900.0


class RecordingRedis(Recording, RedisBackend):
    """`RedisBackend`, recorded, with what `FullPath.run` reads besides: `generating`."""

    @property
    def free_slots(self) -> int:
        return 0 if self.hold else super().free_slots

    @property
    def generating(self) -> bool:
        return bool(self._jobs)


class RedisFullPath(FullPath):
    """`FullPath` whose service drives remote workers through `url`."""

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings)
        self.worker = RecordingRedis(  # type: ignore[assignment]
            url, model_id=settings.model_id, resolution=settings.resolution, heartbeat_s=10.0
        )


class Workers:
    """`python -m pipeline worker` processes, started and stopped by the section."""

    def __init__(self, url: str, settings: Settings, log: Path) -> None:
        self.url, self.settings, self.log = url, settings, log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, threads: int | None) -> None:
        s = self.settings
        env = {
            **os.environ,
            "MODEL_ID": s.model_id,
            "DEVICE": s.device,
            "DTYPE": s.dtype,
            "RESOLUTION": str(s.resolution),
            "MAX_BATCH": "1",
            "COMPILE": str(s.compile).lower(),
            "CHANNELS_LAST": str(s.channels_last).lower(),
            "LOG_LEVEL": "WARNING",
        }
        env.pop("REDIS_URL", None)
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        with self.log.open("ab") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline", "worker", "--redis", self.url, "--id", name],
                    env=env,
                    stdout=out,
                    stderr=out,
                )
            )

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def _online(backend: RedisBackend, count: int) -> None:
    async with asyncio.timeout(WORKER_START_TIMEOUT_S):
        while backend.workers_online != count:
            await asyncio.sleep(0.1)


async def scaleout(
    bench: Bench,
    local: FullPath,
    work: Path,
    log: Path,
    *,
    size: int,
    n: int,
    rounds: int,
    note: Callable[[str], None],
) -> dict[str, Any]:
    """Both scale-out ratios, against `local` (a started local full path at `size` px)."""
    server = Valkey(work / "valkey-data")
    server.workdir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(server.start)
    settings = local.settings.model_copy(update={"data_dir": work / f"data-redis-{size}"})
    full = RedisFullPath(settings, server.url)
    workers = Workers(server.url, settings, log)
    backend = full.worker
    assert isinstance(backend, RecordingRedis)
    data_dir = local.settings.data_dir
    jobs = make_jobs(data_dir, size, n, tag=f"scale{size}", seed0=3000)
    redis_jobs = make_jobs(settings.data_dir, size, n, tag=f"scale{size}", seed0=3000)
    warm = redis_jobs[:1]
    p = bench.params

    async def warm_up(specs: Sequence[JobSpec]) -> None:
        """Untimed: a new worker's first call pays for allocation."""
        await full.run(specs, max_batch=1, steps=p.steps, strength=p.strength, guidance=p.guidance)

    try:
        await full.start()
        note(f"{size} px: one remote worker through Valkey vs the local worker")
        workers.start("bench-1", threads=None)
        await _online(backend, 1)
        await warm_up(warm)
        local_mode, redis_mode = ModeResult("local"), ModeResult("redis")

        async def on_local() -> None:
            local_mode.add_full(await bench.run_full(local, jobs, 1, "scale-local"))

        async def on_redis() -> None:
            redis_mode.add_full(await bench.run_full(full, redis_jobs, 1, "scale-redis"))

        await _rounds(rounds, [on_local, on_redis])
        workers.stop()
        await _online(backend, 0)

        note(f"{size} px: two remote workers with one thread each vs one")
        one, two = ModeResult("1 worker"), ModeResult("2 workers")
        workers.start("bench-t1", threads=1)
        await _online(backend, 1)
        await warm_up(warm)
        for _ in range(rounds):
            one.add_full(await bench.run_full(full, redis_jobs, 1, "scale-1worker"))
        workers.start("bench-t2", threads=1)
        await _online(backend, 2)
        await warm_up(redis_jobs[:2])
        mark = len(backend.granted)
        for _ in range(rounds):
            two.add_full(await bench.run_full(full, redis_jobs, 1, "scale-2workers"))
        served = {backend.ran_by.get(j) for j in list(backend.granted)[mark:]}
    finally:
        workers.stop()
        await full.stop()
        await asyncio.to_thread(server.stop)
    return {
        "local": local_mode.summary(),
        "redis": redis_mode.summary(),
        "one_worker": one.summary(),
        "two_workers": two.summary(),
        "workers_served": sorted(w for w in served if w),
        "ratio_redis_local": ratio(redis_mode.ips, local_mode.ips),
        "ratio_redis_local_wall": ratio(redis_mode.ips_wall, local_mode.ips_wall),
        "ratio_2workers": ratio(two.ips, one.ips),
        "ratio_2workers_wall": ratio(two.ips_wall, one.ips_wall),
    }
