"""LoRAs on the worker, on the tiny model (CPU): per-row LoRA deltas in shared UNet calls.

Jobs with different LoRA sets (none, one, two at other weights) run as rows of one step-path
set; each must give the PNG it gives alone through the engine's own step path, and a job
with one LoRA the PNG of diffusers' own LoRA layers (`load_lora_weights` + `set_adapters`),
for a kohya-format and a PEFT-format file. LoRAs load once as named adapters, stay (LRU),
and one that cannot load fails only its jobs with a plain message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.engine import Engine
from pipeline.loras import lora_failed
from pipeline.request import GenerationRequest, LoraRef
from pipeline.tiny_lora import make_tiny_lora
from tests.pipeline.step_runs import alone, png, run

RESOLUTION = 64


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    yield Engine.load(str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
                      safety_checker="off")  # fmt: skip


@pytest.fixture(scope="module")
def lora_files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("loras")
    return {
        "kohya": str(make_tiny_lora(folder / "a.safetensors", tiny_model_dir, seed=1)),
        "peft": str(make_tiny_lora(folder / "b.safetensors", tiny_model_dir, seed=2, fmt="peft")),
    }


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("lora-input") / "in.png"
    pixels = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return str(path)


def job(out: Path, image: str, name: str, *loras: LoraRef, **kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = dict(
        job_id=name, image_path=image, prompt=f"a picture of {name}", strength=0.5,
        seed=len(name) * 11 + 1, steps=4, guidance=7.5, output_path=str(out / f"{name}.png"),
        loras=loras,
    )  # fmt: skip
    fields.update(kw)
    return GenerationRequest(**fields)


def test_a_tiny_lora_changes_the_picture_visibly(
    engine: Engine, lora_files: dict[str, str], picture: str, tmp_path: Path
) -> None:
    plain = job(tmp_path, picture, "plain", strength=0.75)
    base = alone(engine, plain, tmp_path)
    for fmt, source in lora_files.items():
        with_lora = job(tmp_path, picture, "plain", LoraRef(fmt, source, 1.0), strength=0.75)
        diff = np.abs(alone(engine, with_lora, tmp_path) - base)
        assert diff.mean() > 8, fmt  # of 255: a change one sees


def test_rows_of_different_lora_sets_share_calls_and_each_equals_its_solo_run(
    engine: Engine, lora_files: dict[str, str], picture: str, tmp_path: Path
) -> None:
    a = LoraRef("kohya", lora_files["kohya"], 0.8)
    b = LoraRef("peft", lora_files["peft"], 1.0)
    jobs = [
        job(tmp_path, picture, "none"),  # no LoRA, with guidance: two rows
        job(tmp_path, picture, "aa", a),
        job(tmp_path, picture, "ab-weights", LoraRef("kohya", a.source, 0.3), b),
        job(tmp_path, picture, "bbb", b, guidance=0.0, strength=1.0),  # one row
    ]
    rows: list[int] = []
    hook = engine.pipe.unet.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    try:
        mixed = run(engine, jobs)
    finally:
        hook.remove()
    assert set(mixed.done) == {j.job_id for j in jobs} and not mixed.failed
    assert rows[0] == 7  # all four jobs' rows in one UNet call
    for req in jobs:
        np.testing.assert_array_equal(
            png(mixed.done[req.job_id]), alone(engine, req, tmp_path), err_msg=req.job_id
        )
    assert engine.loras.loaded.keys() == {"kohya", "peft"}


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_one_lora_equals_diffusers_own_lora_layers(
    engine: Engine, lora_files: dict[str, str], picture: str, tmp_path: Path, fmt: str
) -> None:
    ref = LoraRef(fmt, lora_files[fmt], 0.7)
    with_lora = job(tmp_path, picture, "one", ref)
    ours = alone(engine, with_lora, tmp_path)
    # diffusers' way, on the same path: the file loaded by load_lora_weights under another
    # name, made active at the weight by set_adapters, and a request without LoRAs.
    pipe = engine.pipe
    pipe.load_lora_weights(lora_files[fmt], adapter_name="reference")
    try:
        pipe.enable_lora()
        pipe.set_adapters(["reference"], [0.7])
        theirs = alone(engine, job(tmp_path, picture, "one"), tmp_path)
    finally:
        pipe.delete_adapters(["reference"])
        pipe.disable_lora()
    np.testing.assert_array_equal(ours, theirs)
    # and the pipeline-call path (one LoRA set a call, diffusers' set_adapters) agrees
    (called,) = engine.generate([job(tmp_path, picture, "one", ref)])
    np.testing.assert_array_equal(png(called), ours)


def test_a_lora_that_cannot_load_fails_only_its_jobs(
    engine: Engine, lora_files: dict[str, str], picture: str, tmp_path: Path
) -> None:
    broken = tmp_path / "secret-dir" / "broken.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(b"not a safetensors file")
    jobs = [
        job(tmp_path, picture, "ok", LoraRef("peft", lora_files["peft"], 1.0)),
        job(tmp_path, picture, "bad", LoraRef("broken", str(broken), 1.0)),
        job(tmp_path, picture, "plain"),
    ]
    results = run(engine, jobs)
    assert set(results.done) == {"ok", "plain"}
    assert results.failed == {"bad": lora_failed("broken")}
    assert "secret-dir" not in results.failed["bad"] and "Error" not in results.failed["bad"]
    # the call path fails it the same way, and the others of its batch still run
    failed: dict[str, str] = {}
    done = engine.generate(jobs[1:], on_failed=failed.__setitem__)
    assert [r.job_id for r in done] == ["plain"] and failed == {"bad": lora_failed("broken")}


def test_adapters_load_once_and_the_least_recently_used_goes(
    tiny_model_dir: Path, lora_files: dict[str, str], picture: str, tmp_path: Path
) -> None:
    engine = Engine.load(str(tiny_model_dir), device="cpu", resolution=RESOLUTION,
                         safety_checker="off", max_loras_loaded=2)  # fmt: skip
    from peft.tuners.tuners_utils import BaseTunerLayer

    from pipeline.loras import lora_layers

    unet = engine.pipe.unet
    assert lora_layers(unet) == []  # listed (and kept) before any LoRA was loaded
    refs = [LoraRef(name, lora_files["kohya"], 1.0) for name in ("x", "y", "z")]
    for i, ref in enumerate([refs[0], refs[1], refs[0], refs[2]]):
        run(engine, [job(tmp_path, picture, f"j{i}", ref, steps=1, strength=1.0)])
    walked = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    assert walked and lora_layers(unet) == walked  # the kept list followed the loads
    assert engine.loras.loads == 3  # x once (its second use found it loaded), y, z
    assert list(engine.loras.loaded) == ["x", "z"]  # y was least recently used
    assert engine.pipe.unet is unet  # the model was never reloaded


def test_one_lora_layer_adds_each_rows_deltas_as_peft_does(
    engine: Engine, lora_files: dict[str, str]
) -> None:
    """One attention projection under the per-row hook, against peft's own forward of a
    copy of it with the row's adapters active at their weights (row by row): a row with no
    LoRA, one LoRA, two at other weights, a padding row past the call's rows (never read,
    left as the base layer gave it); then a layer whose base runs in bfloat16 under float32
    LoRA weights, where peft's sum is widened and cast back."""
    import copy

    import torch

    from pipeline.lora_rows import row_loras
    from pipeline.loras import lora_layers

    a = LoraRef("kohya", lora_files["kohya"], 0.8)
    b = LoraRef("peft", lora_files["peft"], 1.0)
    assert engine.loras.ensure([a, b]) is None
    layer = next(m for m in lora_layers(engine.pipe.unet) if {"kohya", "peft"} <= set(m.lora_A))
    rows = [(), (a,), (LoraRef("kohya", a.source, 0.3), b)]

    def peft_row(module: Any, x: torch.Tensor, refs: tuple[LoraRef, ...]) -> torch.Tensor:
        ref = copy.deepcopy(module)
        ref.enable_adapters(bool(refs))
        if refs:
            ref.set_adapter([r.name for r in refs])
            for r in refs:
                ref.set_scale(r.name, r.weight)
        return ref(x)

    for dtype in (torch.float32, torch.bfloat16):
        module = copy.deepcopy(layer)
        module.base_layer.to(dtype)
        x = torch.randn(4, 16, module.in_features, generator=torch.Generator().manual_seed(3))
        x = x.to(dtype)
        with torch.no_grad(), row_loras(module, rows):  # 3 rows of the call, 1 padding
            out = module(x)
        with torch.no_grad():
            base = module.base_layer(x)
            for i, refs in enumerate(rows):
                assert torch.equal(out[i : i + 1], peft_row(module, x[i : i + 1], refs)), (dtype, i)
            assert torch.equal(out[3], base[3]) and out.dtype == dtype
            assert not torch.equal(out[1], base[1]) and not torch.equal(out[1], out[2])
