"""A random-weight pipeline with Stable Diffusion 1.5's published architecture, no download.

Timings on a GPU depend on the architecture, not on the weights, so a GPU benchmark with
these weights measures what SD 1.5 would cost (images are noise). Everything is built from
diffusers/transformers config constructors; the tokenizer is our own byte-level writer from
`pipeline.tiny` (its 514 ids fit SD's 49408-entry embedding table). The scheduler is the
tiny model's Euler (SD's betas), which runs exactly int(steps × strength) steps, like ours.

Run: `python -m bench.sd15_random DIR [--device cuda] [--dtype fp16] [--smoke]`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.tiny import BOS_TOKEN, EOS_TOKEN, own_tokenizer, save_img2img_pipeline

log = logging.getLogger(__name__)

# SD 1.5 (runwayml / stable-diffusion-v1-5) component configs, as published.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
VAE_CONFIG: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-05,
}


def build_sd15_random(
    path: str | Path, *, device: str = "cpu", dtype: str = "fp16", seed: int = 0
) -> Path:
    """Build the pipeline (on `device`, which makes the random init fast on a GPU), save it
    to `path` in `dtype` (fp16 halves the 4 GB of fp32 weights) and return `path`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    started = time.perf_counter()
    tokenizer, vocab = own_tokenizer()
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **TEXT_CONFIG,
                bos_token_id=vocab[BOS_TOKEN],
                eos_token_id=vocab[EOS_TOKEN],
                pad_token_id=vocab[EOS_TOKEN],
            )
        )
    save_img2img_pipeline(
        out,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        dtype=torch_dtype,
    )
    params = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    log.info(
        "wrote SD1.5-architecture random pipeline (%.0f M parameters, %s) to %s in %.0f s",
        params / 1e6,
        dtype,
        out,
        time.perf_counter() - started,
    )
    return out


def smoke(path: str | Path, *, size: int = 256, device: str = "cpu") -> float:
    """Load `path` the way the bot does and run one 1-step image; return the seconds."""
    import torch
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    dtype = torch.float32 if device == "cpu" else torch.float16
    pipe = AutoPipelineForImage2Image.from_pretrained(str(path), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    result = pipe(
        prompt="a fox",
        image=Image.new("RGB", (size, size), (200, 120, 40)),
        strength=0.5,
        num_inference_steps=2,
        guidance_scale=7.5,
        generator=torch.Generator(device).manual_seed(0),
    )
    seconds = time.perf_counter() - started
    assert result.images[0].size == (size, size), result.images[0].size
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--device", default="cpu", help="where to build (cuda is much faster)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--smoke", action="store_true", help="then run one 1-step 256 px image")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_sd15_random(args.path, device=args.device, dtype=args.dtype)
    if args.smoke:
        log.info("smoke run: 1 step at 256 px in %.1f s", smoke(args.path, device=args.device))


if __name__ == "__main__":
    main()
