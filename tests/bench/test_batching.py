"""Same-key batching (`BATCHING=call`) end to end: JobService + the real worker on the tiny
model + a recorder.

Compatible jobs queued behind a running job must go to the worker as one call, in the
fair queue's round-robin order, and each must come out pixel-identical to the same job run
alone (the engine makes CPU batches batch-invariant). One service and worker serve the
module: spawning a worker imports torch, which takes seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bench.fullpath import FullPath
from bench.inputs import JobSpec, make_jobs
from pipeline.worker import Progress

module_loop = pytest.mark.asyncio(loop_scope="module")

RESOLUTION = 128
STEPS, STRENGTH, GUIDANCE = 4, 0.5, 7.5  # 2 denoising steps
GUILD_A, GUILD_B, GUILD_C = 101, 202, 303
TIMEOUT_S = 120.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def full(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FullPath]:
    settings = FullPath.settings_for(
        tmp_path_factory.mktemp("bench-data"),
        model_id=str(tiny_model_dir),
        device="cpu",
        dtype="auto",
        resolution=RESOLUTION,
        max_batch=4,
        progress_interval_s=0.0,
        batching="call",  # same-key batching; the step loop has tests/pipeline/test_stepbatch.py
    )
    path = FullPath(settings, start_timeout=120.0)
    await path.start()
    yield path
    await path.stop()


def jobs_of(full: FullPath, tag: str, *guilds: int) -> list[JobSpec]:
    """One job per entry of `guilds`; images, prompts, negative prompts and seeds differ."""
    specs = make_jobs(full.settings.data_dir, RESOLUTION, len(guilds), tag=tag)
    return [dataclasses.replace(s, guild_id=g) for s, g in zip(specs, guilds, strict=True)]


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


async def submit(full: FullPath, spec: JobSpec) -> int:
    assert full.service is not None
    job = await full.service.submit(full.new_job(spec, STEPS, STRENGTH, GUIDANCE))
    return job.id


async def wait_generating(full: FullPath, job_id: int) -> None:
    """Until the worker reports progress on `job_id`: it is really inside the model."""
    async with asyncio.timeout(TIMEOUT_S):
        while not any(
            isinstance(e, Progress) and str(job_id) in e.job_ids for _, e in full.worker.events
        ):
            await asyncio.sleep(0.01)


@module_loop
async def test_compatible_jobs_queued_behind_a_busy_worker_share_one_call(
    full: FullPath,
) -> None:
    a1, a2, b1, b2 = jobs_of(full, "rr", GUILD_A, GUILD_A, GUILD_B, GUILD_B)
    (blocker_spec,) = jobs_of(full, "blocker", GUILD_C)
    await full.idle()
    first = len(full.worker.batches)

    # A long job with another step plan keeps the worker busy while the four are queued.
    blocker = await submit(full, dataclasses.replace(blocker_spec, steps=60))
    await wait_generating(full, blocker)
    ids = {spec.name: await submit(full, spec) for spec in (a1, a2, b1, b2)}  # A, A, B, B
    assert full.worker.generating, "the blocker ended before the jobs were queued"
    await full.delivery.wait_for([blocker, *ids.values()], TIMEOUT_S)
    await full.idle()

    batches = [batch for _, batch in full.worker.batches[first:]]
    round_robin = tuple(str(ids[s.name]) for s in (a1, b1, a2, b2))
    # (a) one worker call for the four, (c) in round-robin order across the guilds
    assert batches == [(str(blocker),), round_robin]
    progress = [e for _, e in full.worker.events if isinstance(e, Progress)]
    assert any(p.job_ids == round_robin for p in progress)

    # (b) each batched image equals the same job run alone (MAX_BATCH=1), pixel for pixel
    alone = await full.run(
        [a1, a2, b1, b2], max_batch=1, steps=STEPS, strength=STRENGTH, guidance=GUIDANCE
    )
    assert [len(b) for b in alone.batches] == [1, 1, 1, 1]
    served = [alone.specs[b[0]].guild_id for b in alone.batches]
    assert served == [GUILD_A, GUILD_B, GUILD_A, GUILD_B]
    for job_id, spec in alone.specs.items():
        batched = full.delivery.results[ids[spec.name]].output_path
        assert batched is not None
        one = pixels(alone.outputs[job_id])
        many = pixels(str(full.settings.data_dir / batched))
        assert one.shape == many.shape == (RESOLUTION, RESOLUTION, 3)
        differ = int((one != many).sum())
        assert differ == 0, f"{spec.name}: {differ} values differ between batched and alone"


@module_loop
async def test_batching_never_lets_a_job_jump_an_incompatible_one(full: FullPath) -> None:
    """B's first job has another step count: round-robin serves it second, alone, though
    A's second job could have joined A's first; then A2 and B2 share a call."""
    a1, a2, b1, b2 = jobs_of(full, "mixed", GUILD_A, GUILD_A, GUILD_B, GUILD_B)
    b1 = dataclasses.replace(b1, steps=STEPS + 2)

    run = await full.run(
        [a1, a2, b1, b2], max_batch=4, steps=STEPS, strength=STRENGTH, guidance=GUIDANCE
    )

    names = [[run.specs[j].name for j in batch] for batch in run.batches]
    assert names == [[a1.name], [b1.name], [a2.name, b2.name]]
