"""The last job of an upscale: the real (tiny) safety checker sees the whole blended picture
at full size, and the picture is stored unchanged or withheld like any job's result."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from pipeline.check_only import check_pictures
from pipeline.request import INPUT_MISSING, UPSCALE, GenerationRequest
from pipeline.safety import load_standalone_checker


def _request(tmp_path: Path, name: str, image_path: Path) -> GenerationRequest:
    return GenerationRequest(
        job_id=name, image_path=str(image_path), prompt="a fox", strength=0.2, seed=1,
        steps=4, guidance=7.5, output_path=str(tmp_path / f"{name}-out.png"), mode=UPSCALE,
    )  # fmt: skip


def test_the_checker_sees_the_whole_picture_and_it_is_stored_unchanged(
    checker_dirs: dict[str, Path], tmp_path: Path
) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    source = tmp_path / "blended.png"
    Image.fromarray(pixels).save(source)
    for mode, withheld in (("none", False), ("all", True)):
        checker = load_standalone_checker(
            str(checker_dirs[mode]), device="cpu", dtype=torch.float32
        )
        [result] = check_pictures(
            SimpleNamespace(checker=checker), [_request(tmp_path, mode, source)]
        )
        assert (result.withheld, result.nsfw, result.filtered) == (withheld, withheld, True)
        assert (result.width, result.height) == (300, 200)  # full size, not the model's
        out = tmp_path / f"{mode}-out.png"
        if withheld:
            assert not out.exists() and result.output_path == ""
        else:
            assert np.array_equal(np.asarray(Image.open(out)), pixels)


def test_without_a_checker_it_is_stored_unfiltered_and_a_missing_picture_fails_alone(
    tmp_path: Path,
) -> None:
    source = tmp_path / "b.png"
    Image.new("RGB", (64, 48), "white").save(source)
    failed: list[tuple[str, str]] = []
    results = check_pictures(
        SimpleNamespace(checker=None),
        [_request(tmp_path, "gone", tmp_path / "nothing.png"), _request(tmp_path, "ok", source)],
        on_failed=lambda job_id, message: failed.append((job_id, message)),
    )
    assert failed == [("gone", INPUT_MISSING)]
    assert [(r.job_id, r.filtered, r.withheld) for r in results] == [("ok", False, False)]
