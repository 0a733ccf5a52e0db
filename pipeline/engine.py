"""The diffusion engine: loads one img2img pipeline and runs batches of requests on it.

The worker process builds it once (`Engine.load`, with `pipeline.loading`) and calls
`generate`. It and the modules it drives (`loading`, `stepbatch`, `inpaint`, `safety`) are
the only ones that import torch and diffusers, and nothing in `bot/` imports them, so the
bot process never pays for them.

Reproducibility: every image gets its own CPU `torch.Generator` seeded with the job's seed,
so a job's noise never depends on its neighbours. On CPU the batched call is also made
batch-invariant (see `pipeline.invariance`), so a job gives the same pixels alone or in a
batch. On CUDA/MPS a job is pixel-identical for the same batch composition; the GPU kernels
cuBLAS/cuDNN pick depend on the batch size, so batch vs. alone may differ in the last bit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from pipeline.control_rows import Controls, load_controlnets, with_thumbnail
from pipeline.invariance import make_batch_invariant
from pipeline.loading import (
    DTYPE_KWARG,
    DTYPE_NAMES,
    ModelLoadError,
    compile_unet,
    describe_source,
    from_pretrained,
    from_single_file,
    native_resolution,
    resolve_device,
    resolve_dtype,
    short,
)
from pipeline.loras import DEFAULT_MAX_LOADED, LoraAdapters, set_key
from pipeline.prepare import fit_to_resolution, target_size
from pipeline.request import (
    INPUT_MISSING,
    INPUT_UNREADABLE,
    UPSCALE,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    InputError,
    NoiseStart,
    plan_steps,
)
from pipeline.results import store_result
from pipeline.safety import SafetyChecker, SafetyCheckerUnavailable, setup_checker
from pipeline.stepbatch import StepHooks, StepLoop, supports_steps
from pipeline.stepsets import run_steps
from pipeline.structure import MapSettings

log = logging.getLogger(__name__)

DEFAULT_CHECKER_ID = "CompVis/stable-diffusion-safety-checker"


class JobCancelled(Exception):
    """Every job of a batch was cancelled; raised from inside the denoising loop."""

    def __init__(
        self, message: str = "job cancelled", *, job_ids: Sequence[str] = (), steps_run: int = 0
    ) -> None:
        super().__init__(message)
        self.job_ids = tuple(job_ids)
        self.steps_run = steps_run


class CallProgress:
    """`callback_on_step_end` for one pipeline call that serves several jobs: progress in
    the scheduler's steps (an order-2 scheduler calls the UNet twice a step), each job seen
    cancelled reported once, and `JobCancelled` once every job is (the loop stops there)."""

    def __init__(
        self,
        pipe: Any,
        job_ids: Sequence[str],
        default_total: int,
        *,
        on_progress: Callable[[int, int], None] | None,
        is_cancelled: Callable[[str], bool] | None,
        on_cancelled: Callable[[str], None] | None,
    ) -> None:
        self.job_ids = list(job_ids)
        self.order = max(1, int(getattr(pipe.scheduler, "order", 1) or 1))
        self.default_total = default_total
        self.on_progress, self.is_cancelled = on_progress, is_cancelled
        self.on_cancelled = on_cancelled
        self.reported = 0
        self.cancelled: set[str] = set()

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        step = math.ceil((i + 1) / self.order)
        n_iter = getattr(pipe, "_num_timesteps", None)
        total = math.ceil(n_iter / self.order) if n_iter else self.default_total
        if self.on_progress is not None and step > self.reported:
            self.on_progress(step, total)
        self.reported = step
        if self.is_cancelled is None:
            return kwargs
        for job_id in self.job_ids:
            if job_id not in self.cancelled and self.is_cancelled(job_id):
                self.cancelled.add(job_id)
                if self.on_cancelled is not None:
                    self.on_cancelled(job_id)
        if len(self.cancelled) == len(self.job_ids):
            raise JobCancelled(
                f"cancelled after {step} of {total} steps: {', '.join(self.job_ids)}",
                job_ids=self.job_ids,
                steps_run=step,
            )
        return kwargs


class Engine:
    """One loaded pipeline. Not thread-safe: the worker calls `generate` from one thread."""

    def __init__(self, pipe: Any, info: EngineInfo, checker: SafetyChecker | None = None) -> None:
        self.pipe = pipe
        self.info = info
        self.checker = checker
        self.inpainting: Any = None
        """`pipeline.inpaint.Inpainting` once `load` set it up; None: no inpainting."""
        self.loras = LoraAdapters(pipe)
        """The LoRAs loaded on this model as named adapters (loaded on a job's first use,
        kept up to `max_loras_loaded`, LRU)."""
        self.controls = Controls()
        """The ControlNets loaded next to the model, by structure kind (none: no kind)."""
        self.previews: Any = None
        """`pipeline.previews.Previewer` (set by the worker per PREVIEW); None: off."""
        self.steps_ok = supports_steps(pipe)
        """A UNet2DConditionModel SD img2img pipeline: `run_steps` (iteration-level batching)
        serves it; other models take the pipeline-call path (`generate`)."""

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        resolution: int | None = None,
        compile: bool = False,
        channels_last: bool = True,
        safety_checker: str = "auto",
        safety_checker_id: str | None = DEFAULT_CHECKER_ID,
        mask_model_id: str | None = None,
        inpaint_model_id: str | None = None,
        mask_threshold: float = 0.4,
        mask_dilate: int = 8,
        max_loras_loaded: int = DEFAULT_MAX_LOADED,
        single_file_config: str | None = None,
        controlnets: dict[str, str | None] | None = None,
        structure_maps: MapSettings | None = None,
    ) -> Engine:
        """Load `model_id` (hub id or local diffusers folder) once, ready to generate.

        `safety_checker` is `auto`, `on` or `off` (see `pipeline.safety`); a standalone
        checker is looked for at `safety_checker_id` when the model ships none. The mask_*
        and inpaint_model_id arguments set up inpainting (see `pipeline.inpaint`);
        `controlnets` (structure kind → source) the ControlNets loaded next to the model,
        `structure_maps` the thresholds of their maps (see `pipeline.control_rows`)."""
        try:
            dev = resolve_device(device)
            torch_dtype = resolve_dtype(dtype, dev)
        except ModelLoadError as exc:
            raise ModelLoadError(f"Could not load model {model_id!r} on {device}: {exc}") from None
        tried, local = describe_source(model_id)
        started = time.perf_counter()
        # Loading bars are noise in the worker's log; `generate` has its own progress.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        def fail(cause: str, exc: BaseException | None = None) -> ModelLoadError:
            err = ModelLoadError(
                f"Could not load model {model_id!r} on {dev} (tried: {tried}): {cause}"
            )
            err.__cause__ = exc
            return err

        single = local is not None and local.is_file()
        if local is not None and not single:
            if not local.is_dir():
                raise fail("no such folder; set MODEL_ID to a diffusers folder or a hub id")
            if not (local / "model_index.json").is_file():
                raise fail("no model_index.json there, so it is not a diffusers-format pipeline")
        try:
            config = AutoPipelineForImage2Image.load_config(single_file_config or model_id) if (
                not single or single_file_config
            ) else {}
            kwargs: dict[str, Any] = {DTYPE_KWARG: torch_dtype}
            if isinstance(config, dict) and "safety_checker" in config:
                # We run the checker ourselves (see pipeline.safety); diffusers need not
                # warn when a model's checker is missing.
                kwargs["requires_safety_checker"] = False
                if safety_checker == "off":
                    kwargs["safety_checker"] = None
            if single:
                pipe = from_single_file(str(local), single_file_config, kwargs)
            else:
                pipe = from_pretrained(model_id, kwargs, half=torch_dtype == torch.float16)
            pipe = pipe.to(dev)
        except Exception as exc:
            raise fail(f"{type(exc).__name__}: {short(exc)}", exc) from exc
        try:
            checker, checker_status = setup_checker(
                pipe, safety_checker, safety_checker_id, device=dev, dtype=torch_dtype
            )
        except SafetyCheckerUnavailable as exc:
            raise ModelLoadError(f"Model {model_id!r}: {exc}") from None

        pipe.set_progress_bar_config(disable=True)
        if dev == "cuda":
            # diffusers' default attention processor already uses torch SDPA.
            if channels_last:
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.vae.to(memory_format=torch.channels_last)
        elif dev == "cpu":
            make_batch_invariant(pipe)

        res = resolution or native_resolution(pipe)
        if compile:
            compile_unet(pipe, int(res))
        from pipeline.inpaint_models import setup_inpainting

        try:
            inpainting = setup_inpainting(
                pipe, device=dev, dtype=torch_dtype, resolution=int(res),
                dtype_kwarg=DTYPE_KWARG, mask_model_id=mask_model_id,
                inpaint_model_id=inpaint_model_id, mask_threshold=mask_threshold,
                mask_dilate=mask_dilate,
            )  # fmt: skip
        except Exception as exc:
            raise fail(f"INPAINT_MODEL_ID {inpaint_model_id!r}: {short(exc)}", exc) from exc
        try:
            controls = load_controlnets(pipe, controlnets or {}, dtype=torch_dtype,
                                        maps=structure_maps, invariant=dev == "cpu")  # fmt: skip
        except Exception as exc:
            raise fail(f"ControlNet: {type(exc).__name__}: {short(exc)}", exc) from exc
        info = EngineInfo(
            model_id=model_id,
            device=dev,
            dtype=DTYPE_NAMES.get(torch_dtype, str(torch_dtype)),
            resolution=int(res),
            pipeline_class=type(pipe).__name__,
            safety_checker=checker_status,
            region_masks=inpainting.region_masks,
            structures=controls.kinds,
        )
        log.info(
            "loaded %s (%s) on %s/%s, %d px, safety checker %s, in %.1f s",
            model_id, info.pipeline_class, dev, info.dtype, info.resolution, checker_status,
            time.perf_counter() - started,
        )  # fmt: skip
        engine = cls(pipe, info, checker)
        engine.inpainting = inpainting
        engine.controls = controls
        engine.loras.max_loaded = max(1, int(max_loras_loaded))
        engine.loras.invariant = dev == "cpu"
        return engine

    def run_steps(
        self,
        first: Sequence[GenerationRequest],
        hooks: StepHooks,
        *,
        max_batch: int,
        more: Callable[[], Sequence[GenerationRequest]] | None = None,
    ) -> None:
        """Iteration-level batching (see `pipeline.stepbatch`): run `first` and whatever
        `more()` hands over at each step boundary, up to `max_batch` jobs per UNet call
        (per running set of one shape), until none is left. Each job ends in exactly one of
        the hooks' final callbacks."""
        if not self.steps_ok:
            raise ValueError(f"{self.info.pipeline_class} has no step-batching path")

        sets: list[StepLoop] = []

        def new_set(req: GenerationRequest) -> StepLoop:
            sets[:] = [each for each in sets if each.running]
            sets.append(self.new_set(max_batch))
            return sets[-1]

        def load(req: GenerationRequest) -> Image.Image | NoiseStart | None:
            running = (ref.name for each in sets for job in each.running for ref in job.req.loras)
            return self.row_input(req, running, hooks.on_failed)

        run_steps(new_set, first, hooks, load=load, more=more)

    def new_set(self, max_batch: int) -> StepLoop:
        """An empty running set on this model (`pipeline.stepsets` opens one per shape, and
        `pipeline.models` per model and shape)."""
        return StepLoop(self.pipe, checker=self.checker, max_batch=max_batch, loras=self.loras,
                        controls=self.controls, previews=self.previews)  # fmt: skip

    def row_input(
        self,
        req: GenerationRequest,
        in_use: Any,
        on_failed: Callable[[str, str], None] | None,
    ) -> Image.Image | NoiseStart | None:
        """What a step-path row starts from, its LoRAs loaded on this model (`in_use`: the
        LoRA names running jobs hold, never unloaded for it); None: it failed, reported."""
        if not self._ensure_loras(req, in_use, on_failed):
            return None
        if not self._structure_ok(req, on_failed):
            return None
        if req.start is not None:  # text-to-image: no input picture, only a size
            return req.start
        loaded = self._load_inputs([req], on_failed)
        return loaded[0][1] if loaded else None

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size an input of width×height is generated at on this model."""
        return target_size(width, height, self.info.resolution)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        is_cancelled: Callable[[str], bool] | None = None,
        on_cancelled: Callable[[str], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> list[GenerationResult]:
        """Run a batch of compatible requests in one pipeline call; check and write each PNG.

        Returns results in request order for the jobs that ran to the end; a flagged image
        comes back `nsfw`, and `withheld` (no PNG written) unless its request allows it.
        A job whose input cannot be read goes to `on_failed(job_id, message)` (plain words
        for the user; without the callback an `InputError` is raised) and the rest run. A
        job seen cancelled at a step goes to `on_cancelled(job_id)` at once and is dropped.
        Raises `JobCancelled` once every job is cancelled (the loop stops at that step)
        and `ValueError` if the requests cannot share a call.
        """
        if not requests:
            return []
        groups: dict[Any, list[GenerationRequest]] = {}
        for req in requests:
            groups.setdefault((set_key(req.loras), req.control), []).append(req)
        if len(groups) > 1:  # one LoRA set and structure a call: each group a call of its own
            return self._generate_groups(
                list(groups.values()), on_progress=on_progress, is_cancelled=is_cancelled,
                on_cancelled=on_cancelled, on_failed=on_failed,
            )  # fmt: skip
        if requests[0].loras:
            requests = [r for r in requests if self._ensure_loras(r, (), on_failed)]
            if not requests:
                return []
        if requests[0].control is not None:
            requests = [r for r in requests if self._structure_ok(r, on_failed)]
            if not requests:
                return []
        with self.loras.active(requests[0].loras):
            return self._generate(
                requests, on_progress=on_progress, is_cancelled=is_cancelled,
                on_cancelled=on_cancelled, on_failed=on_failed,
            )  # fmt: skip

    def _generate_groups(
        self, groups: list[list[GenerationRequest]], **hooks: Any
    ) -> list[GenerationResult]:
        """Requests of several LoRA sets: one call per set, in turn. A group whose jobs
        were all cancelled ends its call (`JobCancelled`); the others still run."""
        results: list[GenerationResult] = []
        stopped: JobCancelled | None = None
        for group in groups:
            try:
                results.extend(self.generate(group, **hooks))
            except JobCancelled as exc:
                stopped = exc
        if stopped is not None and not results:
            raise stopped
        return results

    def _structure_ok(
        self, req: GenerationRequest, on_failed: Callable[[str, str], None] | None
    ) -> bool:
        """False (the job failed with a plain message, or `InputError` without
        `on_failed`) when it asks a structure kind no ControlNet here serves."""
        message = self.controls.refusal(req)
        if message is None:
            return True
        if on_failed is None:
            raise InputError(message)
        on_failed(req.job_id, message)
        return False

    def _ensure_loras(
        self,
        req: GenerationRequest,
        in_use: Any,
        on_failed: Callable[[str, str], None] | None,
    ) -> bool:
        """The job's LoRAs loaded on the model; False (the job failed with a plain
        message, or `InputError` without `on_failed`) when one could not be."""
        message = self.loras.ensure(req.loras, in_use=in_use) if req.loras else None
        if message is None:
            return True
        if on_failed is None:
            raise InputError(message)
        on_failed(req.job_id, message)
        return False

    def _generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        is_cancelled: Callable[[str], bool] | None = None,
        on_cancelled: Callable[[str], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> list[GenerationResult]:
        """`generate` for requests of one LoRA set, that set active."""
        if any(r.mode == "inpaint" for r in requests):
            from pipeline.inpaint import generate_inpaint

            return generate_inpaint(
                self, requests, on_progress=on_progress, is_cancelled=is_cancelled,
                on_cancelled=on_cancelled, on_failed=on_failed,
            )  # fmt: skip
        if any(r.mode == UPSCALE for r in requests):
            from pipeline.check_only import check_pictures

            return check_pictures(self, requests, on_failed=on_failed)
        if any(r.start is not None for r in requests):
            from pipeline.text2image import generate_text2image

            return generate_text2image(
                self, requests, on_progress=on_progress, is_cancelled=is_cancelled,
                on_cancelled=on_cancelled,
            )  # fmt: skip
        started = time.perf_counter()
        loaded = self._load_inputs(requests, on_failed)
        if not loaded:
            return []
        requests = [req for req, _ in loaded]
        images = [image for _, image in loaded]
        plans = [plan_steps(r.steps, r.strength) for r in requests]
        keys = {
            (img.size, plan, r.guidance)
            for img, plan, r in zip(images, plans, requests, strict=True)
        }
        if len(keys) > 1:
            raise ValueError(
                "requests in one batch must share size, step plan and guidance; got "
                + ", ".join(
                    f"{k[0][0]}×{k[0][1]} steps {k[1]} guidance {k[2]}" for k in sorted(keys)
                )
            )
        total, effective = plans[0]
        progress = CallProgress(
            self.pipe, [r.job_id for r in requests], effective, on_progress=on_progress,
            is_cancelled=is_cancelled, on_cancelled=on_cancelled,
        )  # fmt: skip
        generators = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in requests]
        call, maps, extra = self._call_pipe(requests, images)
        output = call(
            prompt=[r.prompt for r in requests],
            negative_prompt=[r.negative_prompt or "" for r in requests],
            image=images,
            strength=float(requests[0].strength),
            num_inference_steps=total,
            guidance_scale=float(requests[0].guidance),
            generator=generators,
            output_type="pil",
            callback_on_step_end=progress,
            **extra,
        )
        steps_run = progress.reported
        seconds = time.perf_counter() - started
        kept = [
            (req, out)
            for req, out in zip(requests, output.images, strict=True)
            if req.job_id not in progress.cancelled
        ]
        images_kept = [out for _, out in kept]
        flags = self.checker.flags(images_kept) if self.checker else [False] * len(kept)
        results = [
            store_result(
                req,
                out,
                flagged,
                checked=self.checker is not None,
                steps_run=steps_run,
                steps_total=total,
                seconds=seconds,
            )
            for (req, out), flagged in zip(kept, flags, strict=True)
        ]
        if maps:
            results = [with_thumbnail(r, maps[r.job_id]) for r in results]
        log.info(
            "batch of %d (%d cancelled, %d flagged): %d/%d steps at %dx%d in %.2f s",
            len(requests), len(progress.cancelled), sum(flags), steps_run, total,
            *images[0].size, seconds,
        )  # fmt: skip
        return results

    def _call_pipe(
        self, requests: Sequence[GenerationRequest], images: Sequence[Image.Image]
    ) -> tuple[Any, dict[str, Image.Image], dict[str, Any]]:
        """The pipeline for a call of requests of one structure, its maps, its arguments."""
        return self.controls.call_pipe(self.pipe, requests, images)

    def _load_inputs(
        self,
        requests: Sequence[GenerationRequest],
        on_failed: Callable[[str, str], None] | None,
    ) -> list[tuple[GenerationRequest, Image.Image]]:
        """Each job's input, read on its own: one missing file fails only its job."""
        loaded = []
        for req in requests:
            try:
                with Image.open(req.image_path) as src:
                    image = fit_to_resolution(src.convert("RGB"), self.info.resolution)
            except FileNotFoundError:
                message = INPUT_MISSING
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                log.warning("job %s: input %s is unreadable: %s", req.job_id, req.image_path, exc)
                message = INPUT_UNREADABLE
            else:
                loaded.append((req, image))
                continue
            log.warning("job %s failed: %s (%s)", req.job_id, message, req.image_path)
            if on_failed is None:
                raise InputError(message)
            on_failed(req.job_id, message)
        return loaded
