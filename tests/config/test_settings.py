"""The settings class: defaults, environment, and errors that name the field."""

from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError, load_settings


def test_defaults_match_the_readme(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    s = Settings()
    assert s.model_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert s.device == "auto"
    assert str(s.data_dir) == "data"
    assert (s.max_input_bytes, s.min_input_side) == (10_000_000, 256)
    assert (s.max_jobs_per_user, s.max_queue_per_guild, s.max_queue_total) == (3, 25, 200)
    assert (s.quota_user_daily, s.quota_guild_daily) == (20, 200)
    assert s.resolution is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ID", "/models/sd-turbo")
    monkeypatch.setenv("RESOLUTION", "768")
    monkeypatch.setenv("DISCORD_API_BASE", "http://127.0.0.1:8080/api/v10/")
    s = load_settings()
    assert (s.model_id, s.resolution) == ("/models/sd-turbo", 768)
    assert s.discord_api_base == "http://127.0.0.1:8080/api/v10"


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("DEVICE", "tpu", "DEVICE"),
        ("DEFAULT_STEPS", "0", "DEFAULT_STEPS"),
        ("MAX_INPUT_BYTES", "lots", "MAX_INPUT_BYTES"),
        ("DISCORD_GATEWAY_URL", "gateway.example", "DISCORD_GATEWAY_URL"),
    ],
)
def test_bad_value_names_the_field(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_token_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "very-secret")
    s = load_settings()
    assert "very-secret" not in repr(s) and "very-secret" not in str(s.model_dump())
    assert s.discord_token.get_secret_value() == "very-secret"


def test_every_setting_is_documented_in_the_operators_guide() -> None:
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "operators.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in guide]
    assert missing == []


@pytest.mark.parametrize(
    ("env", "low", "high"),
    [
        (
            {"QUOTA_USER_DAILY": "50", "QUOTA_USER_CEILING": "10"},
            "QUOTA_USER_DAILY",
            "QUOTA_USER_CEILING",
        ),
        (
            {"QUOTA_GUILD_DAILY": "50", "QUOTA_GUILD_CEILING": "10"},
            "QUOTA_GUILD_DAILY",
            "QUOTA_GUILD_CEILING",
        ),
        ({"MAX_QUEUE_PER_GUILD": "300"}, "MAX_QUEUE_PER_GUILD", "MAX_QUEUE_TOTAL"),
        ({"MAX_JOBS_PER_USER": "30"}, "MAX_JOBS_PER_USER", "MAX_QUEUE_PER_GUILD"),
    ],
)
def test_contradicting_settings_name_both_fields(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], low: str, high: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert low in str(info.value) and high in str(info.value)


def test_settings_error_never_prints_the_token(tmp_path) -> None:
    """`python -m bot` with a bad setting prints the rule, not the input (token included)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "MAX_"))}
    env.update(DISCORD_TOKEN="tok-abc-secret-123", MAX_JOBS_PER_USER="30")
    proc = subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env={**env, "PYTHONPATH": root},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "MAX_JOBS_PER_USER" in proc.stderr
    assert "tok-abc-secret-123" not in proc.stdout + proc.stderr
