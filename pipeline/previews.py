"""Live previews: a cheap picture of what a running job will become, never stored.

A preview shows the predicted final image (x0: the scheduler's `pred_original_sample` where
`step` gives one, else computed from the UNet's output), not the noisy latent, decoded one
of two ways (`PREVIEW`):

- `approx`: a linear projection of the 4 latent channels to RGB (a 4×3 matrix and a bias per
  model family, the widely used public factors for SD 1.x/2.x and SDXL): nearly free, blurry,
  needs no weights;
- `taesd`: the tiny autoencoder (`AutoencoderTiny`, `PREVIEW_MODEL_ID`), sharper, ~5 MB.

`auto` takes `taesd` where it loads, else `approx`, and says which in one log line. Every row
due for a preview at a step is decoded in ONE batched call (`Previewer.render`).

Safety: a job whose results are filtered gets its preview only after the safety checker
passed it (a flagged one becomes `HIDDEN`); with no checker loaded every preview is blurred
so that only the composition shows. Imported only by the engine side (torch).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageFilter

log = logging.getLogger(__name__)

MODES = ("auto", "approx", "taesd", "off")
MAX_SIDE = 256
"""A preview's long side at most (px): a few KB as JPEG."""
JPEG_QUALITY = 70
BLUR_FRACTION = 1 / 24
"""Gaussian blur radius as a fraction of the preview's long side when no checker runs
(about 11 px at 256): shapes and colours stay, details do not."""
TRACKED = 1024
"""Jobs whose last preview time is kept; past this (jobs that left without a last step:
cancelled, failed) the record is cleared, costing at most one early preview each."""
HIDDEN = b""
"""The preview bytes of a preview the safety checker flagged: the status says so instead."""

TAESD_IDS = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
"""The tiny autoencoder per family when PREVIEW_MODEL_ID is empty."""

# The public latent→RGB factors (rows: latent channels; columns: R, G, B) and bias, applied
# to latents in the model's space (scaled by the VAE's scaling factor); the result lies
# roughly in [-1, 1]. SD 1.x and 2.x share one VAE, so one table serves both.
APPROX_FACTORS: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, ...]]] = {
    "sd": (
        (
            (0.3512, 0.2297, 0.3227),
            (0.3250, 0.4974, 0.2350),
            (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177),
        ),
        (0.0, 0.0, 0.0),
    ),
    "sdxl": (
        (
            (0.3651, 0.4232, 0.4341),
            (-0.2533, -0.0042, 0.1068),
            (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188),
        ),
        (0.1084, -0.0175, -0.0011),
    ),
}


def family(pipe: Any) -> str:
    """`sdxl` for SDXL-type pipelines (a second text encoder, added time embeddings), else
    `sd` (SD 1.x/2.x, Turbo)."""
    unet = getattr(pipe, "unet", None)
    config = getattr(getattr(unet, "_orig_mod", unet), "config", None)
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sdxl" if getattr(config, "addition_embed_type", None) == "text_time" else "sd"


def approx_rgb(latents: torch.Tensor, kind: str = "sd") -> torch.Tensor:
    """(N, 4, h, w) model-space latents → (N, 3, h, w) RGB in [0, 1], by the family's
    linear factors."""
    factors, bias = APPROX_FACTORS[kind]
    matrix = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    offset = torch.tensor(bias, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("nchw,cr->nrhw", latents.float(), matrix) + offset.view(1, 3, 1, 1)
    return ((rgb + 1) / 2).clamp(0, 1)


def x0_prediction(
    scheduler: Any, output: Any, sample: torch.Tensor, model_output: torch.Tensor, t: Any
) -> torch.Tensor:
    """The predicted final latents of one step: the scheduler's own (`pred_original_sample`,
    LCM's `denoised`) where its `step` output has one; else from `model_output` and the
    sample before the step through the schedule's cumulative alphas."""
    for name in ("pred_original_sample", "denoised"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    config = scheduler.config
    alphas = scheduler.alphas_cumprod.to(sample.device)
    index = min(max(round(float(t)), 0), len(alphas) - 1)
    alpha = alphas[index].to(torch.float32)
    kind = getattr(config, "prediction_type", "epsilon")
    x, out = sample.float(), model_output.float()
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
        # Sigma-space latents (x = x0 + σ·ε, Karras-style schedulers).
        sigma = ((1 - alpha) / alpha).sqrt()
        if kind == "v_prediction":
            x0 = x / (sigma**2 + 1) - out * sigma / (sigma**2 + 1).sqrt()
        elif kind == "sample":
            x0 = out
        else:
            x0 = x - sigma * out
    elif kind == "v_prediction":
        x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * out
    elif kind == "sample":
        x0 = out
    else:
        x0 = (x - (1 - alpha).sqrt() * out) / alpha.sqrt()
    return x0.to(sample.dtype)


def preview_size(width: int, height: int, limit: int = MAX_SIDE) -> tuple[int, int]:
    """The preview's size: the picture's shape, long side at most `limit`."""
    scale = min(1.0, limit / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def blurred(image: Image.Image) -> Image.Image:
    """A strong Gaussian blur that keeps only the composition (no checker loaded)."""
    return image.filter(ImageFilter.GaussianBlur(radius=max(image.size) * BLUR_FRACTION))


def encode_jpeg(image: Image.Image) -> bytes:
    """A preview as a small JPEG (a few KB at 256 px)."""
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def _to_images(rgb: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Image.Image]:
    """(N, 3, h, w) in [0, 1] → PIL images resized to `sizes`."""
    arrays = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [
        Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)
        for a, size in zip(arrays, sizes, strict=True)
    ]


def load_taesd(model_id: str, *, device: Any, dtype: torch.dtype) -> Any:
    """The tiny autoencoder, from a hub id or a local folder (`make-tiny` writes one to
    `DIR/taesd`); raises where it cannot load."""
    from diffusers import AutoencoderTiny

    decoder = AutoencoderTiny.from_pretrained(model_id, torch_dtype=dtype)
    return decoder.to(device).eval()


@dataclass
class Previewer:
    """Makes the previews of one loaded model: which rows are due, one batched decode."""

    mode: str  # approx | taesd
    kind: str = "sd"
    decoder: Any = None
    checker: Any = None
    interval_s: float = 3.0
    every_steps: int = 0
    """>0 (a bench and test knob): a preview at every this many'th step instead of by
    time (the first at step `every_steps`, not step 1)."""
    clock: Any = time.monotonic
    last: dict[str, float] = field(default_factory=dict)
    renders: int = 0

    def due(self, job_id: str, step: int, done: bool) -> bool:
        """Whether a job that asked for previews gets one after `step` (its first step, then
        at most every `interval_s`; never its last: the result replaces it)."""
        if done:
            self.last.pop(job_id, None)
            return False
        if self.every_steps > 0:
            return step % self.every_steps == 0
        now = self.clock()
        if job_id in self.last and now - self.last[job_id] < self.interval_s:
            return False
        if len(self.last) >= TRACKED:
            self.last.clear()
        self.last[job_id] = now
        return True

    def forget(self, job_id: str) -> None:
        self.last.pop(job_id, None)

    @torch.no_grad()
    def render(
        self, x0: Sequence[torch.Tensor], filtered: Sequence[bool], sizes: Sequence[tuple[int, int]]
    ) -> list[bytes]:
        """One batched decode of every due row's x0 (each (1, 4, h, w), one latent shape);
        JPEG bytes per row, `HIDDEN` where the checker flagged a filtered row's preview."""
        if not x0:
            return []
        latents = torch.cat(list(x0))
        if self.decoder is not None:
            scale = float(getattr(self.decoder.config, "scaling_factor", 1.0) or 1.0)
            decoded = self.decoder.decode(
                latents.to(self.decoder.dtype) / scale, return_dict=False
            )[0]
            rgb = ((decoded.float() + 1) / 2).clamp(0, 1)
        else:
            rgb = approx_rgb(latents, self.kind)
        images = _to_images(rgb, [preview_size(*size) for size in sizes])
        self.renders += 1
        if self.checker is None:
            return [encode_jpeg(blurred(image)) for image in images]
        check = [i for i, f in enumerate(filtered) if f]
        flags = self.checker.flags([images[i] for i in check]) if check else []
        hidden = {i for i, flag in zip(check, flags, strict=True) if flag}
        return [HIDDEN if i in hidden else encode_jpeg(img) for i, img in enumerate(images)]


def setup_previews(
    pipe: Any,
    checker: Any,
    *,
    mode: str,
    model_id: str = "",
    interval_s: float = 3.0,
    every_steps: int = 0,
) -> Previewer | None:
    """The previewer for a loaded model per PREVIEW; None when `off`. `taesd` that cannot
    load raises (the operator asked for it); `auto` falls back to `approx`, saying so."""
    if mode == "off":
        return None
    if mode not in MODES:
        raise ValueError(f"PREVIEW must be one of {', '.join(MODES)}, not {mode!r}")
    kind = family(pipe)
    preview = Previewer("approx", kind, checker=checker, interval_s=interval_s,
                        every_steps=max(0, int(every_steps)))  # fmt: skip
    if mode == "approx":
        log.info("previews: approx (linear latent projection, %s factors)", kind)
        return preview
    source = model_id or TAESD_IDS[kind]
    vae = getattr(pipe, "vae", None)
    try:
        preview.decoder = load_taesd(
            source, device=getattr(vae, "device", "cpu"), dtype=getattr(vae, "dtype", None)
        )
        preview.mode = "taesd"
    except Exception as exc:
        if mode == "taesd":
            raise
        log.info("previews: approx (the tiny autoencoder %r did not load: %s)", source,
                 f"{type(exc).__name__}: {str(exc)[:200]}")  # fmt: skip
        return preview
    log.info("previews: taesd (%s)", source)
    return preview


__all__ = [
    "HIDDEN",
    "MODES",
    "Previewer",
    "approx_rgb",
    "blurred",
    "encode_jpeg",
    "family",
    "setup_previews",
    "x0_prediction",
]
