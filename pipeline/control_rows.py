"""ControlNets next to a model, and per-row ControlNet residuals in a shared UNet call.

Part of the engine (imported by `pipeline.engine` and `pipeline.stepbatch`). A worker loads
one ControlNet per structure kind it is configured for (`load_controlnets`, next to the
model, in its dtype; none when unset). In the step path a UNet call holds rows with and
without structure, of different kinds, maps and weights (`residuals`): each kind's
ControlNet runs once on its rows only, each row's residuals are scaled by its own weight,
and rows without structure get zeros (adding zero changes no bit, so a free row gives the
same pixels as in a call without any ControlNet).

Each structure row is computed as `StableDiffusionControlNetImg2ImgPipeline.__call__`
computes it alone (guess mode off): the map through its `control_image_processor` (no
normalisation), repeated for the two guidance halves, the ControlNet run on both halves
with the row's prompt embeds, and its residuals times `controlnet_conditioning_scale`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pipeline.request import (
    STRUCTURE_KINDS,
    GenerationRequest,
    GenerationResult,
    structure_map_path,
    structure_missing,
)
from pipeline.structure import MapSettings, structure_map, thumbnail

log = logging.getLogger(__name__)


@dataclass
class Controls:
    """The ControlNets loaded for one model (kind → model) and how maps are made."""

    nets: dict[str, Any] = field(default_factory=dict)
    maps: MapSettings = field(default_factory=MapSettings)
    processor: VaeImageProcessor | None = None
    """diffusers' control-image preprocessing (the ControlNet pipelines' own settings)."""
    pipes: dict[str, Any] = field(default_factory=dict)
    """The model's ControlNet pipelines by kind, for the pipeline-call path."""

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in STRUCTURE_KINDS if k in self.nets)

    def map_for(self, req: GenerationRequest, image: Image.Image) -> Image.Image:
        """The job's map, from its input at the generated size."""
        assert req.control is not None
        return structure_map(image, req.control.kind, self.maps)

    def refusal(self, req: GenerationRequest) -> str | None:
        """Why `req`'s structure cannot run here (plain words for the member), or None."""
        if req.control is None:
            return None
        if req.control.kind not in self.nets:
            return structure_missing(req.control.kind, self.kinds)
        if req.start is not None or req.mode != "img2img":
            return "Structure needs an input picture to follow; it works with /img2img."
        return None

    def call_pipe(
        self, pipe: Any, requests: Sequence[GenerationRequest], images: Sequence[Image.Image]
    ) -> tuple[Any, dict[str, Image.Image], dict[str, Any]]:
        """The pipeline-call path for requests of one structure (all share it): the model's
        own pipeline, or its ControlNet img2img pipeline for that kind (diffusers'
        `from_pipe`: the same loaded modules), the maps by job, and the maps and weight
        as the call's extra arguments."""
        control = requests[0].control
        if control is None:
            return pipe, {}, {}
        call = self.pipes.get(control.kind)
        if call is None:
            from diffusers import AutoPipelineForImage2Image

            net = self.nets[control.kind]
            call = AutoPipelineForImage2Image.from_pipe(pipe, controlnet=net)
            call.set_progress_bar_config(disable=True)
            self.pipes[control.kind] = call
        pairs = zip(requests, images, strict=True)
        maps = {r.job_id: self.map_for(r, img) for r, img in pairs}
        extra = {"control_image": list(maps.values()),
                 "controlnet_conditioning_scale": float(control.weight)}  # fmt: skip
        return call, maps, extra

    def cond(self, made: Image.Image, kind: str, rows: int) -> torch.Tensor:
        """`prepare_control_image` for one job: the map as the ControlNet's input, once
        per row (both guidance halves)."""
        assert self.processor is not None
        net = self.nets[kind]
        pixels = self.processor.preprocess(made).to(dtype=torch.float32)
        # repeat_interleave, as diffusers does: it also makes the preprocessed (channels-last
        # strided) map contiguous, and CPU convolutions give other bits for other layouts.
        pixels = pixels.repeat_interleave(1, dim=0).to(device=net.device, dtype=net.dtype)
        return torch.cat([pixels] * rows)


def with_thumbnail(result: GenerationResult, made: Image.Image) -> GenerationResult:
    """The result with its map's thumbnail written beside its PNG (`structure_map`); a
    withheld result (no PNG) gets none."""
    if not result.output_path:
        return result
    path = Path(structure_map_path(result.output_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbnail(made).save(path, format="PNG")
    return replace(result, structure_map=str(path))


def load_controlnets(
    pipe: Any,
    sources: dict[str, str | None],
    *,
    dtype: torch.dtype,
    maps: MapSettings | None = None,
    invariant: bool = False,
) -> Controls:
    """Load the configured ControlNet of each kind (`sources`: kind → hub id or folder,
    None: not served) on the model's device and dtype. `invariant` (CPU) patches each for
    batch invariance as the UNet is (`pipeline.invariance.cover_controlnet`)."""
    from pipeline.invariance import cover_controlnet
    from pipeline.loading import DTYPE_KWARG

    controls = Controls(maps=maps or MapSettings())
    controls.processor = VaeImageProcessor(
        vae_scale_factor=pipe.vae_scale_factor, do_convert_rgb=True, do_normalize=False
    )
    for kind, source in sources.items():
        if not source:
            continue
        started = time.perf_counter()
        net = ControlNetModel.from_pretrained(source, **{DTYPE_KWARG: dtype})
        net = net.to(pipe.unet.device)
        net.eval()
        if invariant:
            cover_controlnet(net)
        controls.nets[kind] = net
        log.info("loaded %s ControlNet %s in %.1f s", kind, source, time.perf_counter() - started)
    return controls


@dataclass
class RowControl:
    """One job's structure in the step loop: its kind, weight and map input (one row per
    UNet row of the job)."""

    kind: str
    weight: float
    cond: torch.Tensor


def residuals(
    controls: Controls,
    row_controls: Sequence[RowControl | None],
    rows_of: Sequence[int],
    sample: torch.Tensor,
    timestep: torch.Tensor,
    hidden: torch.Tensor,
) -> dict[str, Any]:
    """The UNet's `down_block_additional_residuals` / `mid_block_additional_residual` for
    a call of several jobs (`row_controls[i]` for the job whose UNet rows number
    `rows_of[i]`, in order); {} when no job has structure."""
    if not any(row_controls):
        return {}
    starts = [sum(rows_of[:i]) for i in range(len(rows_of))]
    total = sample.shape[0]
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for kind in STRUCTURE_KINDS:
        jobs = [i for i, rc in enumerate(row_controls) if rc is not None and rc.kind == kind]
        if not jobs:
            continue
        index = torch.tensor(
            [r for i in jobs for r in range(starts[i], starts[i] + rows_of[i])],
            device=sample.device,
        )
        net = controls.nets[kind]
        kind_down, kind_mid = net(
            sample[index],
            timestep[index],
            encoder_hidden_states=hidden[index],
            controlnet_cond=torch.cat([row_controls[i].cond for i in jobs]),  # type: ignore[union-attr]
            conditioning_scale=1.0,
            guess_mode=False,
            return_dict=False,
        )
        weights = torch.tensor(
            [row_controls[i].weight for i in jobs for _ in range(rows_of[i])],  # type: ignore[union-attr]
            dtype=torch.float32,
        ).to(device=sample.device, dtype=kind_mid.dtype)
        scale = weights.reshape(-1, 1, 1, 1)
        if down is None or mid is None:
            down = [torch.zeros((total, *d.shape[1:]), dtype=d.dtype, device=d.device)
                    for d in kind_down]  # fmt: skip
            mid = torch.zeros((total, *kind_mid.shape[1:]), dtype=kind_mid.dtype,
                              device=kind_mid.device)  # fmt: skip
        for full, part in zip(down, kind_down, strict=True):
            full[index] = part * scale
        mid[index] = kind_mid * scale
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
