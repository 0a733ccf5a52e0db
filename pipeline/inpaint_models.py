"""What inpainting loads in the worker: the inpainting pipeline and CLIPSeg.

Part of the engine (`Engine.load` calls `setup_inpainting`; see `pipeline.inpaint` for how
a job runs):

- the inpainting pipeline, built from the loaded one with `AutoPipelineForInpainting.
  from_pipe` (it shares the UNet, VAE and text encoder: no second copy of the weights), or
  a dedicated inpainting model (9-channel UNet) when INPAINT_MODEL_ID names one;
- `RegionMasker`: CLIPSeg turning region words into a mask (MASK_MODEL_ID). A load failure
  only disables region masks (`EngineInfo.region_masks` is then False).

Region words → mask: CLIPSeg's logits are turned into probabilities (sigmoid), a pixel
belongs to the region where the probability is at least MASK_THRESHOLD, and the region is
grown by MASK_DILATE px so the object's edge is repainted too. CLIPSeg runs in eval mode
without sampling, so the same words on the same picture give the same mask.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.mask import MaskFull, RegionNotFound, region_mask

log = logging.getLogger(__name__)


class RegionMasker:
    """CLIPSeg, loaded once in the worker; turns region words into a mask."""

    def __init__(
        self, model: Any, processor: Any, *, device: str, threshold: float, dilate_px: int
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.threshold = threshold
        self.dilate_px = dilate_px

    @classmethod
    def load(
        cls, model_id: str, *, device: str, dtype: torch.dtype, threshold: float, dilate_px: int
    ) -> RegionMasker:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        processor = CLIPSegProcessor.from_pretrained(model_id)
        model = CLIPSegForImageSegmentation.from_pretrained(model_id, dtype=dtype)
        model = model.to(device).eval()
        return cls(model, processor, device=device, threshold=threshold, dilate_px=dilate_px)

    @property
    def max_tokens(self) -> int:
        """Text positions CLIPSeg has (77); a tokenizer without a limit says a huge number."""
        positions = self.model.config.text_config.max_position_embeddings
        return int(min(positions, getattr(self.processor.tokenizer, "model_max_length", positions)))

    def probabilities(self, image: Image.Image, words: str) -> np.ndarray:
        """CLIPSeg's per-pixel probability (its own grid, e.g. 352×352) that it shows `words`.

        Words past the text encoder's 77 positions are cut there (truncation), not an error:
        the first words name the region, and the bot's own length limit counts characters."""
        inputs = self.processor(
            text=[words],
            images=[image.convert("RGB")],
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
        }
        with torch.no_grad():
            logits = self.model(**inputs).logits
        logits = logits.float().reshape(logits.shape[-2:])  # one picture: (H, W)
        return torch.sigmoid(logits).cpu().numpy()

    def mask(self, image: Image.Image, words: str) -> Image.Image:
        """The region `words` name in `image`, as a mask of the image's size.

        Raises `RegionNotFound` when nothing reaches the threshold and `MaskFull` when the
        whole picture does (both say what to do instead)."""
        probs = self.probabilities(image, words)
        mask = region_mask(probs, image.size, threshold=self.threshold, dilate_px=self.dilate_px)
        values = np.asarray(mask)
        if not values.any():
            raise RegionNotFound(
                f"Nothing in the picture matched the region “{words}”. Describe the area "
                "another way (e.g. “the sky”, “the background”), or attach a `mask`."
            )
        if values.min() == 255:
            raise MaskFull(
                f"The region “{words}” covers the whole picture. To change everything use "
                "/img2img; otherwise name a smaller area or attach a `mask`."
            )
        log.info(
            "region %r: %.0f %% of the picture (max probability %.2f)",
            words, 100 * np.count_nonzero(values) / values.size, float(probs.max()),
        )  # fmt: skip
        return mask


@dataclass
class Inpainting:
    """What `setup_inpainting` made: the pipeline (None: this model cannot inpaint), the
    region masker (None: no region masks) and the model's resolution."""

    pipe: Any
    masker: RegionMasker | None
    resolution: int

    @property
    def region_masks(self) -> bool:
        return self.masker is not None


def setup_inpainting(
    pipe: Any,
    *,
    device: str,
    dtype: torch.dtype,
    resolution: int,
    dtype_kwarg: str,
    mask_model_id: str | None = None,
    inpaint_model_id: str | None = None,
    mask_threshold: float = 0.4,
    mask_dilate: int = 8,
) -> Inpainting:
    """Build the inpainting side of a loaded engine (see the module docstring).

    A dedicated model that fails to load raises (the operator asked for it); a mask model
    that fails only logs a warning."""
    from diffusers import AutoPipelineForInpainting

    if inpaint_model_id:
        config = AutoPipelineForInpainting.load_config(inpaint_model_id)
        kwargs: dict[str, Any] = {dtype_kwarg: dtype}
        if isinstance(config, dict) and "safety_checker" in config:
            # The engine's own checker judges every result (see pipeline.safety).
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        inpaint_pipe = AutoPipelineForInpainting.from_pretrained(inpaint_model_id, **kwargs)
        inpaint_pipe = inpaint_pipe.to(device)
        log.info("loaded inpainting model %s (%s)", inpaint_model_id, type(inpaint_pipe).__name__)
    else:
        try:
            inpaint_pipe = AutoPipelineForInpainting.from_pipe(pipe)
        except Exception as exc:  # a model family diffusers has no inpainting pipeline for
            log.warning("inpainting is off: %s has no inpainting pipeline (%s)", type(pipe), exc)
            inpaint_pipe = None
    if inpaint_pipe is not None:
        inpaint_pipe.set_progress_bar_config(disable=True)
        if getattr(inpaint_pipe, "safety_checker", None) is not None:
            inpaint_pipe.safety_checker = None  # ours runs instead: no black squares

    masker = None
    if mask_model_id:
        started = time.perf_counter()
        try:
            masker = RegionMasker.load(
                mask_model_id,
                device=device,
                dtype=dtype,
                threshold=mask_threshold,
                dilate_px=mask_dilate,
            )
        except Exception as exc:
            log.warning(
                "region masks are off: could not load MASK_MODEL_ID %r (%s: %s); /inpaint "
                "still works with a mask or a transparent picture",
                mask_model_id, type(exc).__name__, " ".join(str(exc).split())[:300],
            )  # fmt: skip
        else:
            log.info("loaded mask model %s in %.1f s", mask_model_id, time.perf_counter() - started)
    return Inpainting(inpaint_pipe, masker, resolution)
