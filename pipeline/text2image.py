"""Text-to-image on the pipeline-call path (models without step support, and the CLI).

Part of the engine (imported only by `pipeline.engine`). The text-to-image pipeline is built
once from the loaded img2img pipeline with `from_pipe`, so it shares every component (and
the batch-invariance patches) instead of loading the model twice. Jobs of one call share
their size, step count and guidance; each keeps its own CPU generator, so a job's pixels
equal the same job run alone (and its row in the step loop, `pipeline.stepbatch`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image

from pipeline.request import GenerationRequest, GenerationResult
from pipeline.results import store_result

log = logging.getLogger(__name__)


def text2image_pipe(engine: Any) -> Any:
    """The engine's text-to-image pipeline, made on first use from its loaded components."""
    pipe = getattr(engine, "_text2image", None)
    if pipe is None:
        pipe = AutoPipelineForText2Image.from_pipe(engine.pipe)
        pipe.set_progress_bar_config(disable=True)
        engine._text2image = pipe
    return pipe


def generate_text2image(
    engine: Any,
    requests: Sequence[GenerationRequest],
    *,
    on_progress: Callable[[int, int], None] | None = None,
    is_cancelled: Callable[[str], bool] | None = None,
    on_cancelled: Callable[[str], None] | None = None,
) -> list[GenerationResult]:
    """Run text-to-image requests of one size, step count and guidance in one call.

    Like `Engine.generate`: results in request order for the jobs that ran to the end, a
    cancelled job goes to `on_cancelled` and the engine's `JobCancelled` ends the call once
    all are. Raises `ValueError` if the requests cannot share a call."""
    from pipeline.engine import CallProgress

    keys = {(r.start.size if r.start else None, r.steps, r.guidance) for r in requests}
    if len(keys) > 1 or any(r.start is None for r in requests):
        raise ValueError("text-to-image requests in one call must share size, steps, guidance")
    started = time.perf_counter()
    first = requests[0]
    assert first.start is not None
    pipe = text2image_pipe(engine)
    progress = CallProgress(
        pipe, [r.job_id for r in requests], first.steps, on_progress=on_progress,
        is_cancelled=is_cancelled, on_cancelled=on_cancelled,
    )  # fmt: skip
    output = pipe(
        prompt=[r.prompt for r in requests],
        negative_prompt=[r.negative_prompt or "" for r in requests],
        width=first.start.width,
        height=first.start.height,
        num_inference_steps=first.steps,
        guidance_scale=float(first.guidance),
        generator=[torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in requests],
        output_type="pil",
        callback_on_step_end=progress,
    )
    seconds = time.perf_counter() - started
    kept = [
        (req, image)
        for req, image in zip(requests, output.images, strict=True)
        if req.job_id not in progress.cancelled
    ]
    checker = engine.checker
    flags = checker.flags([image for _, image in kept]) if checker else [False] * len(kept)
    log.info(
        "text-to-image batch of %d (%d cancelled, %d flagged) at %dx%d in %.2f s",
        len(requests), len(progress.cancelled), sum(flags), *first.start.size, seconds,
    )  # fmt: skip
    return [
        store_result(
            req,
            image,
            flagged,
            checked=checker is not None,
            steps_run=progress.reported,
            steps_total=first.steps,
            seconds=seconds,
        )
        for (req, image), flagged in zip(kept, flags, strict=True)
    ]
