"""Shared fixtures. Nothing here reaches the network: the models are built locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion img2img pipeline saved in diffusers format.
    It ships no safety checker (like SDXL): pair it with `checker_dirs`."""
    from pipeline.tiny import make_tiny

    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny(path)
    return path


@pytest.fixture(scope="session")
def checker_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Standalone tiny safety checker folders, for SAFETY_CHECKER_ID / `safety_checker_id`:
    "all" flags every image, "none" flags none, "dark" flags dark images (plain dark
    pictures: the tiny model's outputs are mid-grey whatever the input, see
    `pipeline.tiny_checker`; use `save_tiny_checker(..., "like", ...)` to flag one job of
    a batch)."""
    from pipeline.tiny_checker import save_tiny_checker

    root = tmp_path_factory.mktemp("checkers")
    return {mode: save_tiny_checker(root / mode, mode) for mode in ("all", "none", "dark")}


@pytest.fixture(scope="session")
def tiny_clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight CLIPSeg (model + processor) for MASK_MODEL_ID, loaded through
    the real `from_pretrained` path; see `pipeline.tiny_clipseg` for what its masks are."""
    from pipeline.tiny_clipseg import save_tiny_clipseg

    return save_tiny_clipseg(tmp_path_factory.mktemp("tiny-clipseg"))


@pytest.fixture(scope="session")
def tiny_model_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny models of one shape with other weights (`make-tiny --seed 1` and `2`): a
    catalogue's two models, whose pictures for one request differ."""
    from pipeline.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny-pair")
    for seed in (1, 2):
        make_tiny(root / f"seed{seed}", seed=seed)
    return root / "seed1", root / "seed2"
