"""A single-file checkpoint (original layout, as model sites offer) loads through diffusers'
`from_single_file` and gives the same pixels as the same weights as a diffusers folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine, ModelLoadError
from pipeline.request import GenerationRequest, GenerationResult
from pipeline.stepbatch import StepHooks
from tests.pipeline.test_cli import cli


def picture(engine: Engine, image: Path, out: Path) -> np.ndarray:
    request = GenerationRequest("s", str(image), "a fox", 0.6, 3, 4, 7.5, str(out))
    done: list[GenerationResult] = []
    engine.run_steps([request], StepHooks(on_finished=done.append), max_batch=2)
    with Image.open(done[0].output_path) as img:
        return np.asarray(img.convert("RGB"))


def test_single_file_equals_the_folder(tmp_path: Path) -> None:
    folder, single = tmp_path / "tiny", tmp_path / "tiny.safetensors"
    made = cli("make-tiny", folder, "--seed", "2", "--single-file", single)
    assert made.returncode == 0, made.stderr
    image = tmp_path / "in.png"
    pixels = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(image)
    load = dict(device="cpu", resolution=64, safety_checker="off")
    from_folder = Engine.load(str(folder), **load)
    from_file = Engine.load(str(single), single_file_config=str(folder), **load)
    assert from_file.steps_ok and from_file.info.pipeline_class == "StableDiffusionImg2ImgPipeline"
    for name in ("unet", "vae", "text_encoder"):
        theirs = getattr(from_folder.pipe, name).state_dict()
        ours = getattr(from_file.pipe, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(ours[k].equal(theirs[k]) for k in ours), name
    np.testing.assert_array_equal(
        picture(from_file, image, tmp_path / "a.png"),
        picture(from_folder, image, tmp_path / "b.png"),
    )


def test_a_file_that_is_no_checkpoint_is_a_clear_start_error(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(1)}, str(odd))
    with pytest.raises(ModelLoadError, match="no Stable Diffusion UNet"):
        Engine.load(str(odd), device="cpu")
