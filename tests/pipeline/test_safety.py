"""The safety checker on the real code path: diffusers' StableDiffusionSafetyChecker and a
CLIPImageProcessor, built tiny by `pipeline.tiny_checker`, saved and loaded back by
`Engine.load` exactly as a real checker is."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine, ModelLoadError
from pipeline.request import GenerationRequest
from pipeline.tiny import make_tiny
from pipeline.tiny_checker import save_tiny_checker

RESOLUTION = 64


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("safety-in") / "in.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def shipping_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model shipping its own checker (flags all), as SD 1.5 ships one."""
    return make_tiny(tmp_path_factory.mktemp("tiny-with-checker"), safety_checker="all")


def load(model: Path, checker_id: Path | str | None = None, mode: str = "auto") -> Engine:
    return Engine.load(
        str(model),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker=mode,
        safety_checker_id=None if checker_id is None else str(checker_id),
    )


def request(source: str, out: Path, job_id: str = "job", **kw: object) -> GenerationRequest:
    fields: dict[str, object] = dict(
        job_id=job_id,
        image_path=source,
        prompt="a fox",
        strength=0.5,
        seed=1,
        steps=4,
        guidance=7.5,
        output_path=str(out / f"{job_id}.png"),
    )
    fields.update(kw)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_flagged_image_is_withheld_and_never_written(
    tiny_model_dir: Path, checker_dirs: dict[str, Path], source: str, tmp_path: Path
) -> None:
    engine = load(tiny_model_dir, checker_dirs["all"])
    assert engine.info.safety_checker == "on"
    assert engine.pipe.safety_checker is None  # diffusers' own check (black squares) is off

    (result,) = engine.generate([request(source, tmp_path)])

    assert result.withheld and result.nsfw
    assert result.output_path == ""
    assert list(tmp_path.iterdir()) == []


def test_flagged_image_allowed_is_written_and_marked(
    tiny_model_dir: Path, checker_dirs: dict[str, Path], source: str, tmp_path: Path
) -> None:
    engine = load(tiny_model_dir, checker_dirs["all"])
    (result,) = engine.generate([request(source, tmp_path, allow_nsfw=True)])
    assert result.nsfw and not result.withheld
    image = pixels(result.output_path)
    assert image.shape == (result.height, result.width, 3)
    assert image.max() > 0  # a real picture, not diffusers' black square


def test_unflagging_checker_gives_normal_results(
    tiny_model_dir: Path, checker_dirs: dict[str, Path], source: str, tmp_path: Path
) -> None:
    engine = load(tiny_model_dir, checker_dirs["none"])
    assert engine.info.safety_checker == "on"
    (result,) = engine.generate([request(source, tmp_path)])
    assert not result.nsfw and not result.withheld
    assert result.filtered  # the bot records that a checker looked at this picture
    assert Path(result.output_path).is_file()


def test_the_model_s_own_checker_is_used(
    shipping_model_dir: Path, checker_dirs: dict[str, Path], source: str, tmp_path: Path
) -> None:
    """auto prefers the checker the model ships (flags all) over SAFETY_CHECKER_ID (none)."""
    engine = load(shipping_model_dir, checker_dirs["none"])
    assert engine.info.safety_checker == "on"
    (result,) = engine.generate([request(source, tmp_path)])
    assert result.withheld and not (tmp_path / "job.png").exists()


def test_dark_checker_flags_dark_pictures_only(
    tiny_model_dir: Path, checker_dirs: dict[str, Path]
) -> None:
    engine = load(tiny_model_dir, checker_dirs["dark"])
    assert engine.checker is not None
    shades = [Image.new("RGB", (80, 60), (v, v, v)) for v in (0, 20, 230, 255)]
    assert engine.checker.flags(shades) == [True, True, False, False]


def test_in_one_batch_only_the_flagged_image_is_withheld(
    tiny_model_dir: Path, source: str, tmp_path: Path
) -> None:
    """A `like` checker built from job A's output flags A and not B, in the same batch."""
    plain = load(tiny_model_dir, mode="off")
    a = request(source, tmp_path / "alone", "a", seed=1)
    b = request(source, tmp_path / "alone", "b", seed=2, prompt="a harbour")
    alone = {r.job_id: plain.generate([r])[0] for r in (a, b)}
    checker = save_tiny_checker(
        tmp_path / "checker",
        "like",
        like=[alone["a"].output_path],
        unlike=[alone["b"].output_path],
    )
    engine = load(tiny_model_dir, checker)
    batch = [dataclasses.replace(r, output_path=str(tmp_path / f"{r.job_id}.png")) for r in (a, b)]

    results = engine.generate(batch)

    assert [(r.job_id, r.nsfw, r.withheld) for r in results] == [
        ("a", True, True),
        ("b", False, False),
    ]
    assert not (tmp_path / "a.png").exists()
    assert np.array_equal(pixels(results[1].output_path), pixels(alone["b"].output_path))


def test_on_without_a_checker_refuses_to_start(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-checker-here"
    with pytest.raises(ModelLoadError) as err:
        load(tiny_model_dir, missing, mode="on")
    msg = str(err.value)
    assert "SAFETY_CHECKER=on" in msg and "\n" not in msg
    assert "the model ships no safety checker" in msg  # what was tried, both places
    assert f"SAFETY_CHECKER_ID {str(missing)!r}: no such folder" in msg


def test_on_names_a_hub_id_that_failed(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="SAFETY_CHECKER_ID 'nobody/no-such-checker'"):
        load(tiny_model_dir, "nobody/no-such-checker", mode="on")


def test_auto_without_a_checker_starts_with_one_loud_warning(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        engine = load(tiny_model_dir, tmp_path / "nothing")
    assert engine.info.safety_checker == "missing" and engine.checker is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "NOT filtered" in warnings[0].getMessage()


def test_off_uses_no_checker_even_if_the_model_ships_one(
    shipping_model_dir: Path, source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        engine = load(shipping_model_dir, mode="off")
    assert engine.info.safety_checker == "off" and engine.checker is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "SAFETY_CHECKER=off: generated images are NOT checked for unsafe content"
    ]
    (result,) = engine.generate([request(source, tmp_path)])
    assert not result.nsfw and Path(result.output_path).is_file()
    assert not result.filtered  # no checker looked: the bot says results are not filtered


def test_like_checker_refuses_lookalike_references(tmp_path: Path) -> None:
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    with pytest.raises(ValueError, match="look the same"):
        save_tiny_checker(tmp_path, "like", like=[grey], unlike=[grey.copy()])
