"""`python -m pipeline` end to end, in a subprocess like a user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def cli(
    *args: str | Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A photo-like 600×400 JPEG: smooth gradients, a bright disc and sensor noise."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:400, 0:600].astype(np.float32)
    sky = np.stack([80 + 100 * y / 400, 120 + 80 * y / 400, 230 - 60 * y / 400], axis=-1)
    sun = ((x - 420) ** 2 + (y - 120) ** 2 < 60**2)[..., None] * np.array([120, 90, -60])
    ground = (y > 260)[..., None] * np.array([-40, 10, -120])
    pixels = np.clip(sky + sun + ground + rng.normal(0, 6, sky.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(pixels, "RGB").save(path, quality=90)
    return path


def test_make_tiny_then_run(tmp_path: Path, photo: Path) -> None:
    model = tmp_path / "tiny"
    made = cli("make-tiny", model)
    assert made.returncode == 0, made.stderr
    assert (model / "model_index.json").is_file()

    out = tmp_path / "nested" / "out.png"
    ran = cli(
        "run", photo, "--prompt", "a sunset over a field", "--strength", "0.5",
        "--negative-prompt", "blurry", "--seed", "4242", "--steps", "4", "--guidance", "6",
        "--model", model, "--device", "cpu", "--output", out,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "seed: 4242" in ran.stdout
    assert re.search(r"steps: 2 run \(of 4 scheduled\)", ran.stdout)
    assert re.search(r"time: \d+\.\d+ s", ran.stdout)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (512, 344)  # native 512, aspect of 600×400 kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "   ", "--strength", "0.5"], "prompt is empty"),
        (["--prompt", "p" * 1001, "--strength", "0.5"], "limit is 1000"),
        (["--prompt", "a fox", "--strength", "1.5"], "Strength 1.5 is out of range"),
        (["--prompt", "a fox", "--strength", "0.01"], "Strength 0.01 is out of range"),
        (["--prompt", "a fox", "--strength", "0.5", "--steps", "0"], "Steps 0 is out of range"),
    ],
    ids=["empty-prompt", "long-prompt", "strength-high", "strength-low", "steps"],
)
def test_bad_arguments_exit_2(tmp_path: Path, photo: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out.png"
    result = cli("run", photo, *args, "--model", tmp_path / "unused", "--output", out)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


def test_bad_image_exits_2(tmp_path: Path) -> None:
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (300, 300), (1, 2, 3)).save(gif)
    small = tmp_path / "small.png"
    Image.new("RGB", (200, 120)).save(small)
    for path, message in (
        (gif, "That file is a GIF file"),
        (small, "short side must be at least 256 px"),
        (tmp_path / "missing.png", "No such image file"),
    ):
        result = cli(
            "run", path, "--prompt", "a fox", "--strength", "0.5",
            "--model", tmp_path / "unused", "--output", tmp_path / "out.png",
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr


def test_missing_model_is_reported(tmp_path: Path, photo: Path) -> None:
    result = cli(
        "run", photo, "--prompt", "a fox", "--strength", "0.5",
        "--model", tmp_path / "nope", "--device", "cpu", "--output", tmp_path / "out.png",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Could not load model" in result.stderr and "nope" in result.stderr


def test_withheld_image_is_not_written(
    tmp_path: Path, photo: Path, tiny_model_dir: Path, checker_dirs: dict[str, Path]
) -> None:
    """The CLI applies SAFETY_CHECKER/SAFETY_CHECKER_ID like the bot, and says so."""
    out = tmp_path / "out.png"
    args = (
        "run", photo, "--prompt", "a fox", "--strength", "0.5", "--steps", "2",
        "--model", tiny_model_dir, "--device", "cpu", "--resolution", "64", "--output", out,
    )  # fmt: skip
    ran = cli(*args, env={"SAFETY_CHECKER": "on", "SAFETY_CHECKER_ID": str(checker_dirs["all"])})
    assert ran.returncode == 3, ran.stderr
    assert "withheld: the safety checker flagged the image" in ran.stderr
    assert not out.exists()

    allowed = cli(*args, "--allow-nsfw", env={"SAFETY_CHECKER_ID": str(checker_dirs["all"])})
    assert allowed.returncode == 0, allowed.stderr
    assert "flagged" in allowed.stdout and out.is_file()


def test_safety_checker_on_without_one_exits_1(
    tmp_path: Path, photo: Path, tiny_model_dir: Path
) -> None:
    result = cli(
        "run", photo, "--prompt", "a fox", "--strength", "0.5", "--model", tiny_model_dir,
        "--device", "cpu", "--output", tmp_path / "out.png", "--safety-checker", "on",
        "--safety-checker-id", tmp_path / "no-checker",
    )  # fmt: skip
    assert result.returncode == 1
    assert "SAFETY_CHECKER=on, but no safety checker could be loaded" in result.stderr


def test_make_tiny_checker_writes_a_standalone_checker(tmp_path: Path) -> None:
    made = cli("make-tiny-checker", tmp_path / "chk", "--flags", "none")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "chk" / "config.json").is_file()
    assert (tmp_path / "chk" / "preprocessor_config.json").is_file()
