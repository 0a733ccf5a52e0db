"""Shared fixtures. Nothing here reaches the network: the model is built locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion img2img pipeline saved in diffusers format."""
    from pipeline.tiny import make_tiny

    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny(path)
    return path
