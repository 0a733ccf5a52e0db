"""Inpainting through the real Engine on the tiny model (256 px, 3 denoising steps).

The promises checked: pixels beyond the feather are the input's exact pixels, the masked
core changes, crop ("only masked") mode generates the box at the model's resolution and
pastes it back in place, region words give a deterministic mask, every bad mask fails its
job with its own message, and the worker carries the new settings.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.engine import Engine
from pipeline.inpaint import (
    MASK_MISSING,
    NO_MASK,
    NO_REGION_MODEL,
    RegionMasker,
)
from pipeline.mask import (
    MaskEmpty,
    MaskFull,
    RegionNotFound,
    check_coverage,
    mask_from_alpha,
)
from pipeline.prepare import load_input
from pipeline.request import GenerationRequest, InputError

RESOLUTION = 256
BLUR = 8


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tiny_clipseg_dir: Path, checker_dirs: dict[str, Path]) -> Engine:
    return Engine.load(
        str(tiny_model_dir),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker="on",
        safety_checker_id=str(checker_dirs["none"]),  # the real checker path, flags nothing
        mask_model_id=str(tiny_clipseg_dir),
    )


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def photo(size: tuple[int, int] = (RESOLUTION, RESOLUTION)) -> Image.Image:
    """Sky gradient, a sun, a field: what the tiny CLIPSeg finds a region in."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = np.stack([80 + 100 * y / h, 120 + 80 * y / h, 230 - 60 * y / h], axis=-1)
    sun = ((x - 0.7 * w) ** 2 + (y - 0.3 * h) ** 2 < (0.1 * w) ** 2)[..., None] * [120, 90, -60]
    ground = (y > 0.65 * h)[..., None] * np.array([-40, 10, -120])
    return Image.fromarray(np.clip(sky + sun + ground, 0, 255).astype(np.uint8))


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


def request(tmp: Path, image: Image.Image, job_id: str = "j", **kw: Any) -> GenerationRequest:
    image_path = tmp / f"{job_id}-in.png"
    image.save(image_path)
    mask = kw.pop("mask", None)
    if mask is not None:
        kw["mask_path"] = str(tmp / f"{job_id}-mask.png")
        mask.save(kw["mask_path"])
    fields: dict[str, Any] = dict(
        job_id=job_id,
        image_path=str(image_path),
        prompt="a red balloon",
        strength=0.75,
        seed=7,
        steps=4,
        guidance=7.5,
        output_path=str(tmp / f"{job_id}-out.png"),
        mode="inpaint",
        mask_blur=BLUR,
    )
    return GenerationRequest(**{**fields, **kw})


def run_one(engine: Engine, req: GenerationRequest) -> np.ndarray:
    (result,) = engine.generate([req])
    with Image.open(result.output_path) as out:
        return np.asarray(out.convert("RGB")).astype(int)


def beyond_feather(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels farther than BLUR from a rectangle mask (Chebyshev: the feather is square)."""
    keep = np.ones((size[1], size[0]), bool)
    keep[max(0, box[1] - BLUR) : box[3] + BLUR, max(0, box[0] - BLUR) : box[2] + BLUR] = False
    return keep


def core(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    inside = np.zeros((size[1], size[0]), bool)
    inside[box[1] + BLUR : box[3] - BLUR, box[0] + BLUR : box[2] - BLUR] = True
    return inside


def assert_inpainted(
    out: np.ndarray, original: Image.Image, box: tuple[int, int, int, int]
) -> None:
    src = np.asarray(original).astype(int)
    assert out.shape == src.shape
    keep = beyond_feather(original.size, box)
    assert (out[keep] == src[keep]).all(), "a pixel beyond the feather changed"
    diff = np.abs(out - src).sum(axis=-1)
    inner = core(original.size, box)
    assert (diff[inner] == 0).mean() < 0.01, "the masked core kept input pixels"
    assert diff[inner].mean() > 30


class Recorder:
    """Stands in for the inpainting pipeline and passes every call through, recording
    what the model was asked to generate."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


@pytest.fixture
def recorder(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder(engine.inpainting.pipe)
    monkeypatch.setattr(engine.inpainting, "pipe", rec)
    return rec


# -- the untouched rest ---------------------------------------------------------------------


def test_with_a_mask_only_the_masked_region_changes(
    engine: Engine, tmp_path: Path, recorder: Recorder
) -> None:
    image = noise((RESOLUTION, RESOLUTION))
    box = (64, 80, 192, 200)  # a quarter of the picture: no crop in auto mode
    out = run_one(engine, request(tmp_path, image, mask=rect_mask(image.size, box)))
    assert_inpainted(out, image, box)
    (call,) = recorder.calls
    assert call["image"].size == image.size and call["height"] == RESOLUTION


def test_transparent_pixels_are_the_mask(engine: Engine, tmp_path: Path) -> None:
    upload = noise((RESOLUTION, RESOLUTION), seed=1).convert("RGBA")
    box = (100, 20, 230, 140)
    ImageDraw.Draw(upload).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0,) * 4)
    data = io.BytesIO()
    upload.save(data, format="PNG")
    stored = load_input(data.getvalue(), max_bytes=10_000_000, min_side=64)  # as the bot does
    with Image.open(io.BytesIO(data.getvalue())) as opened:
        mask = mask_from_alpha(opened, size=stored.size)
    assert mask is not None
    out = run_one(engine, request(tmp_path, stored, mask=mask))
    assert_inpainted(out, stored, box)


# -- crop ("only masked") mode --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "box", "crop"),
    [
        ((256, 256), (0, 0, 40, 32), "on"),  # top-left corner
        ((256, 160), (216, 120, 256, 160), "auto"),  # landscape, bottom-right corner
        ((160, 256), (0, 100, 36, 150), "auto"),  # portrait, left edge
    ],
    ids=["corner", "landscape-edge", "portrait-edge"],
)
def test_crop_mode_generates_the_box_and_pastes_it_back_in_place(
    engine: Engine,
    tmp_path: Path,
    recorder: Recorder,
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    crop: str,
) -> None:
    image = noise(size, seed=2)
    mask = rect_mask(size, box)
    out = run_one(engine, request(tmp_path, image, mask=mask, crop=crop))
    assert out.shape[:2] == (size[1], size[0])
    assert_inpainted(out, image, box)
    (call,) = recorder.calls
    generated = call["image"].size
    assert max(generated) == RESOLUTION  # the box at the model's full resolution
    assert abs(generated[0] / generated[1] - size[0] / size[1]) < 0.05  # picture's shape
    zoom = np.count_nonzero(np.asarray(call["mask_image"])) / np.prod(generated)
    assert zoom > 2 * check_coverage(mask)  # the model saw the region close up


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((256, 256), (0, 0, 40, 32)),
        ((256, 160), (216, 120, 256, 160)),
        ((160, 256), (0, 100, 36, 150)),
        ((256, 160), (100, 60, 140, 90)),
    ],
    ids=["corner", "landscape-edge", "portrait-edge", "landscape-middle"],
)
def test_crop_is_pasted_back_exactly_where_it_was_cut(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: tuple[int, int],
    box: tuple[int, int, int, int],
) -> None:
    """With a model that gives back the picture it was handed, the crop round trip (cut,
    scale to the model's resolution, scale back, paste) must land on the input itself:
    a box off by a few pixels or scaled wrong shows as a large difference."""

    class Identity(Recorder):
        def __call__(self, **kwargs: Any) -> Any:
            self.calls.append(kwargs)
            return SimpleNamespace(images=[kwargs["image"]])

    fake = Identity(engine.inpainting.pipe)
    monkeypatch.setattr(engine.inpainting, "pipe", fake)
    image = noise(size, seed=4).filter(ImageFilter.GaussianBlur(2))  # texture, no aliasing
    out = run_one(engine, request(tmp_path, image, mask=rect_mask(size, box), crop="on"))
    (call,) = fake.calls
    assert max(call["image"].size) == RESOLUTION
    diff = np.abs(out - np.asarray(image).astype(int)).mean(axis=-1)
    inside = ~beyond_feather(size, box)
    assert diff[inside].mean() < 0.5  # resampling only; one pixel off gives about 1.4


def test_crop_off_generates_the_whole_picture(
    engine: Engine, tmp_path: Path, recorder: Recorder
) -> None:
    image = noise((256, 160), seed=3)
    box = (200, 10, 240, 50)
    out = run_one(engine, request(tmp_path, image, mask=rect_mask(image.size, box), crop="off"))
    assert_inpainted(out, image, box)
    assert recorder.calls[0]["image"].size == image.size


# -- region words ---------------------------------------------------------------------------


def test_region_words_give_a_deterministic_partial_mask(engine: Engine) -> None:
    masker = engine.inpainting.masker
    assert isinstance(masker, RegionMasker) and engine.info.region_masks
    picture = photo()
    first = masker.mask(picture, "the sky")
    again = masker.mask(picture, "the sky")
    assert first.size == picture.size
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert 0 < check_coverage(first) < 1  # neither empty nor full (it would raise)


def test_region_words_past_clipsegs_77_tokens_are_cut_not_an_error(engine: Engine) -> None:
    """CLIPSeg's text encoder has 77 positions: longer words are truncated to them (a tail
    past the cut changes nothing) instead of failing the job with the generic error."""
    masker = engine.inpainting.masker
    picture = photo()
    long_words = "the bright blue sky above " * 40  # ~200 tokens
    assert len(masker.processor.tokenizer(long_words)["input_ids"]) > 77
    first = masker.probabilities(picture, long_words)
    other_tail = masker.probabilities(picture, long_words + "and a red barn " * 20)
    assert np.array_equal(first, other_tail)
    assert masker.mask(picture, long_words).size == picture.size


def test_a_region_job_changes_only_its_region(engine: Engine, tmp_path: Path) -> None:
    picture = photo()
    region = np.asarray(engine.inpainting.masker.mask(picture, "the sky")) > 0
    out = run_one(engine, request(tmp_path, picture, region="the sky"))
    src = np.asarray(picture).astype(int)
    near = np.asarray(Image.fromarray(region).filter(ImageFilter.MaxFilter(2 * BLUR + 1))) > 0
    assert (out[~near] == src[~near]).all()
    assert np.abs(out - src).sum(axis=-1)[region].mean() > 10


# -- bad masks: each its own error ----------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "error", "words"),
    [
        ("black", MaskEmpty, "repaints nothing"),
        ("white", MaskFull, "/img2img"),
        ("missing", InputError, MASK_MISSING),
        ("none", InputError, NO_MASK),
        ("no-match", RegionNotFound, "Nothing in the picture matched"),
        ("no-model", InputError, NO_REGION_MODEL),
    ],
)
def test_bad_mask_fails_the_job_with_its_own_message(
    engine: Engine,
    tmp_path: Path,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    error: type[Exception],
    words: str,
) -> None:
    image = noise((RESOLUTION, RESOLUTION))
    kw: dict[str, Any] = {
        "black": {"mask": Image.new("L", image.size, 0)},
        "white": {"mask": Image.new("L", image.size, 255)},
        "missing": {"mask_path": str(tmp_path / "gone.png")},
        "none": {},
        "no-match": {"region": "the sky"},  # a flat grey picture: nothing to find
        "no-model": {"region": "the sky"},
    }[case]
    if case == "no-match":
        image = Image.new("RGB", image.size, (128, 128, 128))
    if case == "no-model":
        monkeypatch.setattr(engine.inpainting, "masker", None)
    bad = request(tmp_path, image, "bad", **kw)

    with pytest.raises(error) as raised:
        engine.generate([bad])
    assert words in str(raised.value)
    failed: list[tuple[str, str]] = []
    assert engine.generate([bad], on_failed=lambda j, m: failed.append((j, m))) == []
    assert failed == [("bad", str(raised.value))]
    assert recorder.calls == []  # refused before the model ran
    assert not Path(bad.output_path).exists()


def test_a_bad_mask_fails_only_its_job(engine: Engine, tmp_path: Path) -> None:
    image = noise((RESOLUTION, RESOLUTION))
    bad = request(tmp_path, image, "bad", mask=Image.new("L", image.size, 0))
    good = request(tmp_path, image, "good", mask=rect_mask(image.size, (0, 0, 99, 99)))
    failed: list[str] = []
    results = engine.generate([bad, good], on_failed=lambda j, m: failed.append(j))
    assert failed == ["bad"] and [r.job_id for r in results] == ["good"]


def test_inpaint_and_img2img_requests_do_not_share_a_call(engine: Engine, tmp_path: Path) -> None:
    inpaint = request(tmp_path, noise((64, 64)), "a", mask=rect_mask((64, 64), (0, 0, 8, 8)))
    plain = request(tmp_path, noise((64, 64)), "b", mode="img2img")
    with pytest.raises(ValueError, match="share"):
        engine.generate([inpaint, plain])


# -- the worker carries the settings --------------------------------------------------------


def test_worker_round_trip(tiny_model_dir: Path, tiny_clipseg_dir: Path, tmp_path: Path) -> None:
    from pipeline.worker import BatchDone, Finished, WorkerClient, WorkerConfig

    config = WorkerConfig(
        str(tiny_model_dir),
        device="cpu",
        resolution=128,
        safety_checker="off",
        mask_model_id=str(tiny_clipseg_dir),
    )
    image = noise((128, 96))
    req = request(tmp_path, image, "w", mask=rect_mask(image.size, (10, 10, 50, 40)))

    async def run() -> tuple[Any, list[Any]]:
        client = WorkerClient(config, start_timeout=120.0)
        await client.start()
        try:
            client.submit([req])
            events = []
            async with asyncio.timeout(60):
                while not isinstance(event := await client.next_event(), BatchDone):
                    events.append(event)
            return client.info, events
        finally:
            await client.stop()

    info, events = asyncio.run(run())
    assert info.region_masks
    (finished,) = [e for e in events if isinstance(e, Finished)]
    assert finished.result.job_id == "w" and (finished.result.width, finished.result.height) == (
        128,
        96,
    )
    with Image.open(req.output_path) as out:
        kept = beyond_feather(image.size, (10, 10, 50, 40))
        assert (np.asarray(out)[kept] == np.asarray(image)[kept]).all()


# -- a dedicated inpainting model (INPAINT_MODEL_ID) ----------------------------------------


@pytest.fixture(scope="module")
def tiny_inpaint_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's parts with a 9-channel UNet (latents + mask + masked image), saved as
    a diffusers inpainting pipeline, like stable-diffusion-inpainting."""
    import torch
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )

    base = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = tmp_path_factory.mktemp("tiny-inpaint")
    pipe.save_pretrained(path)
    return path


def test_inpaint_model_id_loads_a_dedicated_model(
    tiny_model_dir: Path, tiny_inpaint_dir: Path, tmp_path: Path
) -> None:
    engine = Engine.load(
        str(tiny_model_dir),
        device="cpu",
        resolution=RESOLUTION,
        safety_checker="off",
        inpaint_model_id=str(tiny_inpaint_dir),
    )
    assert engine.inpainting.pipe.unet.config.in_channels == 9
    assert engine.inpainting.pipe.unet is not engine.pipe.unet
    assert not engine.info.region_masks  # no MASK_MODEL_ID given
    image = noise((RESOLUTION, 192), seed=6)
    box = (90, 40, 200, 150)
    out = run_one(engine, request(tmp_path, image, mask=rect_mask(image.size, box), crop="off"))
    assert_inpainted(out, image, box)


def test_a_broken_inpaint_model_id_stops_the_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pipeline.engine import ModelLoadError

    with pytest.raises(ModelLoadError, match="INPAINT_MODEL_ID"):
        Engine.load(str(tiny_model_dir), device="cpu", inpaint_model_id=str(tmp_path / "none"))


def test_a_broken_mask_model_only_disables_region_masks(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Engine.load(
        str(tiny_model_dir), device="cpu", safety_checker="off", mask_model_id=str(tmp_path)
    )
    assert not engine.info.region_masks and engine.inpainting.masker is None
    assert engine.inpainting.pipe is not None  # inpainting with a mask still works
    assert "region masks are off" in caplog.text
