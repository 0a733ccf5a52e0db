"""A tiny random-weight Stable Diffusion img2img pipeline, saved in diffusers format.

Tests and the benchmark need a model that loads through exactly the same path as a real
one (`AutoPipelineForImage2Image.from_pretrained` on a folder) without any download. The
component sizes follow diffusers' own fast tests; the VAE keeps Stable Diffusion's 8×
downscale and the UNet's sample_size is 64, so the native resolution is 512 like SD 1.x.
The tokenizer's vocab.json/merges.txt are written here (byte-level characters only, no
merges), so nothing is fetched from the hub.

torch/diffusers are imported inside `make_tiny`: only `pipeline.engine` may import them at
module level.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pipeline.tiny_checker import CheckerMode, build_tiny_checker

log = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the raw bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tokenizer_files(folder: Path) -> dict[str, int]:
    """Write a minimal CLIP vocab.json/merges.txt into `folder`; return the vocabulary.

    Every word tokenizes to its bytes (the last one with "</w>"), which is all a
    random-weight text encoder needs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return vocab


def _drop_load_time_keys(config_path: Path) -> None:
    """transformers records how the tokenizer was loaded here (e.g. local_files_only);
    that says nothing about the model, so keep it out of the saved config."""
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    config_path.write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def own_tokenizer() -> tuple[Any, dict[str, int]]:
    """A CLIP tokenizer from the vocabulary written here, and that vocabulary."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            model_max_length=77,
        )
    return tokenizer, vocab


def save_img2img_pipeline(
    out: Path,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    dtype: Any = None,
    safety_checker: Any = None,
    feature_extractor: Any = None,
) -> None:
    """Assemble an SD img2img pipeline with an Euler scheduler and save it to `out`.

    Euler runs exactly int(steps × strength) denoising steps (order 1). With a
    `safety_checker` (and its `feature_extractor`) the folder ships one, as SD 1.5 does."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=safety_checker is not None,
    )
    if dtype is not None:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(out)
    _drop_load_time_keys(out / "tokenizer" / "tokenizer_config.json")
    # Newer transformers save only tokenizer.json; keep the plain files for older readers.
    write_tokenizer_files(out / "tokenizer")


def make_tiny(
    path: str | Path, *, safety_checker: CheckerMode | None = None, seed: int = 0
) -> Path:
    """Build the tiny pipeline with deterministic weights and save it to `path`.

    Another `seed` gives other weights (a second model of the same shape, for tests of
    several models: other pixels for the same request). `safety_checker` ("all", "none" or
    "dark", see `pipeline.tiny_checker`) makes the model ship a tiny checker, like SD 1.5
    ships its own; None ships none, like SDXL."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=64,  # × VAE 8 = 512 px native
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        # 4 heads of 16 instead of the default 8 of 8: same weights' size, but CPU attention
        # at 1024 tokens is ~40% faster, which keeps a 20-step 512 px job near 2 s.
        attention_head_dim=4,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),  # four blocks: Stable Diffusion's 8× downscale
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=512,
    )
    tokenizer, vocab = own_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab[BOS_TOKEN],
            eos_token_id=vocab[EOS_TOKEN],
            pad_token_id=vocab[EOS_TOKEN],
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=1000,
            max_position_embeddings=77,
        )
    )
    checker = extractor = None
    if safety_checker is not None:
        checker, extractor = build_tiny_checker(safety_checker)
    save_img2img_pipeline(
        out,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=checker,
        feature_extractor=extractor,
    )
    from pipeline.tiny_controlnet import save_tiny_controlnets

    save_tiny_controlnets(out, unet, seed)  # DIR/controlnet-edges, DIR/controlnet-lines
    make_tiny_taesd(out / "taesd", seed=seed)
    log.info("wrote tiny img2img pipeline to %s (safety checker: %s)", out, safety_checker)
    return out


def make_tiny_taesd(path: Path, *, seed: int = 0) -> Path:
    """A tiny random `AutoencoderTiny` (the `PREVIEW=taesd` decoder) of the tiny pipeline's
    latent shape, saved so that tests load it through the real path (PREVIEW_MODEL_ID)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    taesd.save_pretrained(path)
    return path
