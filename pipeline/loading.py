"""Loading a model: device and dtype choice, where a model id points, fp16 weight
variants, the model's native size and `torch.compile` warm-up. Split from `pipeline.engine`,
which keeps to generating; `ModelLoadError`, `resolve_device` and `resolve_dtype` are still
importable from there."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image
from diffusers.utils import deprecation_utils
from PIL import Image

from pipeline.prepare import target_size

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
DEFAULT_RESOLUTION = 512
# diffusers renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns).
DTYPE_KWARG = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def from_pretrained(model_id: str, kwargs: dict[str, Any], *, half: bool) -> Any:
    """In fp16, the model's fp16 weight variant where it has one (half the download and
    no cast at load), else its default weights."""
    if half:
        try:
            return AutoPipelineForImage2Image.from_pretrained(model_id, variant="fp16", **kwargs)
        except (OSError, ValueError) as exc:
            log.info(
                "no fp16 weight variant for %r (%s); loading the default weights",
                model_id,
                type(exc).__name__,
            )
    return AutoPipelineForImage2Image.from_pretrained(model_id, **kwargs)


SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
"""A key only SDXL checkpoints have (diffusers' own `CHECKPOINT_KEY_NAMES["xl_base"]`)."""


def from_single_file(path: str, config: str | None, kwargs: dict[str, Any]) -> Any:
    """One original-layout checkpoint file (what model sites offer) as an img2img pipeline.

    `config` (a diffusers folder or hub id with the component configs) gives the family and
    lets `from_single_file` work offline; without it the family is told from the file's
    keys (SD 1.x/2.x or SDXL) and the configs are fetched from the hub. Only .safetensors
    files are loaded (a .ckpt is a pickle)."""
    import diffusers
    from safetensors import safe_open

    if not path.lower().endswith(".safetensors"):
        raise ModelLoadError("only .safetensors checkpoint files are loaded (a .ckpt is a pickle)")
    if config is not None:
        name = AutoPipelineForImage2Image.load_config(config).get("_class_name", "")
        family = getattr(diffusers, name, None)
        if family is None or not hasattr(family, "from_single_file"):
            raise ModelLoadError(f"config {config!r} names no pipeline that loads single files")
        pipe = family.from_single_file(path, config=config, **kwargs)
        return AutoPipelineForImage2Image.from_pipe(pipe)
    with safe_open(path, framework="pt") as checkpoint:
        keys = set(checkpoint.keys())
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ModelLoadError("the file has no Stable Diffusion UNet; give a checkpoint file")
    family = (
        diffusers.StableDiffusionXLImg2ImgPipeline
        if SDXL_KEY in keys
        else diffusers.StableDiffusionImg2ImgPipeline
    )
    return family.from_single_file(path, **kwargs)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names what was tried and why it failed."""


def resolve_device(device: str) -> str:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DEVICE=cuda was asked for, but torch sees no CUDA GPU.")
    if device == "mps" and not mps_ok:
        raise ModelLoadError("DEVICE=mps was asked for, but Apple MPS is not available.")
    if device not in ("cuda", "mps", "cpu"):
        raise ModelLoadError(f"Unknown DEVICE {device!r}; use auto, cuda, mps or cpu.")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto`: fp16 on GPUs (half the memory, much faster), fp32 on CPU (fp16 is slow there)."""
    if dtype == "auto":
        return torch.float16 if device in ("cuda", "mps") else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"Unknown DTYPE {dtype!r}; use auto, fp16, bf16 or fp32.") from None


def describe_source(model_id: str) -> tuple[str, Path | None]:
    """Say where the model will be looked for; return the local folder if it is one."""
    path = Path(model_id).expanduser()
    if path.exists():
        return f"local folder {str(path)!r}", path
    if _HUB_ID.match(model_id) and not model_id.startswith((".", "~")):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        where = "local HF cache only, HF_HUB_OFFLINE is set" if offline else "HuggingFace hub"
        return f"no local folder of that name; hub id {model_id!r} ({where})", None
    return f"local folder {str(path)!r} (does not exist)", path


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + "…"


def native_resolution(pipe: Any) -> int:
    """Long side the model was trained at: denoiser sample_size × VAE scale factor."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    sample = sample or getattr(pipe, "default_sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = max(sample)
    scale = getattr(pipe, "vae_scale_factor", 8) or 8
    return int(sample * scale) if sample else DEFAULT_RESOLUTION


# --- the engine ----------------------------------------------------------------------------


# Aspect ratios whose sizes are compiled at load when COMPILE is on; other sizes compile
# once on first use. Fixed shapes let inductor specialise kernels (the gain), each shape
# costs a compile (the price), so the common photo shapes are paid for up front.
COMPILE_BUCKETS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16))


def compile_unet(pipe: Any, resolution: int) -> None:
    """torch.compile the UNet and warm it up on the bucket sizes (one step each)."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(
        torch._dynamo.config.cache_size_limit, 4 * len(COMPILE_BUCKETS)
    )
    pipe.unet = torch.compile(pipe.unet, dynamic=False)
    started = time.perf_counter()
    for w, h in COMPILE_BUCKETS:
        size = target_size(w * 1000, h * 1000, resolution)
        pipe(
            prompt="warm-up",
            image=Image.new("RGB", size, "gray"),
            strength=1.0,
            num_inference_steps=1,
            guidance_scale=7.5,  # with guidance the UNet sees a doubled batch; compile that
        )
    log.info(
        "compiled the UNet for %d sizes in %.0f s",
        len(COMPILE_BUCKETS),
        time.perf_counter() - started,
    )
