"""The engine on the real diffusers code path, with the tiny random-weight model.

One engine is loaded per module at 256 px to keep the runs fast; a second one at the
model's native 512 px checks the resolution it reports and one real full-size run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine, EngineInfo, JobCancelled, ModelLoadError
from pipeline.request import (
    INPUT_MISSING,
    INPUT_UNREADABLE,
    GenerationRequest,
    InputError,
    plan_steps,
)

RESOLUTION = 256


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, checker_dirs: dict[str, Path]) -> Engine:
    """With the real checker path on (a tiny checker that flags nothing)."""
    return Engine.load(
        str(tiny_model_dir),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker_id=str(checker_dirs["none"]),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int, int], str]:
    """Stored, normalized RGB PNG inputs (smooth gradients plus a little noise)."""
    folder = tmp_path_factory.mktemp("inputs")
    made: dict[tuple[int, int, int], str] = {}

    def make(width: int, height: int, variant: int = 0) -> str:
        key = (width, height, variant)
        if key not in made:
            rng = np.random.default_rng(variant)
            y, x = np.mgrid[0:height, 0:width]
            base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
            pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            path = folder / f"in-{width}x{height}-{variant}.png"
            Image.fromarray(pixels, "RGB").save(path)
            made[key] = str(path)
        return made[key]

    return make


def request(image_path: str, out: Path, **overrides: object) -> GenerationRequest:
    fields: dict[str, object] = dict(
        job_id="job",
        image_path=image_path,
        prompt="a watercolor fox",
        strength=0.5,
        seed=1234,
        steps=4,
        guidance=7.5,
        output_path=str(out),
        negative_prompt=None,
    )
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# --- loading ---------------------------------------------------------------------------------


def test_info(engine: Engine, tiny_model_dir: Path) -> None:
    assert engine.info == EngineInfo(
        model_id=str(tiny_model_dir),
        device="cpu",
        dtype="fp32",
        resolution=RESOLUTION,
        pipeline_class="StableDiffusionImg2ImgPipeline",
        safety_checker="on",
    )
    assert engine.pipe.safety_checker is None  # we run the checker, not diffusers


def test_missing_folder_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as err:
        Engine.load(str(missing), device="cpu")
    msg = str(err.value)
    assert str(missing) in msg and "on cpu" in msg and "local folder" in msg
    assert "does not exist" in msg


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        Engine.load(str(tmp_path), device="cpu")


def test_broken_model_index(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError) as err:
        Engine.load(str(tmp_path), device="cpu")
    assert f"Could not load model '{tmp_path}' on cpu (tried: local folder" in str(err.value)
    assert err.value.__cause__ is not None


def test_missing_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"Could not load model .*broken.* on cpu"):
        Engine.load(str(broken), device="cpu")


def test_unknown_class_in_model_index(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["_class_name"] = "NoSuchPipeline"
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="NoSuchPipeline"):
        Engine.load(str(broken), device="cpu")


def test_hub_id_offline_names_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        Engine.load("nobody-here/no-such-model-xyz", device="cpu")
    msg = str(err.value)
    assert "hub id 'nobody-here/no-such-model-xyz'" in msg and "HF_HUB_OFFLINE" in msg


def test_unavailable_device_is_a_model_load_error(tiny_model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        Engine.load(str(tiny_model_dir), device="cuda")


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (600, 400)])
def test_aspect_kept_in_real_output(
    engine: Engine, images: Callable[..., str], tmp_path: Path, size: tuple[int, int]
) -> None:
    width, height = size
    out = tmp_path / "sub" / "out.png"
    (result,) = engine.generate([request(images(width, height), out, strength=0.25)])
    assert out.is_file()
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (result.width, result.height) == engine.target_size(width, height)
    assert result.width % 8 == 0 and result.height % 8 == 0
    assert max(result.width, result.height) == RESOLUTION
    scale = RESOLUTION / max(width, height)
    assert abs(result.width - width * scale) <= 4 and abs(result.height - height * scale) <= 4


def test_native_resolution_engine(
    tiny_model_dir: Path, images: Callable[..., str], tmp_path: Path
) -> None:
    native = Engine.load(str(tiny_model_dir), device="cpu")
    assert native.info.resolution == 512  # unet sample_size 64 × VAE factor 8
    assert native.target_size(451, 300) == (512, 344)
    assert native.target_size(300, 451) == (344, 512)
    assert native.target_size(600, 400) == (512, 344)
    out = tmp_path / "native.png"
    (result,) = native.generate([request(images(600, 400), out, strength=0.25)])
    assert (result.width, result.height) == (512, 344)
    assert pixels(out).shape == (344, 512, 3)


# --- steps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "strength", "expected_run", "expected_total"),
    [
        (4, 0.05, 1, 20),
        (4, 0.35, 1, 4),
        (4, 0.5, 2, 4),
        (4, 1.0, 4, 4),
        (30, 0.05, 1, 30),
        (30, 0.35, 10, 30),
        (30, 0.5, 15, 30),
        (30, 1.0, 30, 30),
    ],
)
def test_effective_steps_counted_from_real_runs(
    engine: Engine,
    images: Callable[..., str],
    tmp_path: Path,
    steps: int,
    strength: float,
    expected_run: int,
    expected_total: int,
) -> None:
    assert plan_steps(steps, strength) == (expected_total, expected_run)
    seen: list[tuple[int, int]] = []
    req = request(images(128, 128), tmp_path / "o.png", steps=steps, strength=strength)
    (result,) = engine.generate([req], on_progress=lambda s, t: seen.append((s, t)))
    assert seen == [(i, expected_run) for i in range(1, expected_run + 1)]
    assert result.steps_run == expected_run
    assert result.steps_total == expected_total


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_pixels(engine: Engine, images: Callable[..., str], tmp_path: Path) -> None:
    src = images(300, 256)
    a = engine.generate([request(src, tmp_path / "a.png", seed=7)])[0]
    b = engine.generate([request(src, tmp_path / "b.png", seed=7)])[0]
    c = engine.generate([request(src, tmp_path / "c.png", seed=8)])[0]
    assert np.array_equal(pixels(a.output_path), pixels(b.output_path))
    assert not np.array_equal(pixels(a.output_path), pixels(c.output_path))
    assert not np.array_equal(pixels(a.output_path), pixels(src)[: a.height, : a.width])


def test_batch_equals_single_runs(
    engine: Engine, images: Callable[..., str], tmp_path: Path
) -> None:
    """Bit-exact on CPU thanks to Engine's batch-invariance measures (see engine.py)."""
    jobs = [
        request(images(451, 300, 1), tmp_path / "batch" / "1.png", job_id="1", seed=11),
        request(
            images(451, 300, 2),
            tmp_path / "batch" / "2.png",
            job_id="2",
            seed=22,
            prompt="an oil painting of a harbour at night",
            negative_prompt="blurry",
            strength=0.55,  # same plan as 0.5 at 4 steps: int(2.2) == 2
        ),
        request(images(451, 300, 1), tmp_path / "batch" / "3.png", job_id="3", seed=33, prompt="x"),
    ]
    batch = engine.generate(jobs)
    assert [r.job_id for r in batch] == ["1", "2", "3"]
    for job in jobs:
        alone = dataclasses.replace(job, output_path=str(tmp_path / "single" / f"{job.job_id}.png"))
        (single,) = engine.generate([alone])
        assert single.steps_run == 2
        assert np.array_equal(pixels(single.output_path), pixels(job.output_path)), job.job_id


def test_incompatible_batch_is_refused(
    engine: Engine, images: Callable[..., str], tmp_path: Path
) -> None:
    base = request(images(256, 256), tmp_path / "a.png")
    for other in (
        dataclasses.replace(base, steps=30),
        dataclasses.replace(base, guidance=3.0),
        dataclasses.replace(base, image_path=images(451, 300)),
    ):
        with pytest.raises(ValueError, match="must share"):
            engine.generate([base, dataclasses.replace(other, job_id="b")])
    assert engine.generate([]) == []


# --- progress and cancellation ---------------------------------------------------------------


def test_cancel_all_stops_between_steps(
    engine: Engine, images: Callable[..., str], tmp_path: Path
) -> None:
    seen: list[int] = []
    out = tmp_path / "cancelled.png"
    req = request(images(256, 256), out, steps=10, strength=1.0)
    with pytest.raises(JobCancelled) as err:
        engine.generate(
            [req],
            on_progress=lambda step, total: seen.append(step),
            is_cancelled=lambda job_id: len(seen) >= 2,
        )
    assert seen == [1, 2]
    assert err.value.steps_run == 2 and err.value.job_ids == ("job",)
    assert not out.exists()


def test_unreadable_inputs_fail_only_their_jobs(
    engine: Engine, images: Callable[..., str], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    jobs = [
        request(images(256, 256), tmp_path / "a.png", job_id="a"),
        request(str(tmp_path / "gone.png"), tmp_path / "b.png", job_id="b"),
        request(str(damaged), tmp_path / "c.png", job_id="c"),
    ]
    failed: list[tuple[str, str]] = []
    results = engine.generate(jobs, on_failed=lambda job, msg: failed.append((job, msg)))
    assert failed == [("b", INPUT_MISSING), ("c", INPUT_UNREADABLE)]
    assert [r.job_id for r in results] == ["a"] and (tmp_path / "a.png").is_file()
    with pytest.raises(InputError, match="no longer stored"):  # no callback: the CLI's case
        engine.generate([jobs[1]])


def test_cancel_some_finishes_the_rest(
    engine: Engine, images: Callable[..., str], tmp_path: Path
) -> None:
    src = images(256, 256)
    jobs = [request(src, tmp_path / f"{j}.png", job_id=j, seed=i) for i, j in enumerate("abc")]
    checked: list[str] = []

    def is_cancelled(job_id: str) -> bool:
        checked.append(job_id)
        return job_id == "b"

    told: list[str] = []
    results = engine.generate(jobs, is_cancelled=is_cancelled, on_cancelled=told.append)
    assert told == ["b"]  # once, from the first step
    assert [r.job_id for r in results] == ["a", "c"]
    assert (tmp_path / "a.png").is_file() and (tmp_path / "c.png").is_file()
    assert not (tmp_path / "b.png").exists()
    assert {"a", "b", "c"} <= set(checked)
