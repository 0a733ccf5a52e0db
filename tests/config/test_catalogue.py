"""The model catalogue: the format the docs pin, and one clear line for every mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.catalogue import CatalogueError, load_catalogue, one_model, parse_catalogue
from config.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]

PINNED = """
default = "base"                 # optional; else the first model

[models.base]
source = "stable-diffusion-v1-5/stable-diffusion-v1-5"
label = "SD 1.5"
steps = 30
guidance = 7.5

[models.turbo]
source = "stabilityai/sd-turbo"
steps = 2
guidance = 0.0

[loras.pixel]
source = "/loras/pixel-art.safetensors"
models = ["base"]
weight = 0.8
trigger = "pixel art"
"""


def test_the_documented_format_reads_into_plain_values() -> None:
    cat = parse_catalogue(PINNED, Path("models.toml"))
    assert list(cat.models) == ["base", "turbo"] and cat.default == "base"
    base, turbo = cat.models["base"], cat.models["turbo"]
    assert (base.title, base.steps, base.guidance, base.resolution) == ("SD 1.5", 30, 7.5, None)
    assert (turbo.title, turbo.steps, turbo.guidance) == ("turbo", 2, 0.0)
    pixel = cat.loras["pixel"]
    assert (pixel.models, pixel.weight, pixel.trigger) == (("base",), 0.8, "pixel art")
    assert [lo.name for lo in cat.loras_for("base")] == ["pixel"] and cat.loras_for("turbo") == []
    assert cat.model(None) is base and cat.model("TURBO") is turbo


def test_without_a_file_model_id_alone_is_the_catalogue(tmp_path: Path) -> None:
    cat = load_catalogue(None, "some/model")
    assert cat == one_model("some/model")
    assert [(m.name, m.source) for m in cat.models.values()] == [("default", "some/model")]
    assert cat.loras == {} and cat.path is None


def test_the_first_model_is_the_default_and_single_files_are_recognised(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.mine]\nsource = "/ckpt/mine.safetensors"\nconfig = "/configs/sd15"\n'
        '[models.other]\nsource = "a/b"\n[loras.ink]\nsource = "ink.safetensors"\n'
    )
    cat = load_catalogue(path, "ignored/when/a/file/is/given")
    assert cat.default == "mine" and cat.models["mine"].single_file
    assert cat.models["mine"].config == "/configs/sd15" and not cat.models["other"].single_file
    assert cat.loras["ink"].models is None and cat.fits(cat.loras["ink"], "other")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[models.a]\nsource = "x"\nsteps = 20\ncolour = "red"\n', ["[models.a]", "'colour'"]),
        ('speed = 2\n[models.a]\nsource = "x"\n', ["speed", "unknown key"]),
        ('[models.a]\nlabel = "no source"\n', ["[models.a]", "missing source"]),
        ('[models.a]\nsource = " "\n', ["[models.a]", "missing source"]),
        (
            '[models.a]\nsource = "x"\n[loras.p]\nsource = "p"\nmodels = ["b"]\n',
            ["[loras.p]", "unknown model 'b'"],
        ),
        (
            '[models.a]\nsource = "x"\n[models.A]\nsource = "y"\n',
            ["[models.a] (line 3)", "two entries with one name", "line 1"],
        ),
        ('[loras.p]\nsource = "p"\n', ["[models]", "names no model"]),
        ('default = "zz"\n[models.a]\nsource = "x"\n', ["default", "names no model"]),
        (
            '[models.a]\nsource = "x"\nsteps = 0\n',
            ["[models.a]", "steps must be a whole number from 1 to 150"],
        ),
        ('[models.a]\nsource = "x"\nresolution = 500\n', ["not a multiple of 8"]),
        (
            '[models.a]\nsource = "x"\n[loras.p]\nsource = "p"\nweight = 3\n',
            ["[loras.p]", "weight"],
        ),
        ('[models."a b"]\nsource = "x"\n', ["[models.a b]", "a name is"]),
        ('[models.a]\nsource = "x"\nsteps = true\n', ["steps must be"]),
        ('[models.a\nsource = "x"\n', ["not valid TOML"]),
    ],
)
def test_every_mistake_is_one_line_naming_file_entry_and_rule(text: str, names: list[str]) -> None:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(text, Path("/etc/bot/models.toml"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("/etc/bot/models.toml: ")
    for name in names:
        assert name in message, message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match=r"nowhere\.toml: cannot be read"):
        load_catalogue(tmp_path / "nowhere.toml", "x")


def test_a_catalogue_mistake_stops_the_bot_and_the_worker_at_start_with_one_line(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text('[models.base]\nsource = "a/b"\n[loras.ink]\nsource = "i"\nmodels = ["anime"]\n')
    env = {**os.environ, "MODELS_FILE": str(bad), "DISCORD_TOKEN": "x", "HF_HUB_OFFLINE": "1"}
    expected = f"error: MODELS_FILE: {bad}: [loras.ink]: names an unknown model 'anime'"
    for command in (["-m", "bot"], ["-m", "pipeline", "worker", "--redis", "redis://127.0.0.1:1"]):
        run = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(expected), run.stderr


def test_settings_read_the_catalogue_once(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.base]\nsource = "a/b"\nlabel = "Base"\n')
    settings = load_settings(models_file=path, _env_file=None)
    path.write_text("not toml at all [")
    assert settings.catalogue.default_model.title == "Base"
    plain = load_settings(_env_file=None)
    assert plain.catalogue.default_model.source == plain.model_id  # MODEL_ID alone


def test_the_default_model_is_what_workers_load_with_its_own_defaults(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        'default = "turbo"\n[models.base]\nsource = "a/base"\n'
        '[models.turbo]\nsource = "/models/turbo"\nsteps = 2\nguidance = 0.0\n'
    )
    settings = load_settings(
        models_file=path, model_id="ignored/with/a/file", default_steps=30, resolution=640,
        _env_file=None,
    )  # fmt: skip
    assert (settings.model_id, settings.default_steps, settings.default_guidance) == (
        "/models/turbo", 2, 0.0,
    )  # fmt: skip
    assert settings.resolution == 640  # the entry leaves it unset: RESOLUTION stays
