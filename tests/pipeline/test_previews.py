"""Live previews (issue 29): the latent projection, the tiny autoencoder, x0, the safety rule,
and the step path (one batched decode per step, the final picture untouched)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.engine import Engine
from pipeline.previews import (
    APPROX_FACTORS,
    HIDDEN,
    Previewer,
    approx_rgb,
    setup_previews,
    x0_prediction,
)
from pipeline.request import GenerationRequest
from pipeline.safety import load_standalone_checker
from tests.pipeline.test_stepbatch import Recorder, job, png

RESOLUTION = 64


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, checker_dirs: dict[str, Path]) -> Iterator[Engine]:
    eng = Engine.load(
        str(tiny_model_dir),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker_id=str(checker_dirs["none"]),
    )
    yield eng


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> str:
    pixels = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("preview-input") / "wide.png"
    Image.fromarray(pixels, "RGB").save(path)
    return str(path)


def hf_energy(data: bytes) -> float:
    """Mean squared difference of neighbouring grey pixels: how much fine detail shows."""
    grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    return float(np.mean(np.diff(grey, axis=0) ** 2) + np.mean(np.diff(grey, axis=1) ** 2))


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


# -- the linear projection ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_approx_maps_each_latent_channel_to_its_public_colour(kind: str) -> None:
    factors, bias = APPROX_FACTORS[kind]
    latents = torch.zeros(5, 4, 2, 3)
    for channel in range(4):
        latents[channel, channel] = 1.0  # row 4 stays zero: the bias alone
    rgb = approx_rgb(latents, kind)
    for channel in range(4):
        want = [(f + b + 1) / 2 for f, b in zip(factors[channel], bias, strict=True)]
        np.testing.assert_allclose(rgb[channel, :, 1, 2].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(rgb[4, :, 0, 0].numpy(), [(b + 1) / 2 for b in bias], atol=1e-6)
    # SD's 4th channel pushes towards yellow-ish (blue falls most): a known property.
    assert kind != "sd" or rgb[3, 2, 0, 0] < rgb[3, 0, 0, 0]


def test_approx_keeps_the_latent_shape_for_sd_and_sdxl_latents() -> None:
    assert approx_rgb(torch.randn(1, 4, 64, 64), "sd").shape == (1, 3, 64, 64)
    sdxl = approx_rgb(torch.randn(2, 4, 128, 96), "sdxl")
    assert sdxl.shape == (2, 3, 128, 96)
    assert float(sdxl.min()) >= 0 and float(sdxl.max()) <= 1


# -- x0 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_x0_from_the_model_output_matches_the_schedulers_own(engine: Engine, name: str) -> None:
    """Where `step` gives no x0 (PNDM, DPM++), it is computed; the formula must agree with
    the x0 DDIM (alpha space) and Euler (sigma space) report themselves."""
    cls = getattr(diffusers, name)
    config = {k: v for k, v in engine.pipe.scheduler.config.items() if k in cls._get_init_keys(cls)}
    scheduler = cls.from_config({**config, "clip_sample": False})  # DDIM clamps its own x0
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen) * float(scheduler.init_noise_sigma)
    eps = torch.randn(1, 4, 8, 8, generator=gen)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(3)
    output = scheduler.step(eps, t, sample, return_dict=True)
    computed = x0_prediction(scheduler, object(), sample, eps, t)
    torch.testing.assert_close(computed, output.pred_original_sample, rtol=1e-4, atol=1e-4)
    assert x0_prediction(scheduler, output, sample, eps, t) is output.pred_original_sample


def test_a_preview_is_due_at_the_first_step_then_at_most_every_interval_never_at_the_end() -> None:
    now = [100.0]
    preview = Previewer("approx", interval_s=3.0, clock=lambda: now[0])
    assert preview.due("a", 1, done=False)  # the first step: the first edit can carry it
    now[0] += 2.9
    assert not preview.due("a", 2, done=False)
    assert preview.due("b", 1, done=False)  # per job
    now[0] += 0.2
    assert preview.due("a", 3, done=False)
    now[0] += 10
    assert not preview.due("a", 9, done=True)  # the result replaces it
    assert "a" not in preview.last
    steps = Previewer("approx", every_steps=5)  # the bench knob: by steps, not seconds
    assert [s for s in range(1, 16) if steps.due("c", s, done=False)] == [5, 10, 15]


# -- decoders and the safety rule --------------------------------------------------------
def test_the_tiny_taesd_loads_through_the_real_path_and_decodes(
    engine: Engine, tiny_model_dir: Path
) -> None:
    preview = setup_previews(
        engine.pipe, engine.checker, mode="taesd", model_id=str(tiny_model_dir / "taesd")
    )
    assert preview is not None and preview.mode == "taesd"
    latents = torch.randn(2, 4, 48, 64)
    out = preview.render([latents[:1], latents[1:]], [True, False], [(512, 384), (512, 384)])
    assert len(out) == 2 and preview.renders == 1  # both rows in one decode
    assert decoded(out[0]).size == (256, 192) and len(out[0]) < 20_000


def test_auto_falls_back_to_approx_and_says_so_once(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.previews"):
        preview = setup_previews(
            engine.pipe, engine.checker, mode="auto", model_id=str(tmp_path / "no-such-taesd")
        )
    assert preview is not None and preview.mode == "approx" and preview.decoder is None
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.previews"]
    assert len(lines) == 1 and lines[0].startswith("previews: approx")
    assert setup_previews(engine.pipe, None, mode="off") is None


def test_flagged_previews_are_hidden_where_filtered_and_blurred_without_a_checker(
    checker_dirs: dict[str, Path],
) -> None:
    flags_all = load_standalone_checker(str(checker_dirs["all"]), device="cpu", dtype=torch.float32)
    latents = [torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1)) * 2]
    size = [(256, 256)]
    strict = Previewer("approx", checker=flags_all)
    assert strict.render(latents, [True], size) == [HIDDEN]  # filtered: never shown
    unfiltered = strict.render(latents, [False], size)[0]  # allowed unfiltered here
    assert unfiltered != HIDDEN
    blurred = Previewer("approx", checker=None).render(latents, [True], size)[0]
    assert decoded(blurred).size == (256, 256)
    assert hf_energy(blurred) < 0.1 * hf_energy(unfiltered)


# -- the step path -----------------------------------------------------------------------
def run(engine: Engine, reqs: list[GenerationRequest]) -> tuple[Recorder, list[tuple[str, bytes]]]:
    rec = Recorder()
    hooks = rec.hooks()
    previews: list[tuple[str, bytes]] = []
    hooks.on_preview = lambda job_id, data: previews.append((job_id, data))
    engine.run_steps(reqs, hooks, max_batch=4)
    return rec, previews


def test_previews_ride_one_decode_per_step_and_never_change_the_picture(
    engine: Engine, tiny_model_dir: Path, picture: str, tmp_path: Path
) -> None:
    preview = setup_previews(
        engine.pipe, None, mode="taesd", model_id=str(tiny_model_dir / "taesd"), every_steps=1
    )
    assert preview is not None
    on = [
        job(tmp_path / "on", picture, "a", preview=True, steps=6),
        job(tmp_path / "on", picture, "bb", preview=True, steps=6, strength=0.7),
        job(tmp_path / "on", picture, "ccc", steps=6),  # asked for none
    ]
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    engine.previews = preview
    try:
        with_previews, previews = run(engine, on)
    finally:
        engine.previews = None
    off = [job(tmp_path / "off", picture, r.job_id, steps=6, strength=r.strength) for r in on]
    without, none = run(engine, off)
    assert none == []
    for req in on:  # pixel-equal with previews on and off
        np.testing.assert_array_equal(
            png(with_previews.results[req.job_id]), png(without.results[req.job_id])
        )
    got = {job_id for job_id, _ in previews}
    assert got == {"a", "bb"}  # only the jobs that asked
    assert all(decoded(data).size == (64, 48) for _, data in previews)  # blurred, no checker
    # a: 3 steps, bb: 4; none after a job's last step; one decode serves both at each step
    assert [j for j, _ in previews].count("a") == 2 and [j for j, _ in previews].count("bb") == 3
    assert preview.renders == 3


def test_with_a_checker_that_flags_everything_no_preview_image_leaves_a_filtered_job(
    tiny_model_dir: Path, checker_dirs: dict[str, Path], picture: str, tmp_path: Path
) -> None:
    """Through the real step path and the loaded checker: a filtered job's previews are all
    `HIDDEN`; one whose channel allows unfiltered results gets pictures (not blurred)."""
    strict = Engine.load(
        str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
        safety_checker_id=str(checker_dirs["all"]),
    )  # fmt: skip
    assert strict.checker is not None
    strict.previews = setup_previews(strict.pipe, strict.checker, mode="approx", every_steps=1)
    filtered = job(tmp_path, picture, "a", preview=True, steps=8)
    allowed = job(tmp_path, picture, "bb", preview=True, steps=8, allow_nsfw=True)
    rec, previews = run(strict, [filtered, allowed])
    assert rec.finals() == {"a": "finished", "bb": "finished"}
    assert rec.results["a"].withheld and rec.results["bb"].nsfw  # the final check as ever
    shown = {j: [data for k, data in previews if k == j] for j in ("a", "bb")}
    assert len(shown["a"]) == 3 and set(shown["a"]) == {HIDDEN}
    assert len(shown["bb"]) == 3 and all(decoded(data) for data in shown["bb"])
