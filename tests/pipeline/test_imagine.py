"""Text-to-image (`/imagine`): a row that starts from pure noise, on the tiny model (CPU).

A text-to-image job must give the PNG diffusers' own text-to-image pipeline gives for it
alone (`AutoPipelineForText2Image.from_pipe` on the same components), whether it runs as a
row of the step loop beside img2img rows (sharing their UNet calls) or on the call path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image
from PIL import Image

from pipeline import stream_codec as codec
from pipeline.engine import Engine
from pipeline.request import ASPECTS, GenerationRequest, InputError, NoiseStart, aspect_size
from tests.pipeline import test_stepbatch as step_tests
from tests.pipeline.test_cli import cli
from tests.pipeline.test_stepbatch import Recorder, job, png, solo

# The step tests' fixtures: the tiny engine at 64 px, its scheduler swap, the input pictures.
engine = step_tests.engine
scheduler = step_tests.scheduler
inputs = step_tests.inputs


def text_job(
    out: Path, name: str, size: tuple[int, int] = (64, 48), **kw: Any
) -> GenerationRequest:
    fields: dict[str, Any] = dict(
        job_id=name,
        image_path="",
        prompt=f"a drawing of {name}",
        strength=1.0,
        seed=len(name) * 11 + 5,
        steps=4,
        guidance=7.5,
        output_path=str(out / f"{name}.png"),
        start=NoiseStart(*size),
    )
    fields.update(kw)
    return GenerationRequest(**fields)


def solo_text(engine: Engine, req: GenerationRequest) -> np.ndarray:
    """The job alone through diffusers' text-to-image pipeline on the engine's components."""
    assert req.start is not None
    pipe = AutoPipelineForText2Image.from_pipe(engine.pipe)
    out = pipe(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt or "",
        width=req.start.width,
        height=req.start.height,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance,
        generator=torch.Generator(device="cpu").manual_seed(req.seed),
    ).images[0]
    return np.asarray(out)


@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_aspect_sizes_are_multiples_of_8_with_the_long_side_at_resolution(aspect: str) -> None:
    width, height = aspect_size(aspect, 512)
    assert width % 8 == 0 and height % 8 == 0
    assert max(width, height) == 512
    w, h = ASPECTS[aspect]
    assert abs(width / height - w / h) < 0.05


def test_aspect_sizes_follow_the_table() -> None:
    assert aspect_size("1:1", 512) == (512, 512)
    assert aspect_size("4:3", 512) == (512, 384)
    assert aspect_size("9:16", 512) == (288, 512)
    with pytest.raises(InputError, match="16:9"):
        aspect_size("5:4", 512)


def test_a_noise_start_crosses_the_stream_codec(tmp_path: Path) -> None:
    req = text_job(tmp_path, "codec")
    assert codec.decode_request(codec.encode_request(req)) == req
    plain = job(tmp_path, "in.png", "plain")
    assert codec.decode_request(codec.encode_request(plain)) == plain


@pytest.mark.parametrize("scheduler", ["euler", "ddim"], indirect=True)
def test_a_text_row_and_an_img2img_row_share_calls_and_each_equals_its_solo_run(
    engine: Engine, scheduler: str, inputs: dict[str, str], tmp_path: Path
) -> None:
    # A pipeline's constructor corrects its scheduler's config in place (DDIM's clip_sample):
    # the fixture's swapped-in scheduler gets that here, as the engine's did when it loaded.
    AutoPipelineForText2Image.from_pipe(engine.pipe)
    text = text_job(tmp_path, "fox")  # 64×48: the wide input's latent shape
    image = job(tmp_path, inputs["wide"], "wide")  # strength 0.5 of 4 steps: 2 evals
    rows: list[int] = []
    hook = engine.pipe.unet.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    try:
        rec = Recorder()
        engine.run_steps([text, image], rec.hooks(), max_batch=4)
    finally:
        hook.remove()

    assert rec.finals() == {"fox": "finished", "wide": "finished"}
    assert rows == [4, 4, 2, 2]  # two rows each (guidance) while both run: one UNet call
    np.testing.assert_array_equal(png(rec.results["fox"]), solo_text(engine, text))
    np.testing.assert_array_equal(png(rec.results["wide"]), solo(engine, image))
    assert rec.results["fox"].steps_run == 4
    assert (rec.results["fox"].width, rec.results["fox"].height) == (64, 48)


def test_the_call_path_equals_the_solo_run_and_the_step_row(engine: Engine, tmp_path: Path) -> None:
    a = text_job(tmp_path, "a", size=(48, 64), guidance=0.0, steps=3)
    b = text_job(tmp_path, "bb", size=(48, 64), guidance=0.0, steps=3)
    called = engine.generate([a, b])
    assert [r.job_id for r in called] == ["a", "bb"]
    for result, req in zip(called, (a, b), strict=True):
        assert (result.width, result.height) == (48, 64)
        np.testing.assert_array_equal(png(result), solo_text(engine, req))

    stepped = text_job(tmp_path / "steps", "a", size=(48, 64), guidance=0.0, steps=3)
    rec = Recorder()
    engine.run_steps([stepped], rec.hooks(), max_batch=2)
    np.testing.assert_array_equal(png(rec.results["a"]), png(called[0]))


def test_the_call_path_refuses_text_jobs_of_two_sizes(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share size"):
        engine.generate([text_job(tmp_path, "a"), text_job(tmp_path, "b", size=(48, 64))])


def test_the_cli_gives_the_engines_pixels(
    engine: Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli.png"
    ran = cli(
        "imagine", "--prompt", "a lighthouse at dusk", "--negative-prompt", "fog",
        "--seed", "77", "--steps", "3", "--guidance", "5", "--aspect", "4:3",
        "--model", tiny_model_dir, "--resolution", "64", "--device", "cpu",
        "--safety-checker", "off", "--output", out,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "seed: 77" in ran.stdout and "(64x48)" in ran.stdout
    req = text_job(
        tmp_path, "engine", prompt="a lighthouse at dusk", negative_prompt="fog", seed=77,
        steps=3, guidance=5.0, start=NoiseStart(*aspect_size("4:3", 64)),
    )  # fmt: skip
    (result,) = engine.generate([req])
    with Image.open(out) as img:
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), png(result))


def test_the_cli_refuses_bad_input_with_the_bots_message(tmp_path: Path) -> None:
    ran = cli("imagine", "--prompt", "  ", "--seed", "1", "--output", tmp_path / "x.png")
    assert ran.returncode == 2
    assert "The prompt is empty" in ran.stderr
    assert not (tmp_path / "x.png").exists()
