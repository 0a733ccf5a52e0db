"""The tiny model as one original-layout (LDM) checkpoint file, like those on model sites.

`from_single_file` converts such a file to diffusers' layout with its own key mapping
(`diffusers.loaders.single_file_utils`). To test that path for real, `write_single_file`
does the inverse for the tiny configuration: the UNet under `model.diffusion_model.`
(`input_blocks` / `middle_block` / `output_blocks`, resnets' `in_layers`/`out_layers`), the
VAE under `first_stage_model.` (`down.N.block`, `mid.block_1`, `mid.attn_1` with 1×1-conv
attention weights, `up` in reverse order) and the CLIP text encoder under
`cond_stage_model.transformer.`. Loaded back with `config=` the diffusers folder, it gives
the folder's weights exactly.

torch is imported inside the functions: only `pipeline.engine` may import it at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _resnet(rest: str) -> str:
    for diffusers, ldm in _UNET_RESNET:
        if rest.startswith(diffusers + "."):
            return ldm + rest[len(diffusers) :]
    raise ValueError(f"unknown UNet resnet key {rest!r}")


def unet_key(key: str, layers_per_block: int) -> str:
    """One diffusers UNet key in the original layout (the inverse of
    `convert_ldm_unet_checkpoint` for SD 1.x-style blocks)."""
    parts = key.split(".")
    stem, rest = ".".join(parts[:-1]), parts[-1]
    if stem in _UNET_TOP:
        return f"{_UNET_TOP[stem]}.{rest}"
    per = layers_per_block + 1
    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.B.downsamplers.0.conv.*
            return f"input_blocks.{per * (block + 1)}.0.op.{parts[-1]}"
        layer = int(parts[3])
        index = per * block + layer + 1
        tail = ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_resnet(tail)}"
        return f"input_blocks.{index}.1.{tail}"
    if parts[0] == "mid_block":
        kind, layer, tail = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * layer}.{_resnet(tail)}"
        return f"middle_block.1.{tail}"
    if parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # after the block's last resnet (and attention)
            return f"output_blocks.{per * block + per - 1}.UPSAMPLE.conv.{parts[-1]}"
        layer = int(parts[3])
        index = per * block + layer
        tail = ".".join(parts[4:])
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_resnet(tail)}"
        return f"output_blocks.{index}.1.{tail}"
    raise ValueError(f"unknown UNet key {key!r}")


def vae_key(key: str, up_blocks: int) -> str:
    """One diffusers VAE key in the original layout (the inverse of
    `convert_ldm_vae_checkpoint`)."""
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    parts = key.split(".")
    side = parts[0]
    if len(parts) > 2 and parts[1] == "down_blocks":
        block, kind = parts[2], parts[3]
        if kind == "downsamplers":
            return f"{side}.down.{block}.downsample.conv.{parts[-1]}"
        return f"{side}.down.{block}.block.{'.'.join(parts[4:])}"
    if len(parts) > 2 and parts[1] == "up_blocks":
        block, kind = up_blocks - 1 - int(parts[2]), parts[3]
        if kind == "upsamplers":
            return f"{side}.up.{block}.upsample.conv.{parts[-1]}"
        return f"{side}.up.{block}.block.{'.'.join(parts[4:])}"
    if len(parts) > 2 and parts[1] == "mid_block":
        if parts[2] == "resnets":
            return f"{side}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        tail = ".".join(parts[4:])
        for diffusers, ldm in _VAE_ATTENTION:
            if tail.startswith(diffusers):
                return f"{side}.mid.attn_1.{ldm}{tail[len(diffusers) :]}"
    return key


def write_single_file(model: str | Path, out: str | Path) -> Path:
    """Write the diffusers folder `model` (SD 1.x-style, e.g. the tiny model) as one
    original-layout .safetensors checkpoint."""
    import json

    from safetensors.torch import save_file

    folder = Path(model)
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    tensors: dict[str, Any] = {}
    unet = _weights(folder / "unet")
    mapped = {key: unet_key(key, int(unet_config["layers_per_block"])) for key in unet}
    attended = {  # output blocks with an attention: their upsampler is `.2.conv`, else `.1.`
        ldm.split(".")[1] for ldm in mapped.values()
        if ldm.startswith("output_blocks.") and ldm.split(".")[2] == "1"
    }  # fmt: skip
    for key, ldm in mapped.items():
        if ".UPSAMPLE." in ldm:
            ldm = ldm.replace(".UPSAMPLE.", ".2." if ldm.split(".")[1] in attended else ".1.")
        tensors[UNET + ldm] = unet[key]
    for key, value in _weights(folder / "vae").items():
        ldm = vae_key(key, len(vae_config["up_block_types"]))
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]  # attention projections are 1×1 convolutions there
        tensors[VAE + ldm] = value
    for key, value in _weights(folder / "text_encoder").items():
        # newer transformers save CLIPTextModel without its `text_model.` prefix
        own = key.startswith(("text_model.", "text_projection"))
        tensors[CLIP + (key if own else f"text_model.{key}")] = value
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _weights(component: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    (file,) = sorted(component.glob("*.safetensors"))
    return load_file(str(file))
