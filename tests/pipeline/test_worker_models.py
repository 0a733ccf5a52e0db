"""A worker serving two catalogue models with RESIDENT_MODELS=1 (`pipeline.models`).

Jobs of A, then B, then A each equal their own model's solo run (pixels), the swap waits
for A's running job to drain, each load is announced (ModelLoading with the jobs waiting on
it, ModelLoaded with what is resident, never more than one model); a job for a model the
worker does not serve, or for one that fails to load, fails alone with a plain message and
the worker goes on serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from pipeline.request import GenerationRequest
from pipeline.served_models import ModelSpec
from pipeline.worker import (
    BatchDone,
    Failed,
    Finished,
    ModelLoaded,
    ModelLoading,
    WorkerClient,
    WorkerConfig,
    WorkerEvent,
)

module_loop = pytest.mark.asyncio(loop_scope="module")
EVENT_TIMEOUT_S = 120.0


def request(tmp: Path, job_id: str, model: str, *, steps: int = 3, seed: int = 5):
    image_path = tmp / f"{job_id}-in.png"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(image_path)
    return GenerationRequest(
        job_id=job_id, image_path=str(image_path), prompt="a fox", strength=1.0, seed=seed,
        steps=steps, guidance=7.5, output_path=str(tmp / f"{job_id}-out.png"), model=model,
    )  # fmt: skip


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(
    tiny_model_pair: tuple[Path, Path], checker_dirs: dict[str, Path], tmp_path_factory
) -> AsyncIterator[WorkerClient]:
    a, b = tiny_model_pair
    missing = tmp_path_factory.mktemp("gone") / "no-such-model"
    specs = (ModelSpec("a", str(a), None, 64), ModelSpec("b", str(b), None, 64),
             ModelSpec("broken", str(missing), None, 64))  # fmt: skip
    config = WorkerConfig(
        str(a), device="cpu", resolution=64, safety_checker_id=str(checker_dirs["none"]),
        batching="step", models=specs, resident_models=1,
    )  # fmt: skip
    worker = WorkerClient(config, start_timeout=120.0, max_batch=2)
    await worker.start()
    yield worker
    await worker.stop()


async def collect(client: WorkerClient, batches: int) -> list[WorkerEvent]:
    events: list[WorkerEvent] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while sum(isinstance(e, BatchDone) for e in events) < batches:
            events.append(await client.next_event())
    return events


def solo(model_dir: Path, checker: Path, req: GenerationRequest) -> np.ndarray:
    """The job alone through its model's own diffusers pipeline call (a fresh load)."""
    from pipeline.engine import Engine

    engine = Engine.load(
        str(model_dir), device="cpu", resolution=64, safety_checker_id=str(checker)
    )
    with Image.open(req.image_path) as src:
        image = src.convert("RGB")
    out = engine.pipe(
        prompt=req.prompt, image=image, strength=req.strength, num_inference_steps=req.steps,
        guidance_scale=req.guidance, generator=torch.Generator("cpu").manual_seed(req.seed),
    ).images[0]  # fmt: skip
    return np.asarray(out)


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@module_loop
async def test_a_then_b_then_a_each_on_its_own_model(
    client: WorkerClient, tmp_path: Path, tiny_model_pair: tuple[Path, Path],
    checker_dirs: dict[str, Path],
) -> None:  # fmt: skip
    assert client.info is not None
    assert (client.info.models, client.info.resident) == (("a", "b", "broken"), ("a",))
    a1 = request(tmp_path, "a1", "")  # "": the worker's default model, a
    b1 = request(tmp_path, "b1", "b")
    a2 = request(tmp_path, "a2", "a", seed=9, steps=6)  # ends after a1: may not join it
    for req in (a1, b1, a2):  # fair order A, B, A, all in the worker at once
        client.submit([req])
    events = await collect(client, 3)

    finished = {e.job_id: e.result for e in events if isinstance(e, Finished)}
    assert set(finished) == {"a1", "b1", "a2"}
    swaps = (ModelLoading, ModelLoaded)
    loads = [(type(e).__name__, e.model) for e in events if isinstance(e, swaps)]
    assert loads == [("ModelLoading", "b"), ("ModelLoaded", "b"), ("ModelLoading", "a"),
                     ("ModelLoaded", "a")]  # fmt: skip
    assert all(len(e.resident) == 1 for e in events if isinstance(e, ModelLoaded))
    (loading_b,) = [e for e in events if isinstance(e, ModelLoading) and e.model == "b"]
    assert loading_b.job_ids == ("b1",)
    order = [getattr(e, "job_id", None) or getattr(e, "model", None) for e in events]
    assert order.index("a1") < order.index("b")  # the swap waited for a1 to drain
    assert client.info.resident == ("a",)

    checker = checker_dirs["none"]
    model_a, model_b = tiny_model_pair
    b_on_b = solo(model_b, checker, b1)
    assert np.array_equal(pixels(finished["b1"].output_path), b_on_b)
    assert not np.array_equal(b_on_b, solo(model_a, checker, b1))  # the models differ
    for req in (a1, a2):
        assert np.array_equal(pixels(finished[req.job_id].output_path), solo(model_a, checker, req))


@module_loop
async def test_unserved_and_broken_models_fail_only_their_jobs(
    client: WorkerClient, tmp_path: Path
) -> None:
    client.submit([request(tmp_path, "x1", "anime")])
    client.submit([request(tmp_path, "x2", "broken")])
    client.submit([request(tmp_path, "ok", "a")])
    events = await collect(client, 3)

    failed = {e.job_id: e.message for e in events if isinstance(e, Failed)}
    assert set(failed) == {"x1", "x2"}
    assert "'anime' is not available" in failed["x1"]
    assert "'broken' could not be loaded" in failed["x2"]
    assert not any("no-such-model" in m or "Error" in m for m in failed.values())  # no path
    assert [e.job_id for e in events if isinstance(e, Finished)] == ["ok"]
    loaded = [e for e in events if isinstance(e, ModelLoaded)]
    assert [(e.model, e.model in e.resident) for e in loaded] == [("broken", False), ("a", True)]
    assert client.info is not None and client.info.resident == ("a",)
