"""A worker engine with no model, for the fleet benchmark and the burst e2e test.

Each job waits `FAKE_ENGINE_SECONDS` (1 s by default, the time SD-Turbo takes on a GPU),
reports its steps like an engine, and writes one small stored PNG. It imports no torch, so a
hundred workers fit in one process; everything around it is the real worker code
(`pipeline.worker_child`, `pipeline.remote_worker`), which loads it by reference
(`ENGINE_REF`) instead of `pipeline.engine:Engine`.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.request import EngineInfo, GenerationRequest, GenerationResult

ENGINE_REF = f"{__name__}:FakeEngine"
SECONDS_ENV = "FAKE_ENGINE_SECONDS"
SIZE = 64


class JobCancelled(Exception):
    """Raised when every job of a call was cancelled (the worker looks it up here)."""


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (40, 90, 160)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()


class FakeEngine:
    def __init__(self, info: EngineInfo, seconds: float) -> None:
        self.info = info
        self.seconds = seconds

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        resolution: int | None = None,
        safety_checker: str = "auto",
        **_: Any,
    ) -> FakeEngine:
        info = EngineInfo(
            model_id, "cpu", "fp32", resolution or 512, "FakeEngine",
            safety_checker="off" if safety_checker == "off" else "on",
        )  # fmt: skip
        return cls(info, float(os.environ.get(SECONDS_ENV, "1.0")))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        is_cancelled: Callable[[str], bool] | None = None,
        **_: object,
    ) -> list[GenerationResult]:
        total = max(1, requests[0].steps)
        start = time.monotonic()
        for step in range(1, total + 1):
            if is_cancelled and all(is_cancelled(r.job_id) for r in requests):
                raise JobCancelled
            # to each step's moment, not a step's length after the last: a hundred fake
            # workers share one process, and their waits for the GIL would add up to
            # jobs a tenth longer than the second they stand for
            time.sleep(max(0.0, start + self.seconds * step / total - time.monotonic()))
            if on_progress:
                on_progress(step, total)
        results = []
        for r in requests:
            Path(r.output_path).parent.mkdir(parents=True, exist_ok=True)
            Path(r.output_path).write_bytes(PNG)
            results.append(
                GenerationResult(
                    r.job_id, r.output_path, r.seed, total, total, SIZE, SIZE, self.seconds
                )
            )
        return results
