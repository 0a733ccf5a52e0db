"""A tiny random-weight CLIPSeg (text-prompted segmentation), saved like a real one.

`/inpaint region:` words become a mask through `CLIPSegForImageSegmentation` and
`CLIPSegProcessor` (see `pipeline.inpaint`). Tests need a model that loads through exactly
that `from_pretrained` path without a download: this one has transformers' fast-test sizes
(hidden size 32, 2 layers, 64 px images in 8 px patches, so a 64×64 logit grid) and the
tokenizer files `pipeline.tiny` writes itself.

Random weights segment nothing in particular, but they are deterministic and depend on
the picture (and a little on the words). The decoder is made to give one value per 8 px
patch and its bias calibrated (see `_calibrate`), so at the default MASK_THRESHOLD a
photo-like picture gives a blocky mask over part of it (neither empty nor full, even after
MASK_DILATE), while a flat grey picture gives an empty one: both outcomes the region code
handles are reachable in tests.

torch/transformers are imported inside the functions: only the engine-side modules
import them at module level.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pipeline.tiny import BOS_TOKEN, EOS_TOKEN, own_tokenizer, write_tokenizer_files

log = logging.getLogger(__name__)

IMAGE_SIZE = 64
PATCH_SIZE = 8
SEED = 0
CALIBRATION_THRESHOLD = 0.4  # MASK_THRESHOLD's default
CALIBRATION_SHARE = 0.25


def _reference_image(size: int = IMAGE_SIZE) -> Any:
    """A deterministic textured picture (gradient with a bright disc) for calibration."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 4, size * 3 // 4, size * 3 // 4), fill=(250, 220, 60))
    return image


def build_tiny_clipseg() -> tuple[Any, Any]:
    """Return (CLIPSegForImageSegmentation, CLIPSegProcessor) with fixed random weights."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    tokenizer, vocab = own_tokenizer()
    config = CLIPSegConfig(
        text_config={
            "vocab_size": 1000,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": vocab[BOS_TOKEN],
            "eos_token_id": vocab[EOS_TOKEN],
            "pad_token_id": vocab[EOS_TOKEN],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=16,
        extract_layers=(0, 1),
        reduce_dim=16,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(SEED)
    model = CLIPSegForImageSegmentation(config).eval()
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessor(
            do_resize=True,
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            resample=2,  # bilinear, as CIDAS/clipseg-rd64-refined's processor
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ),
        tokenizer=tokenizer,
    )
    _calibrate(model, processor)
    return model, processor


def _calibrate(model: Any, processor: Any) -> None:
    """Make the random decoder give one value per 8 px patch (a coarse, blob-like mask as
    a real segmenter gives, instead of pixel noise that any dilation fills), then shift its
    bias so a quarter of the reference picture's patches reach the default MASK_THRESHOLD
    for "the disc". Nothing else is tuned."""
    import torch

    inputs = processor(
        text=["the disc"], images=[_reference_image()], padding=True, return_tensors="pt"
    )
    conv = model.decoder.transposed_convolution
    with torch.no_grad():
        conv.weight.copy_(conv.weight.mean(dim=(2, 3), keepdim=True).expand_as(conv.weight))
        logits = model(**inputs).logits
        target = math.log(CALIBRATION_THRESHOLD / (1 - CALIBRATION_THRESHOLD))
        conv.bias += target - torch.quantile(logits.flatten(), 1 - CALIBRATION_SHARE)


def save_tiny_clipseg(path: str | Path) -> Path:
    """Build the tiny CLIPSeg and save model + processor to `path` (a local MASK_MODEL_ID)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_clipseg()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Newer transformers save only tokenizer.json; keep the plain files for older readers.
    write_tokenizer_files(out)
    log.info("wrote tiny CLIPSeg to %s", out)
    return out
