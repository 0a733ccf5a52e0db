"""Structure from the command line: `structure-map` writes the worker's map, and `run
--structure lines --structure-weight W --controlnet SOURCE` gives the worker's pixels;
a bad weight or a kind with no ControlNet gets the bot's words and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.engine import Engine
from pipeline.prepare import fit_to_resolution
from pipeline.request import ControlRef, GenerationRequest, GenerationResult
from pipeline.stepbatch import StepHooks
from pipeline.structure import structure_map
from pipeline.tiny_controlnet import controlnet_dir
from tests.pipeline.test_cli import cli

RESOLUTION = 64


@pytest.fixture(scope="module")
def sketch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A floor-plan sketch the bot stores as it is (RGB, inside the size limits)."""
    image = Image.new("RGB", (320, 256), (240, 238, 232))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 300, 236), outline=(30, 30, 30), width=6)
    draw.line((160, 20, 160, 150), fill=(30, 30, 30), width=6)
    draw.line((160, 140, 300, 140), fill=(30, 30, 30), width=6)
    path = tmp_path_factory.mktemp("cli-structure") / "plan.png"
    image.save(path)
    return path


def test_structure_map_writes_the_map_at_the_generated_size(sketch: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    made = cli("structure-map", sketch, "--kind", "lines", "--resolution", "64", "--output", out)
    assert made.returncode == 0, made.stderr
    with Image.open(sketch) as src:  # the worker's input: the stored picture, fitted
        expected = structure_map(fit_to_resolution(src.convert("RGB"), 64), "lines")
    with Image.open(out) as written:
        assert written.size == expected.size == (64, 48)
        np.testing.assert_array_equal(np.asarray(written), np.asarray(expected))
    assert np.asarray(expected).max() == 255


def test_run_with_structure_gives_the_workers_pixels(
    tiny_model_dir: Path, sketch: Path, tmp_path: Path
) -> None:
    lines = str(controlnet_dir(tiny_model_dir, "lines"))
    out = tmp_path / "cli.png"
    common = ["run", sketch, "--prompt", "a house", "--strength", "0.75", "--seed", "7",
              "--steps", "4", "--model", tiny_model_dir, "--device", "cpu", "--resolution",
              str(RESOLUTION), "--safety-checker", "off"]  # fmt: skip
    ran = cli(*common, "--structure", "lines", "--structure-weight", "1.5",
              "--controlnet", lines, "--output", out)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert out.with_name("cli.structure.png").is_file()  # the map's thumbnail, beside it

    engine = Engine.load(str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
                         safety_checker="off", controlnets={"lines": lines})  # fmt: skip
    request = GenerationRequest(
        "w",
        str(sketch),
        "a house",
        0.75,
        7,
        4,
        7.5,
        str(tmp_path / "worker.png"),
        control=ControlRef("lines", 1.5),
    )
    done: list[GenerationResult] = []
    engine.run_steps([request], StepHooks(on_finished=done.append), max_batch=4)
    with Image.open(out) as cli_img, Image.open(done[0].output_path) as worker_img:
        np.testing.assert_array_equal(np.asarray(cli_img), np.asarray(worker_img))

    bad = cli(*common, "--structure", "lines", "--structure-weight", "3", "--output", out)
    assert bad.returncode == 2 and "Structure weight 3 is out of range" in bad.stderr
    none = cli(*common, "--structure", "edges", "--output", out)
    assert none.returncode == 2 and "needs --controlnet or CONTROLNET_EDGES_ID" in none.stderr
