"""A real engine whose step loop fails where a prompt says, for the worker's error tests.

The worker imports it by reference (`WorkerClient._engine_ref`), so it imports neither
pytest nor the tests. The faults are raised by the real call they stand for, during
`run_steps` only (in the worker process): a prompt holding `DECODE_OOM` makes the VAE
decode of that job raise the out-of-memory error CUDA gives; a prompt holding `UNET_ERROR`
makes the UNet call of the set it runs in raise it (a set too big); one holding
`DEVICE_ASSERT` makes that call raise the error a broken device gives (the worker exits).
Every other prompt runs the real engine on the tiny model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from pipeline.engine import Engine, JobCancelled
from pipeline.request import GenerationRequest
from pipeline.stepbatch import StepLoop

DECODE_OOM = "[oom in decode]"
UNET_ERROR = "[unet call fails]"
DEVICE_ASSERT = "[device breaks]"
ENGINE_REF = f"{__name__}:FaultyStepEngine"

__all__ = [
    "DECODE_OOM",
    "DEVICE_ASSERT",
    "ENGINE_REF",
    "UNET_ERROR",
    "FaultyStepEngine",
    "JobCancelled",
]


@contextlib.contextmanager
def _raising(module: Any, name: str, exc: BaseException) -> Iterator[None]:
    """`module.name(...)` raises `exc` inside the block (an attribute on the instance)."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    setattr(module, name, fail)
    try:
        yield
    finally:
        delattr(module, name)


class FaultyStepEngine(Engine):
    def run_steps(self, first: Sequence[GenerationRequest], hooks: Any, **kw: Any) -> None:
        finish, unet = StepLoop._finish, StepLoop._unet

        def faulty_finish(loop: StepLoop, job: Any) -> Any:
            if DECODE_OOM not in job.req.prompt:
                return finish(loop, job)
            oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            with _raising(loop.pipe.vae, "decode", oom):
                return finish(loop, job)

        def faulty_unet(loop: StepLoop, jobs: list[Any]) -> Any:
            prompts = " ".join(job.req.prompt for job in jobs)
            if DEVICE_ASSERT in prompts:
                error: BaseException = RuntimeError("CUDA error: device-side assert triggered")
            elif UNET_ERROR in prompts:
                error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
            else:
                return unet(loop, jobs)
            with _raising(loop.pipe.unet, "forward", error):
                return unet(loop, jobs)

        StepLoop._finish, StepLoop._unet = faulty_finish, faulty_unet  # type: ignore[method-assign]
        try:
            super().run_steps(first, hooks, **kw)
        finally:
            StepLoop._finish, StepLoop._unet = finish, unet  # type: ignore[method-assign]
