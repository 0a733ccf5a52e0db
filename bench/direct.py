"""The baseline: a plain diffusers loop, one pipeline call per image, in its own process.

It is what someone would write without the bot: `AutoPipelineForImage2Image.from_pretrained`
(safety checker off, as the engine does), then for each job open the image, call the
pipeline with the job's prompt, strength, steps, guidance and a CPU generator seeded with
the job's seed (the engine's choice, so the noise is the same), and save the PNG. No
channels_last, no compile, no batch-invariance patches. It runs in a separate process so
that the bench process (the bot side) never imports torch and its RSS stays the bot's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.inputs import JobSpec
from pipeline.request import plan_steps

START_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class DirectRun:
    """Seconds of each pipeline call (image load and PNG save included) and in all."""

    calls: list[float]
    wall: float
    outputs: list[str]
    images: int

    batch: int = 1

    @property
    def unit_times(self) -> list[float]:
        """Seconds per image of each call (a call's time shared by its images)."""
        sizes = [min(self.batch, self.images - i * self.batch) for i in range(len(self.calls))]
        return [c / n for c, n in zip(self.calls, sizes, strict=True) for _ in range(n)]


def _direct_main(conn: Connection, model_id: str, device: str, dtype: str) -> None:
    """Child process: load the pipeline, then serve `run` commands until `stop`."""
    try:
        import torch
        from diffusers import AutoPipelineForImage2Image
        from diffusers.utils import deprecation_utils

        from pipeline.engine import resolve_device, resolve_dtype

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        dtype_kwarg = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        kwargs: dict[str, Any] = {dtype_kwarg: torch_dtype}
        config = AutoPipelineForImage2Image.load_config(model_id)
        if isinstance(config, dict) and "safety_checker" in config:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipe = AutoPipelineForImage2Image.from_pretrained(model_id, **kwargs).to(dev)
        pipe.set_progress_bar_config(disable=True)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(
        ("ready", {"device": dev, "dtype": str(torch_dtype), "threads": torch.get_num_threads()})
    )
    from PIL import Image

    while True:
        command = conn.recv()
        if command[0] != "run":
            return
        _, jobs, batch, steps, strength, guidance, out_dir = command
        total, _ = plan_steps(steps, strength)
        calls, outputs = [], []
        started = time.perf_counter()
        for i in range(0, len(jobs), batch):
            chunk: list[JobSpec] = jobs[i : i + batch]
            t = time.perf_counter()
            images = []
            for job in chunk:
                with Image.open(job.image_path) as src:
                    images.append(src.convert("RGB"))
            result = pipe(
                prompt=[j.prompt for j in chunk],
                negative_prompt=[j.negative_prompt or "" for j in chunk],
                image=images,
                strength=strength,
                num_inference_steps=total,
                guidance_scale=guidance,
                generator=[torch.Generator("cpu").manual_seed(j.seed) for j in chunk],
            )
            for job, image in zip(chunk, result.images, strict=True):
                path = f"{out_dir}/{job.name}.png"
                image.save(path, format="PNG")
                outputs.append(path)
            calls.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
        conn.send(("done", DirectRun(calls, wall, outputs, len(jobs), batch)))


class DirectRunner:
    """Parent side: start the loop's process once, then time runs on it."""

    def __init__(self, model_id: str, *, device: str, dtype: str) -> None:
        self.model_id, self.device, self.dtype = model_id, device, dtype
        self.info: dict[str, Any] = {}
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> dict[str, Any]:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_direct_main,
            args=(child, self.model_id, self.device, self.dtype),
            name="bench-direct",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        kind, payload = await self._recv(START_TIMEOUT_S)
        if kind != "ready":
            raise RuntimeError(f"direct loop could not load {self.model_id!r}: {payload}")
        self.info = payload
        return payload

    async def run(
        self,
        jobs: Sequence[JobSpec],
        *,
        batch: int,
        steps: int,
        strength: float,
        guidance: float,
        out_dir: str,
        timeout: float = 1800.0,
    ) -> DirectRun:
        assert self._conn is not None, "start() first"
        self._conn.send(("run", list(jobs), batch, steps, strength, guidance, out_dir))
        kind, payload = await self._recv(timeout)
        if kind != "done":
            raise RuntimeError(f"direct loop failed: {payload}")
        return payload

    async def _recv(self, timeout: float) -> tuple[str, Any]:
        conn = self._conn
        assert conn is not None

        def wait() -> tuple[str, Any]:
            if not conn.poll(timeout):
                return "error", f"no answer in {timeout:g} s"
            try:
                return conn.recv()
            except EOFError:
                return "error", f"process exited (code {self._proc.exitcode})"

        return await asyncio.to_thread(wait)

    async def stop(self, *, quick: bool = False) -> None:
        """End the process: after its current run, or at once if `quick`."""
        if self._conn is not None and not quick:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))
        if self._proc is not None:
            await asyncio.to_thread(self._proc.join, 0.0 if quick else 10.0)
            if self._proc.is_alive():
                self._proc.kill()
                await asyncio.to_thread(self._proc.join, 5.0)
        if self._conn is not None:
            self._conn.close()
        self._conn = self._proc = None
