"""Batch invariance on CPU: a job gives the same bits alone or inside a batch.

Part of the engine (imported only by `pipeline.engine`). See `make_batch_invariant`.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def _cat_outputs(outs: list[Any]) -> Any:
    first = outs[0]
    if torch.is_tensor(first):
        return torch.cat(outs)
    if isinstance(first, tuple) and not hasattr(first, "keys"):
        return tuple(_cat_outputs(list(parts)) for parts in zip(*outs, strict=True))
    if hasattr(first, "keys"):  # transformers ModelOutput
        return type(first)(**{k: _cat_outputs([o[k] for o in outs]) for k in first})
    return first


def _row_by_row(module: torch.nn.Module) -> None:
    """Make `module` run one batch row at a time (its output then cannot depend on the
    batch size). Used for the text encoders, which are cheap next to the UNet."""
    forward = module.forward

    def run_rows(input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_tensor(input_ids) or input_ids.shape[0] <= 1:
            return forward(input_ids, *args, **kwargs)
        n = input_ids.shape[0]

        def row(value: Any, i: int) -> Any:
            batched = torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n
            return value[i : i + 1] if batched else value

        outs = [
            forward(input_ids[i : i + 1], *args, **{k: row(v, i) for k, v in kwargs.items()})
            for i in range(n)
        ]
        return _cat_outputs(outs)

    module.forward = run_rows  # type: ignore[method-assign]


def _rowwise_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2 and x.shape[0] > 1:
        return torch.cat([F.linear(x[i : i + 1], self.weight, self.bias) for i in range(len(x))])
    return F.linear(x, self.weight, self.bias)


def _paired_conv(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4 and x.shape[0] == 1:
        return self._conv_forward(torch.cat([x, x]), self.weight, self.bias)[:1]
    return self._conv_forward(x, self.weight, self.bias)


def _own_memory(pipe: Any) -> None:
    """Copy every weight of the model's networks into freshly allocated memory. Weights
    loaded from a file can sit at any offset of its memory map, and CPU kernels take other
    paths for unaligned data (last-bit differences): with their own aligned memory the
    same weights give the same bits however they were stored (a diffusers folder or one
    checkpoint file)."""
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            with torch.no_grad():
                for tensor in [*module.parameters(), *module.buffers()]:
                    tensor.data = tensor.data.clone()


def make_batch_invariant(pipe: Any) -> None:
    """Make a CPU batch give each image the same bits as running it alone.

    Found by comparing every module's batched output with its per-row output: four CPU
    kernel families give last-bit differences that depend on the batch size, and the
    denoising loop amplifies them into ±1 pixel values:
    - small-M GEMMs (the UNet's timestep-embedding Linears on a (batch, C) input pick a
      different MKL kernel for 2 vs. 6 rows) → those Linears run one row at a time;
    - vectorised elementwise ops whose tail/chunk split moves with the tensor size (QuickGELU
      in a text encoder whose width is not a multiple of 16) → text encoders run per row;
    - GroupNorm/convolutions in the VAE at large spatial sizes → VAE slicing (per image);
    - oneDNN (mkldnn) convolutions give a row the same bits in any batch of 2 or more rows,
      but take another kernel for a single row → a UNet convolution on one row runs as two
      (the row twice, one result kept), so a guidance-free job alone (one row) matches the
      same job in a step batch (`pipeline.stepbatch`, rows of different jobs and timesteps).
    The UNet's attention and GEMMs were batch-invariant; the extra cost is under 10% of a
    step (the doubled single-row convolutions only on one-row calls).
    Weights are first copied to memory of their own (`_own_memory`).
    """
    _own_memory(pipe)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipe, name, None)
        if isinstance(encoder, torch.nn.Module):
            _row_by_row(encoder)
    denoiser = getattr(pipe, "unet", None)
    if isinstance(denoiser, torch.nn.Module):
        _cover_denoiser(denoiser)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "use_slicing"):
        vae.use_slicing = True


def _cover_denoiser(denoiser: torch.nn.Module) -> None:
    for name, module in denoiser.named_modules():
        # Attention/feed-forward Linears see (batch, tokens, C) inputs: invariant already.
        if isinstance(module, torch.nn.Linear) and "attentions" not in name:
            module.forward = types.MethodType(_rowwise_linear, module)  # type: ignore[method-assign]
        elif type(module) is torch.nn.Conv2d:
            module.forward = types.MethodType(_paired_conv, module)  # type: ignore[method-assign]


def cover_controlnet(controlnet: torch.nn.Module) -> None:
    """Extend `make_batch_invariant` to a ControlNet loaded beside the model: it is the
    UNet's encoder half (timestep-embedding Linears, convolutions, attention) plus its
    conditioning convolutions and 1×1 output convolutions, so it takes the UNet's patches,
    on weights in memory of their own. Its rows then get the same bits in a step batch as
    in the solo ControlNet pipeline call."""
    with torch.no_grad():
        for tensor in [*controlnet.parameters(), *controlnet.buffers()]:
            tensor.data = tensor.data.clone()
    _cover_denoiser(controlnet)


def cover_lora_layers(denoiser: torch.nn.Module) -> None:
    """Extend `make_batch_invariant` to LoRA layers injected after it (peft's `lora_A` /
    `lora_B` Linears): outside attention blocks they see (batch, C) inputs, so they too
    run one row at a time. Idempotent; call after each LoRA load."""
    for name, module in denoiser.named_modules():
        lora_part = ".lora_A." in name or ".lora_B." in name
        patched = "forward" in module.__dict__
        if lora_part and not patched and isinstance(module, torch.nn.Linear) and (
            "attentions" not in name
        ):
            module.forward = types.MethodType(_rowwise_linear, module)  # type: ignore[method-assign]
