"""Test models and LoRAs from the command line: `make-tiny --seed`, `make-tiny-lora`, and
`run --lora SOURCE:WEIGHT --lora-trigger WORDS` giving the worker's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine
from pipeline.request import GenerationRequest, GenerationResult, LoraRef
from pipeline.stepbatch import StepHooks
from pipeline.tiny import make_tiny
from tests.pipeline.test_cli import cli

RESOLUTION = 64


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG the bot stores as it is (RGB, inside the size limits)."""
    pixels = np.random.default_rng(9).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("cli-lora") / "photo.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path


def step_path(engine: Engine, req: GenerationRequest) -> np.ndarray:
    """The job as a step-batching worker runs it."""
    done: list[GenerationResult] = []
    engine.run_steps([req], StepHooks(on_finished=done.append), max_batch=4)
    with Image.open(done[0].output_path) as img:
        return np.asarray(img.convert("RGB"))


def test_run_with_a_lora_gives_the_workers_pixels(
    tiny_model_dir: Path, photo: Path, tmp_path: Path
) -> None:
    lora = tmp_path / "pixel.safetensors"
    made = cli("make-tiny-lora", lora, "--model", tiny_model_dir, "--seed", "3",
               "--format", "peft")  # fmt: skip
    assert made.returncode == 0, made.stderr
    out = tmp_path / "cli.png"
    ran = cli(
        "run", photo, "--prompt", "a fox", "--strength", "0.6", "--seed", "7", "--steps", "4",
        "--model", tiny_model_dir, "--device", "cpu", "--resolution", str(RESOLUTION),
        "--safety-checker", "off", "--lora", f"{lora}:0.8", "--lora-trigger", "pixel  art",
        "--output", out,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr

    engine = Engine.load(str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
                         safety_checker="off")  # fmt: skip
    request = GenerationRequest(
        "w", str(photo), "pixel art, a fox", 0.6, 7, 4, 7.5, str(tmp_path / "worker.png"),
        loras=(LoraRef("pixel", str(lora), 0.8),),
    )  # fmt: skip
    with Image.open(out) as img:
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), step_path(engine, request))
    plain = GenerationRequest(**{**request.__dict__, "loras": ()})
    assert not np.array_equal(step_path(engine, plain), step_path(engine, request))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora", "x.safetensors:2.5"], "weight must be a number from 0 to 2"),
        (["--lora-trigger", "pixel art"], "after the --lora it belongs to"),
        (["--lora", "MISSING.safetensors"], "The LoRA 'missing' could not be loaded"),
    ],
    ids=["weight", "trigger-alone", "missing-file"],
)
def test_bad_loras_exit_2(
    tiny_model_dir: Path, photo: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out.png"
    result = cli("run", photo, "--prompt", "a fox", "--strength", "0.5", "--steps", "2",
                 "--model", tiny_model_dir, "--device", "cpu", "--resolution", "64",
                 "--safety-checker", "off", "--output", out, *args)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_another_seed_makes_another_model(
    tiny_model_dir: Path, photo: Path, tmp_path: Path
) -> None:
    other = make_tiny(tmp_path / "other", seed=1)
    request = GenerationRequest("s", str(photo), "a fox", 0.6, 7, 4, 7.5, str(tmp_path / "o.png"))
    engines = [
        Engine.load(str(m), device="cpu", resolution=RESOLUTION, safety_checker="off")
        for m in (tiny_model_dir, other)
    ]
    pictures = [step_path(engine, request) for engine in engines]
    assert np.abs(pictures[0].astype(int) - pictures[1]).mean() > 8
