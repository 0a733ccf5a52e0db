"""What the step batcher copies from diffusers is still what diffusers does.

`pipeline.stepbatch` re-implements `StableDiffusionImg2ImgPipeline.__call__` piece by piece
(timesteps after the strength cut, `prepare_latents`, the scheduler's extra step arguments,
classifier-free guidance, decode) so that jobs can share UNet calls. A diffusers release that
changes one of those pieces would give wrong pictures; the pixel-equality tests would say only
that pixels differ. Each check here compares one piece with diffusers' own on the tiny model
and fails with one line naming the installed diffusers version and the piece that changed.
The lock (requirements/*.lock) pins the version these checks passed with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

from pipeline.engine import Engine
from pipeline.stepbatch import StepLoop, _step_kwargs

SCHEDULERS = [
    ("DDIMScheduler", {}),
    ("PNDMScheduler", {"skip_prk_steps": True}),
    ("EulerDiscreteScheduler", {}),
    ("EulerAncestralDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    ("LCMScheduler", {}),
]


def changed(what: str) -> None:
    pytest.fail(
        f"diffusers {diffusers.__version__}: {what}; pipeline/stepbatch.py mirrors the old "
        "behaviour, so update it (and the lock) together",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Iterator[Any]:
    yield Engine.load(str(tiny_model_dir), device="cpu", resolution=64).pipe


def scheduler_of(pipe: Any, name: str, extra: dict[str, Any]) -> Any:
    cls = getattr(diffusers, name)
    config = {k: v for k, v in pipe.scheduler.config.items() if k in cls._get_init_keys(cls)}
    return cls.from_config({**config, **extra})


def params(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters)


def test_the_img2img_call_still_takes_the_steps_the_batcher_copies() -> None:
    source = inspect.getsource(diffusers.StableDiffusionImg2ImgPipeline.__call__)
    for call in (
        "self.encode_prompt(",
        "self.image_processor.preprocess(",
        "self.get_timesteps(",
        "self.prepare_latents(",
        "self.prepare_extra_step_kwargs(",
        "self.scheduler.scale_model_input(",
        "self.scheduler.step(",
        "self.get_guidance_scale_embedding(",
        "self.vae.decode(",
    ):
        if call not in source:
            changed(f"StableDiffusionImg2ImgPipeline.__call__ no longer calls {call[:-1]}")


def test_guidance_rows_follow_do_classifier_free_guidance() -> None:
    source = inspect.getsource(
        diffusers.StableDiffusionImg2ImgPipeline.do_classifier_free_guidance.fget
    )
    if "self._guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None" not in source:
        changed("do_classifier_free_guidance is no longer `guidance > 1 and no time_cond_proj_dim`")


@pytest.mark.parametrize(("name", "extra"), SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_timesteps_after_the_strength_cut(pipe: Any, name: str, extra: dict, strength: float):
    total = 10
    theirs = scheduler_of(pipe, name, extra)
    theirs.set_timesteps(total)
    original, pipe.scheduler = pipe.scheduler, theirs
    try:
        expected, _ = pipe.get_timesteps(total, strength, "cpu")
    finally:
        pipe.scheduler = original
    ours = scheduler_of(pipe, name, extra)
    ours.set_timesteps(total)
    got = StepLoop._get_timesteps(ours, total, strength)
    if not torch.equal(got, expected):
        changed(f"get_timesteps({total}, {strength}) on {name} gives other timesteps")
    if getattr(ours, "_begin_index", None) != getattr(theirs, "_begin_index", None):
        changed(f"get_timesteps on {name} sets another scheduler begin index")


def test_prepare_latents_draws_the_same_noise(pipe: Any) -> None:
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    scheduler = scheduler_of(pipe, "EulerAncestralDiscreteScheduler", {})
    scheduler.set_timesteps(10)
    timestep = scheduler.timesteps[5:6]
    original, pipe.scheduler = pipe.scheduler, scheduler
    try:
        expected = pipe.prepare_latents(
            image, timestep, 1, 1, torch.float32, "cpu", torch.Generator().manual_seed(7)
        )
    finally:
        pipe.scheduler = original
    loop = StepLoop(pipe, checker=None, max_batch=1)
    got = loop._prepare_latents(
        scheduler, image, timestep, torch.float32, "cpu", torch.Generator().manual_seed(7)
    )
    if not torch.equal(got, expected):
        changed("prepare_latents draws or scales the initial latents differently")


@pytest.mark.parametrize(("name", "extra"), SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_extra_step_arguments(pipe: Any, name: str, extra: dict) -> None:
    scheduler = scheduler_of(pipe, name, extra)
    generator = torch.Generator().manual_seed(0)
    original, pipe.scheduler = pipe.scheduler, scheduler
    try:
        expected = pipe.prepare_extra_step_kwargs(generator, 0.0)
    finally:
        pipe.scheduler = original
    if _step_kwargs(scheduler, generator, 0.0) != expected:
        changed(f"prepare_extra_step_kwargs passes other arguments to {name}.step")
    if not {"model_output", "timestep", "sample", "return_dict"} <= params(scheduler.step):
        changed(f"{name}.step no longer takes (model_output, timestep, sample, return_dict)")
    for attribute in ("order", "scale_model_input", "add_noise", "set_timesteps", "timesteps"):
        if not hasattr(scheduler, attribute):
            changed(f"{name} has no `{attribute}`")


def test_the_signatures_the_batcher_calls(pipe: Any) -> None:
    positional = ["prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance",
                  "negative_prompt"]
    if list(inspect.signature(pipe.encode_prompt).parameters)[:5] != positional:
        changed(f"encode_prompt no longer takes {positional} in this order")
    keywords = {
        "get_guidance_scale_embedding": (pipe.get_guidance_scale_embedding, {"embedding_dim"}),
        "image_processor.postprocess": (pipe.image_processor.postprocess,
                                        {"output_type", "do_denormalize"}),
        "vae.decode": (pipe.vae.decode, {"return_dict", "generator"}),
    }
    for name, (fn, names) in keywords.items():
        if not names <= params(fn):
            changed(f"{name} no longer takes {sorted(names - params(fn))}")
    if not hasattr(pipe, "_execution_device"):
        changed("the pipeline has no _execution_device")
