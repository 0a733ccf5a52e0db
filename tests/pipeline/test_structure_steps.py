"""Structure (ControlNet) rows on the worker, on the tiny model and its tiny ControlNets
(CPU): rows with and without structure, of both kinds and other weights, share each UNet
call, and each job's PNG equals diffusers' own `StableDiffusionControlNetImg2ImgPipeline`
run alone with the same map, weight and seed on the engine's (batch-invariant) modules; a
free row equals the plain img2img pipeline's. The ControlNet visibly changes the picture,
and the result depends on the map and on the weight."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetImg2ImgPipeline
from PIL import Image, ImageDraw

from pipeline.engine import Engine
from pipeline.request import ControlRef, GenerationRequest, InputError
from pipeline.structure import structure_map
from pipeline.tiny_controlnet import controlnet_dir
from tests.pipeline.step_runs import Results, alone, png, run

RESOLUTION = 64


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    sources = {kind: str(controlnet_dir(tiny_model_dir, kind)) for kind in ("edges", "lines")}
    yield Engine.load(str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
                      safety_checker="off", controlnets=sources)  # fmt: skip


def drawn(folder: Path, name: str, shapes: int) -> str:
    """A pencil sketch at the generated size: dark strokes on light paper."""
    image = Image.new("RGB", (64, 48), (236, 233, 228))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(shapes)
    for _ in range(shapes):
        x, y = rng.integers(2, 40), rng.integers(2, 28)
        draw.rectangle(
            (x, y, x + rng.integers(8, 22), y + rng.integers(8, 18)), outline=(40, 40, 45)
        )
        draw.line((x, y, 63 - x, 47 - y), fill=(60, 55, 50), width=2)
    path = folder / f"{name}.png"
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def sketches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("structure-input")
    return {"house": drawn(folder, "house", 3), "plan": drawn(folder, "plan", 5)}


def job(out: Path, image: str, name: str, **kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = dict(
        job_id=name, image_path=image, prompt=f"a picture of {name}", strength=0.8,
        seed=len(name) * 13 + 5, steps=5, guidance=7.5, output_path=str(out / f"{name}.png"),
    )  # fmt: skip
    fields.update(kw)
    return GenerationRequest(**fields)


def diffusers_solo(engine: Engine, req: GenerationRequest) -> np.ndarray:
    """The job alone through diffusers' own pipeline on the engine's loaded modules: the
    ControlNet img2img pipeline with the worker's map for a structure job, else img2img."""
    with Image.open(req.image_path) as src:
        image = src.convert("RGB")
    kwargs: dict[str, Any] = dict(
        prompt=req.prompt, negative_prompt=req.negative_prompt or "", image=image,
        strength=req.strength, num_inference_steps=req.steps, guidance_scale=req.guidance,
        generator=torch.Generator(device="cpu").manual_seed(req.seed),
    )  # fmt: skip
    if req.control is None:
        return np.asarray(engine.pipe(**kwargs).images[0]).astype(np.int16)
    net = engine.controls.nets[req.control.kind]
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(engine.pipe, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        **kwargs,
        control_image=structure_map(image, req.control.kind),
        controlnet_conditioning_scale=req.control.weight,
    ).images[0]
    return np.asarray(out).astype(np.int16)


def test_the_engine_serves_both_kinds_and_a_tiny_controlnet_changes_the_picture(
    engine: Engine, sketches: dict[str, str], tmp_path: Path
) -> None:
    assert engine.info.structures == ("edges", "lines")
    free = alone(engine, job(tmp_path, sketches["house"], "a"), tmp_path)
    held = job(tmp_path, sketches["house"], "a", control=ControlRef("lines", 1.0))
    assert np.abs(alone(engine, held, tmp_path) - free).mean() > 8  # of 255: one sees it


def test_structure_and_free_rows_share_calls_and_each_equals_diffusers_alone(
    engine: Engine, sketches: dict[str, str], tmp_path: Path
) -> None:
    jobs = [  # two weights of one kind in one ControlNet call, another kind, a free row
        job(tmp_path, sketches["house"], "lines", control=ControlRef("lines", 0.6)),
        job(tmp_path, sketches["house"], "free"),  # no structure, with guidance: two rows
        job(tmp_path, sketches["plan"], "edges", control=ControlRef("edges", 1.7), guidance=0.0),
        job(tmp_path, sketches["plan"], "lines2", control=ControlRef("lines", 1.7), steps=4),
    ]
    rows: list[int] = []
    control_rows: list[int] = []
    hooks = [engine.pipe.unet.register_forward_hook(lambda m, a, o: rows.append(len(a[0])))]
    for net in engine.controls.nets.values():
        hooks.append(net.register_forward_hook(lambda m, a, o: control_rows.append(len(a[0]))))
    try:
        mixed = run(engine, jobs)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(mixed.done) == {j.job_id for j in jobs} and not mixed.failed
    assert rows[0] == 7  # every job's rows in one UNet call
    assert sorted(control_rows[:2]) == [1, 4]  # one ControlNet call per kind, its rows only
    for req in jobs:
        result = mixed.done[req.job_id]
        np.testing.assert_array_equal(
            png(result.output_path), diffusers_solo(engine, req), err_msg=req.job_id
        )
        if req.control is None:
            assert result.structure_map == ""
        else:  # the map's thumbnail travels with the result
            with Image.open(result.structure_map) as thumb:
                assert thumb.size == (64, 48) and np.asarray(thumb).max() == 255


def test_the_result_depends_on_the_map_and_the_weight(
    engine: Engine, sketches: dict[str, str], tmp_path: Path
) -> None:
    def held(image: str, weight: float) -> np.ndarray:
        req = job(tmp_path, image, "same-seed", control=ControlRef("lines", weight))
        return alone(engine, req, tmp_path)

    house = held(sketches["house"], 1.0)
    assert np.abs(held(sketches["plan"], 1.0) - house).mean() > 4
    assert np.abs(held(sketches["house"], 0.1) - held(sketches["house"], 2.0)).mean() > 4


def test_the_call_path_gives_the_step_paths_pixels_one_call_per_structure(
    engine: Engine, sketches: dict[str, str], tmp_path: Path
) -> None:
    a = job(tmp_path, sketches["house"], "call-a", control=ControlRef("edges", 1.3))
    b = job(tmp_path, sketches["plan"], "call-b", control=ControlRef("edges", 1.3))
    c = job(tmp_path, sketches["plan"], "call-c")
    results = {r.job_id: r for r in engine.generate([a, b, c])}
    assert set(results) == {"call-a", "call-b", "call-c"}
    for req in (a, b, c):
        np.testing.assert_array_equal(
            png(results[req.job_id].output_path), diffusers_solo(engine, req), err_msg=req.job_id
        )
    assert results["call-a"].structure_map and not results["call-c"].structure_map


def test_a_kind_without_a_controlnet_fails_only_its_job_in_plain_words(
    tiny_model_dir: Path, sketches: dict[str, str], tmp_path: Path
) -> None:
    edges_only = {"edges": str(controlnet_dir(tiny_model_dir, "edges")), "lines": None}
    engine = Engine.load(str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
                         safety_checker="off", controlnets=edges_only)  # fmt: skip
    assert engine.info.structures == ("edges",)
    jobs = [
        job(tmp_path, sketches["house"], "wants-lines", control=ControlRef("lines", 1.0)),
        job(tmp_path, sketches["house"], "free", steps=2),
    ]
    results = run(engine, jobs)
    assert set(results.done) == {"free"}
    message = results.failed["wants-lines"]
    assert "'lines' is not available" in message and "Available: edges" in message
    with pytest.raises(InputError, match="not available"):
        engine.generate(jobs[:1])


def test_padded_rows_carry_padded_residuals(
    engine: Engine, sketches: dict[str, str], tmp_path: Path
) -> None:
    """A compiled UNet (GPU) pads the rows to a bucket (3 → 4): the ControlNet residuals
    are padded with them, and each job's picture stays within one level of its unpadded
    run (the bucket's other row count may round a last bit differently on the CPU)."""
    from pipeline.stepbatch import StepLoop
    from pipeline.stepsets import run_steps

    reqs = [
        job(tmp_path, sketches["house"], "held", control=ControlRef("lines", 1.2), steps=3),
        job(tmp_path, sketches["plan"], "free-one-row", guidance=0.0, steps=3),
    ]
    results = Results()
    made: list[StepLoop] = []

    def new_set(_: GenerationRequest) -> StepLoop:
        made.append(StepLoop(engine.pipe, checker=None, max_batch=2, pad_rows=True,
                             controls=engine.controls))  # fmt: skip
        return made[-1]

    def load(req: GenerationRequest) -> Image.Image:
        with Image.open(req.image_path) as src:
            return src.convert("RGB")

    run_steps(new_set, reqs, results.hooks(), load=load)
    assert made[0].rows_run == 3 * made[0].unet_calls  # real rows counted, padding not
    for req in reqs:
        diff = np.abs(png(results.done[req.job_id].output_path) - alone(engine, req, tmp_path))
        assert diff.max() <= 1, req.job_id
