"""A tiny random-weight safety checker whose verdict is chosen when it is built.

So that tests run the real checker code (diffusers' `StableDiffusionSafetyChecker` fed by a
`CLIPImageProcessor`, saved with `save_pretrained` and loaded back like a real one) without
downloading the 1.2 GB CompVis checker. The vision tower has the size of transformers' fast
CLIP tests; only the concept thresholds decide the verdict:
- `all`: every image is flagged (thresholds below any cosine similarity);
- `none`: no image is flagged (thresholds above any cosine similarity);
- `dark`: concept 0 is the checker's own embedding of a black image, with its threshold
  midway between the scores of black and white, so dark images are flagged and bright ones
  are not; the other concepts never fire;
- `like`: flags images that look like the given `like` images and not like the `unlike`
  ones (each `like` image is a concept, its threshold midway between it and the closest
  `unlike` image). This is the one to put a flagged and a clean job in ONE batch on the
  tiny random model: its VAE normalises brightness away, so a dark input does not give a
  dark output, and what an output looks like is decided mostly by the seed. Generate the
  two jobs once without a checker, then build a `like` checker from their outputs.

The vision tower is initialised with a large `initializer_factor`: at the default scale a
random tower gives nearly the same embedding (cosine > 0.99) for any two images.

torch/diffusers are imported inside the functions: only the engine imports them at module
level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

CheckerMode = Literal["all", "none", "dark", "like"]
CHECKER_MODES: tuple[CheckerMode, ...] = ("all", "none", "dark", "like")
MAX_LIKE = 17  # the checker has 17 concepts
MIN_MARGIN = 0.02  # `like` refuses references closer than this (scores are rounded to 0.001)
INIT_FACTOR = 20.0
IMAGE_SIZE = 32  # the tower's input; the processor resizes and crops every image to it
NEVER = 2.0  # cosine similarity is at most 1: a threshold of 2 never fires
ALWAYS = -2.0  # … and at least -1: a threshold of -2 always fires


def build_tiny_checker(
    mode: CheckerMode, *, like: Sequence[Any] = (), unlike: Sequence[Any] = ()
) -> tuple[Any, Any]:
    """Return (StableDiffusionSafetyChecker, CLIPImageProcessor) that flag as `mode` says.

    `like`/`unlike` (PIL images or paths) are for mode `like` only."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor

    if mode not in CHECKER_MODES:
        raise ValueError(f"unknown checker mode {mode!r}; use one of {CHECKER_MODES}")
    if (mode == "like") != bool(like) or (unlike and mode != "like"):
        raise ValueError("like/unlike images go with mode 'like', and it needs at least one")
    if len(like) > MAX_LIKE:
        raise ValueError(f"at most {MAX_LIKE} like images (the checker's concepts)")
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 4,
            "initializer_factor": INIT_FACTOR,
        },
        projection_dim=16,
        initializer_factor=INIT_FACTOR,
    )
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config).eval()
    extractor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    with torch.no_grad():
        checker.special_care_embeds_weights.fill_(NEVER)
        checker.concept_embeds_weights.fill_(ALWAYS if mode == "all" else NEVER)
        if mode == "dark":
            black, white = (
                _embedding(checker, extractor, Image.new("RGB", (64, 64), c))
                for c in ("black", "white")
            )
            checker.concept_embeds[0] = black
            score_white = torch.nn.functional.cosine_similarity(black, white, dim=0).item()
            checker.concept_embeds_weights[0] = (1.0 + score_white) / 2
        elif mode == "like":
            _set_like_concepts(checker, extractor, like, unlike)
    return checker, extractor


def _set_like_concepts(
    checker: Any, extractor: Any, like: Sequence[Any], unlike: Sequence[Any]
) -> None:
    import torch

    targets = _embeddings(checker, extractor, like)
    others = _embeddings(checker, extractor, unlike) if unlike else None
    for i, target in enumerate(targets):
        closest = 1.0 - 2 * MIN_MARGIN  # no unlike images: flag only near-copies
        if others is not None:
            closest = torch.nn.functional.cosine_similarity(others, target[None], dim=1).max()
            closest = float(closest)
        if 1.0 - closest < MIN_MARGIN:
            raise ValueError(
                f"like image {i} and an unlike image look the same to the tiny checker "
                f"(cosine {closest:.4f}); pick images that differ more (another seed)"
            )
        checker.concept_embeds[i] = target
        checker.concept_embeds_weights[i] = (1.0 + closest) / 2


def _embeddings(checker: Any, extractor: Any, images: Sequence[Any]) -> Any:
    """The projected image embeddings the checker compares with its concepts."""
    from PIL import Image

    loaded = []
    for image in images:
        if isinstance(image, (str, Path)):
            with Image.open(image) as src:
                image = src.convert("RGB")
        loaded.append(image)
    clip_input = extractor(loaded, return_tensors="pt").pixel_values
    pooled = checker.vision_model(clip_input)[1]
    return checker.visual_projection(pooled)


def _embedding(checker: Any, extractor: Any, image: Any) -> Any:
    return _embeddings(checker, extractor, [image])[0]


def save_tiny_checker(
    path: str | Path, mode: CheckerMode, *, like: Sequence[Any] = (), unlike: Sequence[Any] = ()
) -> Path:
    """Write a standalone checker folder (config, weights, preprocessor), as on the hub."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    checker, extractor = build_tiny_checker(mode, like=like, unlike=unlike)
    checker.save_pretrained(out)
    extractor.save_pretrained(out)
    log.info("wrote tiny safety checker (%s) to %s", mode, out)
    return out
