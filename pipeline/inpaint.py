"""Inpainting: regenerate only the masked region of a picture, leave the rest untouched.

Part of the engine: `Engine.generate` hands inpaint requests to `generate_inpaint`; what
it runs on (the inpainting pipeline, CLIPSeg) is loaded by `pipeline.inpaint_models`.
One pipeline call per request. The result has the stored input's own size (the bot caps
it at MAX_STORED_SIDE), not the model's: the mask (stored, or made from region words) is
feathered by the request's `mask_blur` at that size and the output composited over the
input through it (`pipeline.mask`), so every pixel farther than the feather from the mask
is the input's exact pixel at full resolution. Only the masked area is generated, at the
model's resolution, and pasted back scaled to fit: a mask covering under a quarter of the
picture (`crop: auto`) in a padded box around it ("only masked" mode: a face or a hand
gets the model's full detail), a larger one with the whole picture scaled down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from pipeline.prepare import fit_to_resolution, target_size
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


def _job_mask(
    req: GenerationRequest, work: Image.Image, size: tuple[int, int], inpainting: Inpainting
) -> Image.Image:
    """The job's mask at `size` (the picture's own): the stored one, else the region found
    in `work` (the picture at the model's resolution, what CLIPSeg is made for)."""
    if req.mask_path:
        try:
            mask = _read_image(req.mask_path, "L")
        except FileNotFoundError:
            raise InputError(MASK_MISSING) from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            log.warning("job %s: mask %s is unreadable: %s", req.job_id, req.mask_path, exc)
            raise InputError(MASK_UNREADABLE) from None
        return mask.resize(size, Image.Resampling.BILINEAR)
    if req.region:
        if inpainting.masker is None:
            raise InputError(NO_REGION_MODEL)
        return inpainting.masker.mask(work, req.region).resize(size, Image.Resampling.BILINEAR)
    raise InputError(NO_MASK)


@dataclass
class Inpainted:
    """An inpainting's result at the picture's size, and the region the model generated
    (at the model's resolution: what the safety checker must see too, since a small
    repainted area is a few pixels of the checker's view of the whole)."""

    image: Image.Image
    generated: Image.Image


def inpaint_image(
    inpainting: Inpainting,
    req: GenerationRequest,
    image: Image.Image,
    *,
    on_step_end: Callable[..., dict[str, Any]] | None = None,
) -> Inpainted:
    """Inpaint one request: `image` is its stored input at full size; the result has that
    size and equals it exactly farther than `req.mask_blur` from the mask."""
    if inpainting.pipe is None:
        raise InputError(NO_INPAINT)
    work = fit_to_resolution(image, inpainting.resolution)
    mask = _job_mask(req, work, image.size, inpainting)
    coverage = check_coverage(mask)
    soft = feather(mask, req.mask_blur)
    whole = (0, 0, *image.size)
    box = whole
    if should_crop(req.crop, coverage):
        box = _crop_box_at(soft, work.size)
    source = work if box == whole else _box_source(image, box, inpainting.resolution)
    # Regenerate all that may show through the feathered mask, at the source's scale.
    source_mask = (
        soft.crop(box).resize(source.size, Image.Resampling.BOX).point(lambda v: 255 if v else 0)
    )
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
    return Inpainted(composite(paste_crop(image, generated, box), image, soft), generated)


def _crop_box_at(soft: Image.Image, work_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`crop_box` (padding and least side in the model's pixels) of the feathered mask,
    at the picture's own size: computed on the mask's box scaled to `work_size`, scaled
    back, and grown to hold every pixel the feathered mask touches."""
    bbox = soft.getbbox()
    assert bbox is not None  # check_coverage refused an empty mask
    sx, sy = soft.width / work_size[0], soft.height / work_size[1]
    small = (
        math.floor(bbox[0] / sx), math.floor(bbox[1] / sy),
        min(work_size[0], math.ceil(bbox[2] / sx)), min(work_size[1], math.ceil(bbox[3] / sy)),
    )  # fmt: skip
    box = crop_box(small, work_size)
    if box == (0, 0, *work_size):
        return (0, 0, *soft.size)
    return (
        max(0, min(bbox[0], math.floor(box[0] * sx))),
        max(0, min(bbox[1], math.floor(box[1] * sy))),
        min(soft.width, max(bbox[2], math.ceil(box[2] * sx))),
        min(soft.height, max(bbox[3], math.ceil(box[3] * sy))),
    )


def _box_source(
    image: Image.Image, box: tuple[int, int, int, int], resolution: int
) -> Image.Image:
    """The box's pixels at the model's resolution, cut from the full-size input (a face
    keeps its real detail)."""
    out_size = target_size(box[2] - box[0], box[3] - box[1], resolution)
    return image.resize(out_size, Image.Resampling.LANCZOS, box=box)


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
            image = _read_input(req)
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


def _read_input(req: GenerationRequest) -> Image.Image:
    """The stored input at its own size: the result keeps it."""
    try:
        return _read_image(req.image_path, "RGB")
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
    engine: Any, req: GenerationRequest, done: Inpainted, steps_run: int, started: float
) -> GenerationResult:
    """Safety check (of the whole picture and of the generated region at its own
    resolution) and PNG, as `Engine.generate` does for img2img results."""
    out = done.image
    flagged = bool(engine.checker and any(engine.checker.flags([out, done.generated])))
    seconds = time.perf_counter() - started
    log.info(
        "inpaint %s: %d steps at %dx%d in %.2f s%s",
        req.job_id, steps_run, out.width, out.height, seconds, " (flagged)" if flagged else "",
    )  # fmt: skip
    total = plan_steps(req.steps, req.strength)[0]
    return store_result(
        req, out, flagged, checked=engine.checker is not None, steps_run=steps_run,
        steps_total=total, seconds=seconds,
    )  # fmt: skip


__all__ = [
    "Inpainted",
    "Inpainting",
    "MaskError",
    "RegionMasker",
    "generate_inpaint",
    "inpaint_image",
    "setup_inpainting",
]
