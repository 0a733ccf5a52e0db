"""Section `swaps` of `make bench`: two models alternating on one worker that holds one.

The real bot side (`JobService`, its fair queue, routing and swap rule) in front of the real
local worker serving two tiny models (`make-tiny --seed 1` and `--seed 2`) with
RESIDENT_MODELS=1 and step batching. N_JOBS jobs, each from its own member, alternate the two
models, so fair order alternates too: a worker following it blindly would load a model for
every job. Reported:
- swaps_per_job: the worker's model loads (its `ModelLoading` events) ÷ jobs. Target ≤ 0.25.
- swap_displacement: the most places a job started later than its place in fair order
  (the swap rule's cost in fairness; bounded by SWAP_WINDOW plus a batch).
Runs in a process of its own (`python -m bench.swaps`, one JSON line out): the worker it
spawns imports torch, the bench process does not.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

N_JOBS = 16
SIZE = 64
MAX_BATCH = 2
STEPS = 4
TARGET = 0.25


class _Order:
    """A `Delivery` that records the order results are posted in."""

    def __init__(self) -> None:
        self.results: list[int] = []

    async def show_status(self, job: Any, text: str, cancellable: bool) -> None:
        pass

    async def deliver_result(self, job: Any) -> None:
        self.results.append(job.id)

    async def deliver_failure(self, job: Any, message: str) -> None:
        raise RuntimeError(f"job {job.id} failed: {message}")

    async def deliver_cancelled(self, job: Any) -> None:
        raise RuntimeError(f"job {job.id} was cancelled")

    async def deliver_withheld(self, job: Any) -> None:
        raise RuntimeError(f"job {job.id} was withheld")


def _job(n: int, model: str) -> Any:
    """Job n: its own member, so fair order is submission order."""
    from bot.jobs.service import NewJob

    return NewJob(
        guild_id=1, channel_id=2, user_id=100 + n, prompt="a fox", strength=1.0, steps=STEPS,
        guidance=7.5, input_path="inputs/x.png", input_width=SIZE, input_height=SIZE, seed=n,
        model=model,
    )  # fmt: skip


async def measure(work: Path) -> dict[str, Any]:
    from PIL import Image

    from bot.jobs.service import JobService
    from bot.store.db import Store
    from config import load_settings
    from pipeline.remote_worker import config_from_settings
    from pipeline.worker import WorkerClient

    for seed in (1, 2):
        subprocess.run(
            [sys.executable, "-m", "pipeline", "make-tiny", str(work / f"m{seed}"),
             "--seed", str(seed)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    models = work / "models.toml"
    models.write_text(
        f'[models.one]\nsource = "{work / "m1"}"\n[models.two]\nsource = "{work / "m2"}"\n'
    )
    data = work / "data"
    (data / "inputs").mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE), (200, 120, 40)).save(data / "inputs" / "x.png")
    settings = load_settings(
        _env_file=None, data_dir=data, models_file=models, resident_models=1,
        max_batch=MAX_BATCH, batching="step", resolution=SIZE, device="cpu",
        safety_checker="off", max_jobs_per_user=N_JOBS, progress_interval_s=0.0,
        mask_model_id="",
    )  # fmt: skip
    config = config_from_settings(settings)  # what the bot gives its local worker
    worker = WorkerClient(config, start_timeout=300.0, max_batch=MAX_BATCH)
    store = await Store.open(work / "bot.sqlite3")
    delivery = _Order()
    service = JobService(settings, store, worker, delivery)  # type: ignore[arg-type]
    loads: list[str] = []
    service.on_model_loading.append(lambda model, ids: loads.append(model))
    try:
        await service.start()
        await asyncio.wait_for(service.ready.wait(), 300.0)
        news = [_job(n, "one" if n % 2 == 0 else "two") for n in range(N_JOBS)]
        jobs = await service.submit_many(news)  # a backlog, as traffic builds one
        fair = [job.id for job in jobs]
        while len(delivery.results) < N_JOBS:
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
        await store.close()
    displacement = max(delivery.results.index(j) - fair.index(j) for j in fair)
    return {
        "jobs": N_JOBS,
        "swaps": len(loads),
        "swaps_per_job": len(loads) / N_JOBS,
        "swap_displacement": displacement,
        "swap_window": settings.swap_window,
    }


async def swaps_section(note: Any) -> dict[str, Any]:
    """`make bench`'s section, in its own process; its last line is the result."""
    note(f"swaps: {N_JOBS} jobs, two tiny models alternating, RESIDENT_MODELS=1")
    from bench.child import child_json

    return await child_json("bench.swaps")


def render_swaps(
    s: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    mark = "ok" if s["swaps_per_job"] <= TARGET else "MISSED"
    lines = [
        *lines,
        "",
        f"[9] swaps: {s['jobs']} jobs alternating two models on one worker, RESIDENT_MODELS=1, "
        f"SWAP_WINDOW={s['swap_window']}",
        f"    swaps_per_job              {s['swaps_per_job']:>8.3f}     target ≤ {TARGET:g}  {mark}"
        f"  ({s['swaps']} loads; largest displacement from fair order: "
        f"{s['swap_displacement']} places)",
    ]
    figures = {
        **figures,
        "swaps_per_job": s["swaps_per_job"],
        "swap_displacement": s["swap_displacement"],
    }
    return lines, figures


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(Path(tmp)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
