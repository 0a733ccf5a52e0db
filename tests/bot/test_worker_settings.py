"""The local worker is configured from the same settings as a remote one."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from bot.app import ImgBot
from config import Settings
from config.settings import SettingsError, load_settings
from pipeline.remote_worker import config_from_settings


def test_the_local_worker_gets_every_setting_a_remote_worker_reads(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.mine]\nsource = "/ckpt/mine.safetensors"\nconfig = "/cfg/sd15"\n'
        'controlnet_lines = "/cn/lines"\n'
    )
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, max_loras_loaded=3, max_batch=2, resolution=256,
        mask_model_id="", batching="call", models_file=models, structure_lines_contrast=30,
        controlnet_edges_id="/cn/for-model-id-only",
    )  # fmt: skip
    def unset_as_none(config: object) -> dict[str, object]:
        """'' and None both mean "not set" to the worker (MASK_MODEL_ID, PREVIEW_MODEL_ID)."""
        return {k: v if v != "" else None for k, v in asdict(config).items()}  # type: ignore[call-overload]

    local = unset_as_none(ImgBot(settings).worker_config())
    remote = unset_as_none(config_from_settings(settings))
    assert local == remote
    assert local["max_loras_loaded"] == 3
    assert (local["model_id"], local["single_file_config"]) == (
        "/ckpt/mine.safetensors",
        "/cfg/sd15",
    )
    # the default model's ControlNets reach the workers (CONTROLNET_*_ID is for MODEL_ID alone)
    assert (local["controlnet_edges"], local["controlnet_lines"]) == (None, "/cn/lines")
    (spec,) = config_from_settings(settings).models  # each served model carries its own
    assert (spec.controlnet_edges, spec.controlnet_lines) == (None, "/cn/lines")
    assert local["structure_lines_contrast"] == 30


def test_without_a_models_file_the_controlnet_settings_reach_the_workers(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, model_id="/m", controlnet_edges_id="/cn/edges",
    )  # fmt: skip
    config = config_from_settings(settings)
    assert (config.controlnet_edges, config.controlnet_lines) == ("/cn/edges", None)
    assert (config.models[0].controlnet_edges, config.models[0].controlnet_lines) == (
        "/cn/edges",
        None,
    )
    assert ImgBot(settings).worker_config() == config


def test_worker_models_become_specs_with_their_own_resolution(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        'default = "b"\n[models.a]\nsource = "/m/a"\nresolution = 320\n'
        '[models.b]\nsource = "/m/b.safetensors"\nconfig = "/cfg"\n[models.c]\nsource = "/m/c"\n'
    )
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, resolution=256, models_file=models, resident_models=2
    )
    local, remote = ImgBot(settings).worker_config(), config_from_settings(settings)
    assert local.models == remote.models and local.resident_models == remote.resident_models == 2
    assert [(m.name, m.source, m.config, m.resolution) for m in local.models] == [
        ("b", "/m/b.safetensors", "/cfg", 256),  # the default first
        ("a", "/m/a", None, 320),
        ("c", "/m/c", None, 256),
    ]
    settings.worker_models = "C, a"
    assert [m.name for m in config_from_settings(settings).models] == ["c", "a"]


def test_without_a_catalogue_the_worker_serves_model_id_alone(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, model_id="/m/x")  # type: ignore[call-arg]
    assert [(m.name, m.source, m.resolution) for m in config_from_settings(settings).models] == [
        ("default", "/m/x", None)
    ]


def test_an_unknown_worker_model_stops_the_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKER_MODELS", "default, anime")
    with pytest.raises(SettingsError, match="WORKER_MODELS: 'anime' is not in the catalogue"):
        load_settings()
