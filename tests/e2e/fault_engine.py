"""A real engine that can be told to break its device, for the e2e fault tests.

The worker imports it by reference (`WorkerClient._engine_ref`), so it lives in a module of
its own that imports neither discord nor pytest. A prompt containing `BREAK_PROMPT` raises
the error a CUDA device-side assert gives, which makes the worker exit with code 70 after
the batch (or the step-batching set); every other prompt runs the real engine on the tiny
model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.engine import Engine, JobCancelled
from pipeline.request import GenerationRequest, GenerationResult

BREAK_PROMPT = "break the device"
ENGINE_REF = f"{__name__}:DeviceBreakingEngine"

__all__ = ["BREAK_PROMPT", "ENGINE_REF", "DeviceBreakingEngine", "JobCancelled"]


class DeviceBreakingEngine(Engine):
    def generate(self, requests: Sequence[GenerationRequest], **kw: Any) -> list[GenerationResult]:
        if any(BREAK_PROMPT in r.prompt for r in requests):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return super().generate(requests, **kw)

    def run_steps(self, first: Sequence[GenerationRequest], hooks: Any, **kw: Any) -> None:
        """The step-batching path (BATCHING=step) breaks the same way."""
        more = kw.pop("more", None)

        def check(requests: Sequence[GenerationRequest]) -> Sequence[GenerationRequest]:
            if any(BREAK_PROMPT in r.prompt for r in requests):
                raise RuntimeError("CUDA error: device-side assert triggered")
            return requests

        check(first)
        super().run_steps(first, hooks, more=lambda: check(more() if more else ()), **kw)
