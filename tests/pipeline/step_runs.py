"""Running jobs through the engine's step path in pipeline tests: what each test file of
step rows (LoRA rows, structure rows…) needs, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.request import GenerationRequest, GenerationResult
from pipeline.stepbatch import StepHooks


class Results:
    """What `run_steps` finished and failed, by job id."""

    def __init__(self) -> None:
        self.done: dict[str, GenerationResult] = {}
        self.failed: dict[str, str] = {}

    def hooks(self) -> StepHooks:
        return StepHooks(
            on_finished=lambda r: self.done.__setitem__(r.job_id, r),
            on_failed=lambda j, m: self.failed.__setitem__(j, m),
        )


def png(path: str | GenerationResult) -> np.ndarray:
    """A written PNG's RGB pixels as int16 (differences do not wrap around)."""
    if isinstance(path, GenerationResult):
        path = path.output_path
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def run(engine: Any, jobs: list[GenerationRequest], max_batch: int = 4) -> Results:
    results = Results()
    engine.run_steps(jobs, results.hooks(), max_batch=max_batch)
    return results


def alone(engine: Any, req: GenerationRequest, tmp_path: Path) -> np.ndarray:
    """The job on its own through the engine's step path (its own set of one)."""
    solo = GenerationRequest(**{**req.__dict__, "output_path": str(tmp_path / "solo.png")})
    (result,) = run(engine, [solo]).done.values()
    return png(result)
