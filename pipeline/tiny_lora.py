"""A tiny random LoRA for a (tiny) model, in kohya (A1111) or diffusers/PEFT format.

Tests and the benchmark need LoRA files that load through exactly the path a downloaded one
takes (`load_lora_weights` on a .safetensors file) without any download. The LoRA touches
the UNet's attention projections (to_q, to_k, to_v, to_out.0 of attn1 and attn2) and the
text encoder's (q_proj, k_proj, v_proj, out_proj), as a typical trained LoRA does, with
weights large enough that the picture changes visibly.

Key layouts:
- `peft`: `unet.<module>.lora_A.weight` (rank × in) / `lora_B.weight` (out × rank) and
  `text_encoder.<module>.…`, what `load_lora_weights` takes directly (alpha = rank).
- `kohya`: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha` and
  `lora_te_<module>…`, what diffusers' `lora_conversion_utils` converts. Its alpha is half
  the rank (scale 0.5, the up weights doubled), so the alpha path is exercised too.

torch/diffusers are imported inside the functions: only `pipeline.engine` may import them
at module level.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMATS = ("kohya", "peft")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DEFAULT_RANK = 8
STRENGTH = 1.5
"""How large B·A is next to the layer's own weight (per output, roughly): the tiny model's
random weights need a strong push for its picture to change visibly."""


def _targets(module: Any, suffixes: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The Linear layers of `module` whose names end with one of `suffixes`."""
    import torch

    return [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.Linear) and name.endswith(suffixes) and ("attn" in name)
    ]


def make_tiny_lora(
    out: str | Path,
    model: str | Path,
    *,
    seed: int = 0,
    fmt: str = "kohya",
    rank: int = DEFAULT_RANK,
) -> Path:
    """Write a random LoRA for the diffusers folder `model` to `out` (.safetensors)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; use one of {', '.join(FORMATS)}")
    folder = Path(model)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module, suffixes in (
        ("unet", unet, UNET_TARGETS),
        ("text_encoder", text_encoder, TEXT_TARGETS),
    ):
        for name, layer in _targets(module, suffixes):
            down = torch.randn(rank, layer.in_features, generator=generator)
            down = down / layer.in_features**0.5
            # B·A·x then has about the size of W·x times STRENGTH.
            spread = float(layer.weight.detach().std())
            scale = STRENGTH * spread * layer.in_features**0.5 / rank**0.5
            up = torch.randn(layer.out_features, rank, generator=generator) * scale
            tensors.update(_keys(fmt, prefix, name, down, up, rank))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    log.info("wrote a %s LoRA (rank %d, %d tensors) to %s", fmt, rank, len(tensors), path)
    return path


def _keys(fmt: str, prefix: str, name: str, down: Any, up: Any, rank: int) -> dict[str, Any]:
    """One layer's tensors under the format's key names."""
    import torch

    if fmt == "peft":
        return {f"{prefix}.{name}.lora_A.weight": down, f"{prefix}.{name}.lora_B.weight": up}
    stem = ("lora_unet_" if prefix == "unet" else "lora_te_") + name.replace(".", "_")
    alpha = rank / 2  # scale alpha/rank = 0.5: the up weights are doubled to match
    return {
        f"{stem}.lora_down.weight": down,
        f"{stem}.lora_up.weight": up * 2,
        f"{stem}.alpha": torch.tensor(alpha),
    }
