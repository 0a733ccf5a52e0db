"""Inpainting: regenerate only the masked region of a picture, leave the rest untouched.

Part of the engine: `Engine.generate` hands inpaint requests to `generate_inpaint`; what
it runs on (the inpainting pipeline, CLIPSeg) is loaded by `pipeline.inpaint_models`.
One pipeline call per request. The mask (stored, or made from region words) is feathered
by the request's `mask_blur` and the output composited over the input through it
(`pipeline.mask`), so every pixel farther than the feather from the mask is the input's
exact pixel. A mask covering under a quarter of the picture (`crop: auto`) is generated
in a padded box at the model's full resolution and pasted back ("only masked" mode): a
face or a hand gets the model's full detail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from pipeline.inpaint_models import Inpainting, RegionMasker, setup_inpainting
from pipeline.mask import (
    MaskError,
    check_coverage,
    composite,
    crop_box,
    feather,
    paste_crop,
    should_crop,
)
from pipeline.prepare import target_size
from pipeline.request import (
    INPUT_MISSING,
    INPUT_UNREADABLE,
    GenerationRequest,
    GenerationResult,
    InputError,
    plan_steps,
)
from pipeline.results import store_result

log = logging.getLogger(__name__)

MASK_MISSING = "The mask of this job is no longer stored, so it could not run. Send it again."
MASK_UNREADABLE = "The stored mask could not be read, so this job could not run. Send it again."
NO_MASK = (
    "Nothing says what to repaint. Attach a `mask` (white repaints, black keeps), send a "
    "picture with transparent areas, or describe the area with `region`."
)
NO_REGION_MODEL = (
    "Region words cannot be used right now (the mask model is not loaded). Attach a `mask` "
    "instead: white where to repaint, black where to keep."
)
NO_INPAINT = "This model cannot inpaint. Use /img2img, or ask the operator for an inpainting model."


# --- generation ----------------------------------------------------------------------------


class _Cancelled(Exception):
    """This job was cancelled at a step (the others of the batch go on)."""


def _read_image(path: str, mode: str) -> Image.Image:
    with Image.open(path) as src:
        return src.convert(mode)


def _job_mask(req: GenerationRequest, image: Image.Image, inpainting: Inpainting) -> Image.Image:
    """The job's mask at the generated size: the stored one, else the region's."""
    if req.mask_path:
        try:
            mask = _read_image(req.mask_path, "L")
        except FileNotFoundError:
            raise InputError(MASK_MISSING) from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            log.warning("job %s: mask %s is unreadable: %s", req.job_id, req.mask_path, exc)
            raise InputError(MASK_UNREADABLE) from None
        return mask.resize(image.size, Image.Resampling.BILINEAR)
    if req.region:
        if inpainting.masker is None:
            raise InputError(NO_REGION_MODEL)
        return inpainting.masker.mask(image, req.region)
    raise InputError(NO_MASK)


def inpaint_image(
    inpainting: Inpainting,
    req: GenerationRequest,
    image: Image.Image,
    *,
    on_step_end: Callable[..., dict[str, Any]] | None = None,
) -> Image.Image:
    """Inpaint one request: `image` is its input at the generated size; the result has
    that size and equals it exactly farther than `req.mask_blur` from the mask."""
    if inpainting.pipe is None:
        raise InputError(NO_INPAINT)
    mask = _job_mask(req, image, inpainting)
    coverage = check_coverage(mask)
    soft = feather(mask, req.mask_blur)
    repaint = soft.point(lambda v: 255 if v else 0)  # regenerate all that may show
    box = (0, 0, *image.size)
    if should_crop(req.crop, coverage):
        bbox = soft.getbbox()
        assert bbox is not None  # check_coverage refused an empty mask
        box = crop_box(bbox, image.size)
    if box == (0, 0, *image.size):
        source, source_mask = image, repaint
    else:
        source = _source_crop(req.image_path, image.size, box, inpainting.resolution)
        source_mask = repaint.crop(box).resize(source.size, Image.Resampling.NEAREST)
    total, _ = plan_steps(req.steps, req.strength)
    output = inpainting.pipe(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt or "",
        image=source,
        mask_image=source_mask,
        height=source.height,
        width=source.width,
        strength=float(req.strength),
        num_inference_steps=total,
        guidance_scale=float(req.guidance),
        generator=torch.Generator(device="cpu").manual_seed(int(req.seed)),
        output_type="pil",
        callback_on_step_end=on_step_end,
    )
    generated = output.images[0]
    canvas = generated if source is image else paste_crop(image, generated, box)
    return composite(canvas, image, soft)


def _source_crop(
    image_path: str, size: tuple[int, int], box: tuple[int, int, int, int], resolution: int
) -> Image.Image:
    """The box's pixels at the model's resolution, cut from the stored input (which may
    be larger than the generated size: a face keeps its real detail)."""
    stored = _read_image(image_path, "RGB")
    sx, sy = stored.width / size[0], stored.height / size[1]
    stored_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    out_size = target_size(box[2] - box[0], box[3] - box[1], resolution)
    return stored.resize(out_size, Image.Resampling.LANCZOS, box=stored_box)


def generate_inpaint(
    engine: Any,
    requests: Sequence[GenerationRequest],
    *,
    on_progress: Callable[[int, int], None] | None = None,
    is_cancelled: Callable[[str], bool] | None = None,
    on_cancelled: Callable[[str], None] | None = None,
    on_failed: Callable[[str, str], None] | None = None,
) -> list[GenerationResult]:
    """`Engine.generate` for inpaint requests: one pipeline call each, same contract.

    A job whose input or mask cannot be used goes to `on_failed` (plain words; without the
    callback the `InputError` is raised); a job cancelled at a step goes to `on_cancelled`
    and the next one runs; `JobCancelled` is raised when every job was cancelled."""
    from pipeline.engine import JobCancelled

    if any(r.mode != "inpaint" for r in requests):
        raise ValueError("inpaint requests cannot share a batch with img2img requests")
    inpainting: Inpainting | None = getattr(engine, "inpainting", None)
    results: list[GenerationResult] = []
    cancelled: list[str] = []
    steps_seen = 0
    for req in requests:
        started = time.perf_counter()
        state = {"reported": 0}
        try:
            image = _read_input(req, engine.info.resolution)
            if inpainting is None:
                raise InputError(NO_INPAINT)
            callback = _step_callback(req, inpainting.pipe, state, on_progress, is_cancelled)
            out = inpaint_image(inpainting, req, image, on_step_end=callback)
        except _Cancelled:
            steps_seen = max(steps_seen, state["reported"])
            cancelled.append(req.job_id)
            if on_cancelled is not None:
                on_cancelled(req.job_id)
            continue
        except InputError as exc:
            log.info("job %s failed: %s", req.job_id, exc)
            if on_failed is None:
                raise
            on_failed(req.job_id, str(exc))
            continue
        steps_seen = max(steps_seen, state["reported"])
        results.append(_finish(engine, req, out, state["reported"], started))
    if cancelled and len(cancelled) == len(requests):
        raise JobCancelled(
            f"cancelled: {', '.join(cancelled)}", job_ids=cancelled, steps_run=steps_seen
        )
    return results


def _read_input(req: GenerationRequest, resolution: int) -> Image.Image:
    from pipeline.prepare import fit_to_resolution

    try:
        return fit_to_resolution(_read_image(req.image_path, "RGB"), resolution)
    except FileNotFoundError:
        raise InputError(INPUT_MISSING) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        log.warning("job %s: input %s is unreadable: %s", req.job_id, req.image_path, exc)
        raise InputError(INPUT_UNREADABLE) from None


def _step_callback(
    req: GenerationRequest,
    pipe: Any,
    state: dict[str, int],
    on_progress: Callable[[int, int], None] | None,
    is_cancelled: Callable[[str], bool] | None,
) -> Callable[..., dict[str, Any]]:
    """Progress after each denoising step; a cancel stops this job at the step."""
    _, effective = plan_steps(req.steps, req.strength)
    scheduler = getattr(pipe, "scheduler", None)
    order = max(1, int(getattr(scheduler, "order", 1) or 1))

    def on_step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step = math.ceil((i + 1) / order)
        n_iter = getattr(pipe, "_num_timesteps", None)
        step_total = math.ceil(n_iter / order) if n_iter else effective
        if on_progress is not None and step > state["reported"]:
            on_progress(step, step_total)
        state["reported"] = step
        if is_cancelled is not None and is_cancelled(req.job_id):
            raise _Cancelled(req.job_id)
        return callback_kwargs

    return on_step_end


def _finish(
    engine: Any, req: GenerationRequest, out: Image.Image, steps_run: int, started: float
) -> GenerationResult:
    """Safety check and PNG, as `Engine.generate` does for img2img results."""
    flagged = bool(engine.checker.flags([out])[0]) if engine.checker else False
    seconds = time.perf_counter() - started
    log.info(
        "inpaint %s: %d steps at %dx%d in %.2f s%s",
        req.job_id, steps_run, out.width, out.height, seconds, " (flagged)" if flagged else "",
    )  # fmt: skip
    total = plan_steps(req.steps, req.strength)[0]
    return store_result(req, out, flagged, steps_run=steps_run, steps_total=total, seconds=seconds)


__all__ = [
    "Inpainting",
    "MaskError",
    "RegionMasker",
    "generate_inpaint",
    "inpaint_image",
    "setup_inpainting",
]
