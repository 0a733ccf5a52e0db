"""The safety checker: which one the engine uses, and running it on generated images.

Part of the engine (imported only by `pipeline.engine`, so the bot never loads torch).
diffusers' pipelines would run the checker inside the call and paint flagged images black;
the engine instead runs the call without it and asks `SafetyChecker.flags` about each image,
so a flagged image can be withheld (never written) or, where allowed, kept and marked.

Which checker (`SAFETY_CHECKER`):
- `auto`: the checker the model ships (SD 1.x/2.x: `StableDiffusionSafetyChecker` with its
  `CLIPImageProcessor`), else the standalone one at `SAFETY_CHECKER_ID`, else none (one loud
  warning; `EngineInfo.safety_checker == "missing"`);
- `on`: the same, but no checker is a `ModelLoadError`;
- `off`: none (one warning line).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# diffusers' checker warns "a black image will be returned" for every flagged image; we
# return no black image, and say what happened ourselves.
_DIFFUSERS_CHECKER_LOGGER = "diffusers.pipelines.stable_diffusion.safety_checker"


class SafetyCheckerUnavailable(RuntimeError):
    """SAFETY_CHECKER=on and no checker could be loaded; the message names what was tried."""


@dataclass
class SafetyChecker:
    """A loaded checker model and the image processor that prepares its input."""

    model: Any  # diffusers StableDiffusionSafetyChecker
    feature_extractor: Any  # transformers CLIPImageProcessor
    source: str  # for the log: "the model's own checker" or the standalone id

    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """One batched checker call: True for each image the checker flags."""
        if not images:
            return []
        param = next(self.model.parameters())
        features = self.feature_extractor(list(images), return_tensors="pt")
        clip_input = features.pixel_values.to(param.device, param.dtype)
        # The model blacks out flagged entries of `images` in place; hand it placeholders
        # so the real pictures are never touched (we withhold, we don't paint black).
        placeholders = np.zeros((len(images), 1, 1, 3), dtype=np.float32)
        with torch.inference_mode():
            _, flagged = self.model(clip_input=clip_input, images=placeholders)
        return [bool(f) for f in flagged]


def take_shipped_checker(pipe: Any) -> tuple[SafetyChecker | None, str]:
    """Detach the checker the pipeline loaded, so the diffusion call runs without it.

    Returns it (or None) and a few words on what was found, for the 'tried' list."""
    model = getattr(pipe, "safety_checker", None)
    extractor = getattr(pipe, "feature_extractor", None)
    if model is None:
        return None, "the model ships no safety checker"
    pipe.safety_checker = None  # diffusers then skips its own check: no black squares
    if extractor is None:
        return None, "the model's safety checker has no feature_extractor"
    return SafetyChecker(model, extractor, "the model's own checker"), "the model's own checker"


def load_standalone_checker(checker_id: str, *, device: str, dtype: torch.dtype) -> SafetyChecker:
    """Load a `StableDiffusionSafetyChecker` + `CLIPImageProcessor` from a hub id or folder.

    A local diffusers pipeline folder works too (its safety_checker/ and feature_extractor/
    subfolders). Raises whatever the loaders raise; the caller words it."""
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPImageProcessor

    folder = Path(checker_id).expanduser()
    source = str(folder) if folder.is_dir() else checker_id
    model_kw: dict[str, Any] = {}
    extractor_kw: dict[str, Any] = {}
    pipeline_folder = (
        not (folder / "config.json").is_file()
        and (folder / "safety_checker" / "config.json").is_file()
    )
    if pipeline_folder:
        model_kw["subfolder"], extractor_kw["subfolder"] = "safety_checker", "feature_extractor"
    model = StableDiffusionSafetyChecker.from_pretrained(source, **model_kw)
    extractor = CLIPImageProcessor.from_pretrained(source, **extractor_kw)
    model = model.to(device=device, dtype=dtype).eval()
    return SafetyChecker(model, extractor, checker_id)


def setup_checker(
    pipe: Any,
    mode: str,
    checker_id: str | None,
    *,
    device: str,
    dtype: torch.dtype,
) -> tuple[SafetyChecker | None, str]:
    """Pick the checker for `mode`; return it and the `EngineInfo.safety_checker` status.

    Always leaves `pipe` without its built-in checker. Raises `SafetyCheckerUnavailable`
    for `on` without a checker; `auto` without one warns once and carries on."""
    if mode not in MODES:
        raise SafetyCheckerUnavailable(f"Unknown SAFETY_CHECKER {mode!r}; use auto, on or off.")
    logging.getLogger(_DIFFUSERS_CHECKER_LOGGER).setLevel(logging.ERROR)
    shipped, found = take_shipped_checker(pipe)
    if mode == "off":
        log.warning("SAFETY_CHECKER=off: generated images are NOT checked for unsafe content")
        return None, "off"
    if shipped is not None:
        log.info("safety checker: %s", shipped.source)
        return shipped, "on"
    tried = [found]
    if checker_id and checker_id.startswith(("/", ".", "~")) and not _exists(checker_id):
        tried.append(f"SAFETY_CHECKER_ID {checker_id!r}: no such folder")
    elif checker_id:
        try:
            standalone = load_standalone_checker(checker_id, device=device, dtype=dtype)
        except Exception as exc:
            log.debug("standalone safety checker %r failed to load", checker_id, exc_info=True)
            tried.append(f"SAFETY_CHECKER_ID {checker_id!r}: {_first_line(exc)}")
        else:
            log.info("safety checker: standalone %r", checker_id)
            return standalone, "on"
    else:
        tried.append("SAFETY_CHECKER_ID is empty")
    what = "; ".join(tried)
    if mode == "on":
        raise SafetyCheckerUnavailable(
            f"SAFETY_CHECKER=on, but no safety checker could be loaded (tried: {what}). "
            "Set SAFETY_CHECKER_ID to a checker's hub id or local folder."
        )
    log.warning(
        "NO SAFETY CHECKER: results are NOT filtered (tried: %s). Set SAFETY_CHECKER_ID to a "
        "checker's hub id or local folder, or SAFETY_CHECKER=off to accept unfiltered output.",
        what,
    )
    return None, "missing"


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists()


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
