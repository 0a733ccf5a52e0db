"""Tiny ControlNets for the tiny model: `make_tiny` writes `controlnet-edges` and
`controlnet-lines` beside the pipeline, so tests and the benchmark load them through the
same `ControlNetModel.from_pretrained` path as real ones (CONTROLNET_EDGES_ID/_LINES_ID).

`ControlNetModel.from_unet` copies the UNet's encoder and zero-initialises the layers that
feed the UNet (`controlnet_down_blocks`, `controlnet_mid_block`) and the last layer of the
map's embedding (`controlnet_cond_embedding.conv_out`): as built it changes no pixel (and
with only the first two set, the map itself would still change none), so every structure
test would pass vacuously. Those layers get random weights here, strong enough that the
map visibly changes the picture.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("edges", "lines")
OUTPUT_STD = 0.3
"""Spread of the random output-layer weights: large enough to move the tiny model's
pictures by tens of grey levels, small enough to keep them pictures (no saturation)."""
MAP_GAIN = 4.0
"""Gain of the map embedding's last layer. The embedding's convolutions get bias-free
random weights (the defaults' biases drown a sparse map: a blank map and a sketch gave
the same features), so another map gives another picture."""


def controlnet_dir(model_dir: str | Path, kind: str) -> Path:
    """Where `make_tiny` writes the tiny model's ControlNet for `kind`."""
    return Path(model_dir) / f"controlnet-{kind}"


def save_tiny_controlnets(model_dir: Path, unet: Any, seed: int = 0) -> dict[str, Path]:
    """Build one ControlNet per kind from `unet` (other output weights for each), save them
    under `model_dir`, and return their folders."""
    import torch
    from diffusers import ControlNetModel

    made = {}
    for i, kind in enumerate(KINDS):
        controlnet = ControlNetModel.from_unet(unet)
        generator = torch.Generator().manual_seed(seed * 100 + 17 + i)
        outputs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        embedding = controlnet.controlnet_cond_embedding.conv_out
        with torch.no_grad():
            for layer in outputs:
                layer.weight.normal_(0.0, OUTPUT_STD, generator=generator)
                layer.bias.zero_()
            for conv in controlnet.controlnet_cond_embedding.modules():
                if isinstance(conv, torch.nn.Conv2d):  # the map's strokes, not biases, speak
                    gain = MAP_GAIN if conv is embedding else 2**0.5  # (He init for SiLU)
                    fan_in = conv.weight[0].numel()
                    conv.weight.normal_(0.0, gain / fan_in**0.5, generator=generator)
                    conv.bias.zero_()
        made[kind] = controlnet_dir(model_dir, kind)
        controlnet.save_pretrained(made[kind])
    log.info("wrote tiny ControlNets to %s", ", ".join(map(str, made.values())))
    return made
