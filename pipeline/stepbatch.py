"""Iteration-level batching: jobs of one latent shape share every UNet call.

Part of the engine (imported only by `pipeline.engine`; see `Engine.run_steps`). Today's
pipeline-call path can batch only jobs with the same step plan and guidance; real traffic
mixes strengths, step counts and guidance, so it mostly runs one image at a time. Here each
job keeps its own scheduler instance, timesteps, latents and generator, and at every step
the latents of all running jobs are stacked into one UNet call with a timestep per row
(classifier-free guidance rows only for jobs that use it). Jobs join at step boundaries
while a slot is free and leave when done (VAE decode, safety check, PNG per job). Jobs of
another shape (a portrait among landscapes) form a second set, and the sets take turns.

Each job is computed exactly as diffusers' `StableDiffusionImg2ImgPipeline.__call__`
computes it alone (encode_prompt, get_timesteps with the strength, prepare_latents with the
job's generator, `step(..., eta=, generator=)`, decode, postprocess): every operation but
the UNet sees the same tensor shapes as the solo call, and on CPU the UNet is made
batch-invariant (`pipeline.invariance`), so a job's PNG is pixel-equal to its solo run.

A text-to-image job (`GenerationRequest.start`, a `NoiseStart`) is one more row: it starts
from pure noise of its size, as `StableDiffusionPipeline.__call__` does (no VAE encode, the
whole schedule), and shares UNet calls with img2img rows of its latent shape.

Rows with different LoRA sets (`GenerationRequest.loras`, none included) share a UNet call
too: each row's prompt is encoded with its LoRAs' text-encoder part, and inside the call
each row gets its own LoRA deltas (`pipeline.lora_rows`).

Rows with and without structure (`GenerationRequest.control`) share a UNet call too: each
kind's ControlNet runs on its rows only and every row gets its own residuals, zeros for
free rows (`pipeline.control_rows`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipeline.control_rows import Controls, RowControl, residuals, with_thumbnail
from pipeline.lora_rows import row_loras
from pipeline.loras import LoraAdapters, set_key
from pipeline.previews import Previewer, x0_prediction
from pipeline.request import GenerationRequest, GenerationResult, NoiseStart, plan_steps
from pipeline.results import store_result
from pipeline.safety import SafetyChecker

log = logging.getLogger(__name__)

MAX_SETS = 2
"""Running sets (latent shapes) at once, stepped in turn. Two let a portrait start beside
running landscapes instead of after them; each set still holds at most MAX_BATCH jobs, so
one UNet call never sees more rows than with one set. A third shape waits for a drain."""

EMBED_CACHE = 8
"""Prompt encodings a set keeps (least recently used dropped): the tiles of one upscale
share one prompt, so it is encoded once for all of them rather than once a tile."""

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""With a compiled UNet the row count is padded up to one of these, so a handful of
compiled graphs serve every mix of jobs (dynamic=False recompiles per new shape)."""


@dataclass
class StepHooks:
    """What the loop reports, per job. Every admitted job ends in exactly one of
    `on_finished`, `on_failed` or `on_cancelled`."""

    on_finished: Callable[[GenerationResult], None]
    on_failed: Callable[[str, str], None] | None = None
    on_cancelled: Callable[[str], None] | None = None
    on_started: Callable[[str], None] | None = None
    on_progress: Callable[[str, int, int], None] | None = None
    is_cancelled: Callable[[str], bool] | None = None
    on_step_end: Callable[[], None] | None = None
    """After each step boundary (admissions, one UNet call, leavers): lets a caller send
    what it gathered at that boundary as one message."""
    on_job_error: Callable[[str, BaseException], None] | None = None
    """An error in one job's own work (its encode, scheduler step, decode, safety check,
    PNG): that job has left its set, the others go on. None: the error propagates."""
    on_set_error: Callable[[list[str], BaseException], None] | None = None
    """An error in a set's shared UNet call: every job of that set has left it (their
    latents are lost), the other set and the waiting jobs go on. None: it propagates."""
    on_preview: Callable[[str, bytes], None] | None = None
    """A live preview of a running job (JPEG bytes; `previews.HIDDEN` where the checker
    flagged it), after that step's `on_progress`."""


@dataclass
class _Job:
    """One job's own denoising state: what the solo pipeline call keeps in locals."""

    req: GenerationRequest
    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor
    embeds: torch.Tensor  # [negative, positive] rows with guidance, else [positive]
    timestep_cond: torch.Tensor | None
    generator: torch.Generator
    step_kwargs: dict[str, Any]
    cfg: bool
    total: int
    started: float
    index: int = 0
    order: int = 1
    size: tuple[int, int] = (0, 0)
    reported: int = field(default=0)
    control: RowControl | None = None
    """Its structure's kind, weight and map input; None: a free row."""
    structure: Image.Image | None = None
    """Its structure map (for the result's thumbnail)."""

    @property
    def rows(self) -> int:
        return 2 if self.cfg else 1

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    @property
    def step_total(self) -> int:
        return math.ceil(len(self.timesteps) / self.order)


def supports_steps(pipe: Any) -> bool:
    """SD 1.x/2.x/Turbo img2img: a UNet2DConditionModel with no added conditioning. SDXL
    (added text/time embeddings), transformer models and other pipelines keep the
    pipeline-call path."""
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    unet = getattr(pipe, "unet", None)
    unet = getattr(unet, "_orig_mod", unet)  # torch.compile wraps the module
    return (
        isinstance(pipe, StableDiffusionImg2ImgPipeline)
        and isinstance(unet, UNet2DConditionModel)
        and getattr(unet.config, "addition_embed_type", None) is None
        and getattr(unet.config, "class_embed_type", None) is None
    )


def _own_scheduler(pipe: Any) -> Any:
    """A job's own copy of the pipeline's scheduler, as the solo call would use it. A copy
    of the object, not `from_config` of its config: a pipeline's constructor corrects a
    loaded config in place (DDIM's clip_sample, steps_offset) and `from_config` would bring
    back the defaults of keys the saved config lacked (`_use_default_values`)."""
    return copy.deepcopy(pipe.scheduler)


def _step_kwargs(scheduler: Any, generator: torch.Generator, eta: float) -> dict[str, Any]:
    """`prepare_extra_step_kwargs`: eta and generator only where `step` takes them."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


class StepLoop:
    """One running set (one latent shape). `admit` adds a job at a step boundary, `step`
    runs one UNet call for every running job and finishes those that are done. Not
    thread-safe."""

    def __init__(
        self,
        pipe: Any,
        *,
        checker: SafetyChecker | None,
        max_batch: int,
        pad_rows: bool = False,
        eta: float = 0.0,
        loras: LoraAdapters | None = None,
        controls: Controls | None = None,
        previews: Previewer | None = None,
    ) -> None:
        self.pipe = pipe
        self.controls = controls
        """The model's ControlNets (`Engine.controls`); None: jobs carry no structure."""
        self.previews = previews
        """Live previews (`pipeline.previews`); None: PREVIEW=off."""
        self.loras = loras
        """The model's loaded LoRAs (`Engine.loras`); a job's must be loaded before it is
        admitted. None: jobs carry no LoRAs."""
        self.checker = checker
        self.max_batch = max(1, int(max_batch))
        # A compiled UNet (dynamic=False) recompiles per row count: pad to a few buckets.
        self.pad_rows = pad_rows or hasattr(pipe.unet, "_orig_mod")
        if self.pad_rows:
            import torch._dynamo

            limit = torch._dynamo.config.cache_size_limit
            torch._dynamo.config.cache_size_limit = max(limit, 8 * len(ROW_BUCKETS))
        self.eta = eta
        self.running: list[_Job] = []
        self.embeds: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        """Prompt encodings by everything `encode_prompt` reads here (prompt, negative
        prompt, guidance on or off, the row's LoRA set)."""
        self.unet_calls = 0
        self.rows_run = 0

    # -- the running set ------------------------------------------------------------------
    @property
    def free(self) -> int:
        return self.max_batch - len(self.running)

    @property
    def size(self) -> tuple[int, int] | None:
        """Image size (hence latent shape) of the running set; None when empty."""
        return self.running[0].size if self.running else None

    def fits(self, image: Image.Image | NoiseStart) -> bool:
        return self.free > 0 and self.size in (None, image.size)

    def job_ids(self) -> list[str]:
        return [job.req.job_id for job in self.running]

    def evals_left(self) -> int:
        """UNet calls until the running set drains (0 when empty)."""
        return max((len(job.timesteps) - job.index for job in self.running), default=0)

    def evals_needed(self, req: GenerationRequest) -> int:
        """UNet calls `req` would take (its timesteps after the strength cut)."""
        scheduler = _own_scheduler(self.pipe)
        total, _ = plan_steps(req.steps, req.strength)
        scheduler.set_timesteps(total, device="cpu")
        return len(self._get_timesteps(scheduler, total, float(req.strength)))

    @torch.no_grad()
    def admit(self, req: GenerationRequest, image: Image.Image | NoiseStart) -> None:
        """Set the job up exactly as the img2img call does before its denoising loop (or,
        for a `NoiseStart`, as the text-to-image call does: `_noise_start`)."""
        if not self.fits(image):
            raise ValueError(f"job {req.job_id} does not fit the running set")
        pipe = self.pipe
        device = pipe._execution_device
        total, _ = plan_steps(req.steps, req.strength)
        guidance = float(req.guidance)
        unet_config = pipe.unet.config
        cfg = guidance > 1 and unet_config.time_cond_proj_dim is None
        embeds = self._encode(req, device, cfg)

        scheduler = _own_scheduler(pipe)
        scheduler.set_timesteps(total, device=device)
        generator = torch.Generator(device="cpu").manual_seed(int(req.seed))
        if isinstance(image, NoiseStart):
            timesteps = scheduler.timesteps
            latents = self._noise_start(scheduler, image, embeds.dtype, device, generator)
        else:
            pixels = pipe.image_processor.preprocess(image)
            timesteps = self._get_timesteps(scheduler, total, float(req.strength))
            latents = self._prepare_latents(
                scheduler, pixels, timesteps[:1].repeat(1), embeds.dtype, device, generator
            )
        timestep_cond = None
        if unet_config.time_cond_proj_dim is not None:
            scale = torch.tensor(guidance - 1).repeat(1)
            timestep_cond = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=unet_config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        job = _Job(
            req=req,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            embeds=embeds,
            timestep_cond=timestep_cond,
            generator=generator,
            step_kwargs=_step_kwargs(scheduler, generator, self.eta),
            cfg=cfg,
            total=total,
            started=time.perf_counter(),
            order=max(1, int(getattr(scheduler, "order", 1) or 1)),
            size=image.size,
        )
        if req.control is not None:
            self._control(job, image)
        self.running.append(job)
        log.debug("job %s joined (%d running)", req.job_id, len(self.running))

    def _control(self, job: _Job, image: Image.Image | NoiseStart) -> None:
        """A structure job's map, made from its input at the generated size, and the
        ControlNet input it gives each of the job's rows."""
        kind = job.req.control.kind  # type: ignore[union-attr]
        if self.controls is None or kind not in self.controls.nets:
            raise ValueError(f"job {job.req.job_id} asks structure {kind!r}, not loaded here")
        if isinstance(image, NoiseStart):
            raise ValueError(f"job {job.req.job_id}: structure needs an input picture")
        job.structure = self.controls.map_for(job.req, image)
        cond = self.controls.cond(job.structure, kind, job.rows)
        job.control = RowControl(kind, float(job.req.control.weight), cond)  # type: ignore[union-attr]

    def _encode(self, req: GenerationRequest, device: Any, cfg: bool) -> torch.Tensor:
        """The row's prompt embeds ([negative, positive] with guidance), encoded once per
        set for each prompt: the same inputs give the same tensor, so every row stays
        pixel-equal to its solo run."""
        key = (req.prompt, req.negative_prompt or "", cfg, set_key(req.loras))
        if key in self.embeds:
            self.embeds.move_to_end(key)
            return self.embeds[key]
        with self._text_loras(req):
            positive, negative = self.pipe.encode_prompt(req.prompt, device, 1, cfg, key[1])
        embeds = torch.cat([negative, positive]) if cfg else positive
        self.embeds[key] = embeds
        if len(self.embeds) > EMBED_CACHE:
            self.embeds.popitem(last=False)
        return embeds

    def _text_loras(self, req: GenerationRequest) -> Any:
        """The row's LoRAs on the text encoder while its prompt is encoded."""
        if not req.loras:
            return contextlib.nullcontext()
        if self.loras is None:
            raise ValueError(f"job {req.job_id} carries LoRAs but the set has none loaded")
        return self.loras.text_adapters(req.loras)

    @staticmethod
    def _get_timesteps(scheduler: Any, total: int, strength: float) -> torch.Tensor:
        """`get_timesteps`, on the job's own scheduler."""
        init_timestep = min(int(total * strength), total)
        t_start = max(total - init_timestep, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps

    def _noise_start(
        self,
        scheduler: Any,
        start: NoiseStart,
        dtype: torch.dtype,
        device: Any,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Text-to-image `prepare_latents`: pure noise of the start's size, scaled to the
        scheduler's first sigma; no VAE encode, and the whole schedule (no begin index,
        as `retrieve_timesteps` leaves it)."""
        pipe = self.pipe
        factor = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, start.height // factor, start.width // factor)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return noise * scheduler.init_noise_sigma

    def _prepare_latents(
        self,
        scheduler: Any,
        image: torch.Tensor,
        timestep: torch.Tensor,
        dtype: torch.dtype,
        device: Any,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """`prepare_latents` for one image with one generator."""
        vae = self.pipe.vae
        image = image.to(device=device, dtype=dtype)
        encoded = vae.encode(image)
        init_latents = encoded.latent_dist.sample(generator)
        init_latents = vae.config.scaling_factor * init_latents
        noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=dtype)
        return scheduler.add_noise(init_latents, noise, timestep)

    # -- one step ---------------------------------------------------------------------------
    def drop_cancelled(self, hooks: StepHooks) -> None:
        """A job seen cancelled leaves the set now; the others go on."""
        if hooks.is_cancelled is None:
            return
        for job in list(self.running):
            if hooks.is_cancelled(job.req.job_id):
                self.running.remove(job)
                log.info("job %s cancelled after %d steps", job.req.job_id, job.reported)
                if hooks.on_cancelled is not None:
                    hooks.on_cancelled(job.req.job_id)

    @torch.no_grad()
    def step(self, hooks: StepHooks) -> None:
        """One UNet call for all running jobs, one scheduler step each; finished jobs are
        decoded, checked and written, and leave the set."""
        if not self.running:
            return
        jobs = list(self.running)
        try:
            noise_pred = self._unet(jobs)
        except Exception as exc:
            if hooks.on_set_error is None:
                raise
            self.running.clear()
            hooks.on_set_error([job.req.job_id for job in jobs], exc)
            return
        row = 0
        due: list[tuple[_Job, torch.Tensor]] = []
        for job in jobs:
            pred = noise_pred[row : row + job.rows]
            row += job.rows
            try:
                if job.cfg:
                    uncond, text = pred.chunk(2)
                    pred = uncond + float(job.req.guidance) * (text - uncond)
                t = job.timesteps[job.index]
                before = job.latents
                output = job.scheduler.step(
                    pred, t, job.latents, **job.step_kwargs, return_dict=True
                )
                job.latents = output.prev_sample
            except Exception as exc:
                self._job_error(job, hooks, exc)
                continue
            job.index += 1
            self._report(job, hooks)
            if self._preview_due(job):
                due.append((job, x0_prediction(job.scheduler, output, before, pred, t)))
        self._preview(due, hooks)
        for job in jobs:
            if job.done and job in self.running:
                self.running.remove(job)
                try:
                    result = self._finish(job)
                except Exception as exc:
                    self._job_error(job, hooks, exc)
                else:
                    hooks.on_finished(result)

    def _preview_due(self, job: _Job) -> bool:
        """The job asked for previews and one is due after this step (never its last)."""
        if self.previews is None or not job.req.preview:
            return False
        return self.previews.due(job.req.job_id, job.reported, job.done)

    def _preview(self, due: list[tuple[_Job, torch.Tensor]], hooks: StepHooks) -> None:
        """ONE batched preview decode for every row due at this step; only reads the
        latents, so the final picture is the same with previews off. A preview that fails
        is skipped (logged): the job goes on."""
        if not due or self.previews is None or hooks.on_preview is None:
            return
        try:
            data = self.previews.render(
                [x0 for _, x0 in due],
                [not job.req.allow_nsfw for job, _ in due],
                [job.size for job, _ in due],
            )
        except Exception:
            log.warning("previews of jobs %s failed", [j.req.job_id for j, _ in due], exc_info=True)
            return
        for (job, _), preview in zip(due, data, strict=True):
            hooks.on_preview(job.req.job_id, preview)

    def _job_error(self, job: _Job, hooks: StepHooks, exc: Exception) -> None:
        """`job` leaves the set on an error of its own; the others are untouched."""
        if hooks.on_job_error is None:
            raise exc
        if job in self.running:
            self.running.remove(job)
        log.info("job %s left its set after an error of its own: %r", job.req.job_id, exc)
        hooks.on_job_error(job.req.job_id, exc)

    def _unet(self, jobs: list[_Job]) -> torch.Tensor:
        """The one UNet call every running job shares (a timestep per row)."""
        inputs, embeds, times, conds = [], [], [], []
        row_sets = []  # each row's LoRAs ([uncond; cond] both carry the job's)
        for job in jobs:
            row_sets.extend([job.req.loras] * job.rows)
            t = job.timesteps[job.index]
            model_input = torch.cat([job.latents] * 2) if job.cfg else job.latents
            inputs.append(job.scheduler.scale_model_input(model_input, t))
            embeds.append(job.embeds)
            times.append(t.reshape(1).expand(job.rows))
            if job.timestep_cond is not None:
                conds.append(job.timestep_cond.expand(job.rows, -1))
        sample = torch.cat(inputs)
        hidden = torch.cat(embeds)
        timestep = torch.cat(times)
        timestep_cond = torch.cat(conds) if conds else None
        rows = sample.shape[0]
        extra = self._residuals(jobs, sample, timestep, hidden)
        if self.pad_rows:
            sample, hidden, timestep, timestep_cond = _pad(sample, hidden, timestep, timestep_cond)
            extra = _pad_residuals(extra, sample.shape[0])
        with row_loras(self.pipe.unet, row_sets):
            noise_pred = self.pipe.unet(
                sample,
                timestep,
                encoder_hidden_states=hidden,
                timestep_cond=timestep_cond,
                return_dict=False,
                **extra,
            )[0]
        self.unet_calls += 1
        self.rows_run += rows
        return noise_pred

    def _residuals(
        self, jobs: list[_Job], sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor
    ) -> dict[str, Any]:
        """The ControlNet residuals of the call's structure rows (zeros for free rows);
        {} when no running job has structure."""
        if self.controls is None:
            return {}
        controls = [job.control for job in jobs]
        return residuals(self.controls, controls, [job.rows for job in jobs], sample,
                         timestep, hidden)  # fmt: skip

    def _report(self, job: _Job, hooks: StepHooks) -> None:
        step = math.ceil(job.index / job.order)
        if step > job.reported:
            job.reported = step
            if hooks.on_progress is not None:
                hooks.on_progress(job.req.job_id, step, job.step_total)

    def _finish(self, job: _Job) -> GenerationResult:
        """Decode, postprocess, check and write one job's image, as the solo call does."""
        pipe = self.pipe
        vae = pipe.vae
        decoded = vae.decode(
            job.latents / vae.config.scaling_factor, return_dict=False, generator=job.generator
        )[0]
        image = pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True])[
            0
        ]
        flagged = bool(self.checker.flags([image])[0]) if self.checker else False
        result = store_result(
            job.req,
            image,
            flagged,
            checked=self.checker is not None,
            steps_run=job.reported,
            steps_total=job.total,
            seconds=time.perf_counter() - job.started,
        )
        return with_thumbnail(result, job.structure) if job.structure is not None else result


def _pad_residuals(extra: dict[str, Any], target: int) -> dict[str, Any]:
    """ControlNet residuals grown like `_pad`'s rows (the extra rows are never read)."""
    if not extra:
        return extra

    def grow(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[-1:].expand(target - x.shape[0], *x.shape[1:])])

    return {
        "down_block_additional_residuals": [
            grow(d) for d in extra["down_block_additional_residuals"]
        ],
        "mid_block_additional_residual": grow(extra["mid_block_additional_residual"]),
    }


def _pad(
    sample: torch.Tensor,
    hidden: torch.Tensor,
    timestep: torch.Tensor,
    timestep_cond: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Repeat the last row up to the next bucket; the extra outputs are never read."""
    rows = sample.shape[0]
    target = next((b for b in ROW_BUCKETS if b >= rows), rows)
    if target == rows:
        return sample, hidden, timestep, timestep_cond

    def grow(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[-1:].expand(target - rows, *x.shape[1:])])

    return (
        grow(sample),
        grow(hidden),
        grow(timestep),
        grow(timestep_cond) if timestep_cond is not None else None,
    )
