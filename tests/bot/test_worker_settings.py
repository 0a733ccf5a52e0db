"""The local worker is configured from the same settings as a remote one."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bot.app import ImgBot
from config import Settings
from pipeline.remote_worker import config_from_settings


def test_the_local_worker_gets_every_setting_a_remote_worker_reads(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.mine]\nsource = "/ckpt/mine.safetensors"\nconfig = "/cfg/sd15"\n')
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, max_loras_loaded=3, max_batch=2, resolution=256,
        mask_model_id="", batching="call", models_file=models,
    )  # fmt: skip
    local = asdict(ImgBot(settings).worker_config())
    remote = {k: v if v != "" else None for k, v in asdict(config_from_settings(settings)).items()}
    assert local == remote
    assert local["max_loras_loaded"] == 3
    assert (local["model_id"], local["single_file_config"]) == (
        "/ckpt/mine.safetensors",
        "/cfg/sd15",
    )
