"""`<lora:NAME>` and `<lora:NAME:WEIGHT>` in prompts: tags, weights, triggers, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.catalogue import parse_catalogue
from config.lora_tags import LoraTagError, LoraUse, describe, split_loras, with_triggers

CAT = parse_catalogue(
    """
[models.base]
source = "a/base"
label = "SD 1.5"
[models.turbo]
source = "a/turbo"
[loras.pixel]
source = "p.safetensors"
models = ["base"]
weight = 0.8
trigger = "pixel art"
[loras.ink]
source = "i.safetensors"
[loras.glow]
source = "g.safetensors"
trigger = "glowing"
[loras.x1]
source = "x1"
[loras.x2]
source = "x2"
""",
    Path("models.toml"),
)


@pytest.mark.parametrize(
    ("prompt", "text", "uses"),
    [
        ("a fox <lora:pixel>", "a fox", (LoraUse("pixel", 0.8),)),
        (
            "<lora:ink:1.5>  a   fox\n in snow <LoRA:Pixel:0>",
            "a fox in snow",
            (LoraUse("ink", 1.5), LoraUse("pixel", 0.0)),
        ),
        ("a fox", "a fox", ()),
        (
            "un renard <lora:ink:.5> sous la neige ❄️",
            "un renard sous la neige ❄️",
            (LoraUse("ink", 0.5),),
        ),
        ("<lora: glow : 2 >", "", (LoraUse("glow", 2.0),)),
    ],
)
def test_tags_come_out_and_whitespace_collapses(prompt: str, text: str, uses: tuple) -> None:
    assert split_loras(prompt, CAT, "base") == (text, uses)


@pytest.mark.parametrize(
    ("prompt", "model", "says"),
    [
        ("a fox <lora:nope>", "base", ["no LoRA called `nope`", "`pixel`", "`ink`"]),
        ("a fox <lora:pixel>", "turbo", ["does not fit the model turbo", "`ink`"]),
        ("a fox <lora:ink:2.5>", "base", ["from 0 to 2", "<lora:ink:0.8>"]),
        ("a fox <lora:ink:-1>", "base", ["from 0 to 2"]),
        ("a fox <lora:ink:lots>", "base", ["from 0 to 2"]),
        ("a fox <lora:ink:nan>", "base", ["from 0 to 2"]),
        ("a fox <lora:>", "base", ["names no LoRA"]),
        ("<lora:ink> <lora:INK:0.5>", "base", ["appears twice"]),
        ("<lora:ink><lora:glow><lora:pixel><lora:x1><lora:x2>", "base", ["5 LoRAs", "at most 4"]),
        ("<lora:renard🦊>", "base", ["no LoRA called `renard🦊`"]),
    ],
)
def test_bad_tags_are_refused_naming_what_fits(prompt: str, model: str, says: list[str]) -> None:
    with pytest.raises(LoraTagError) as caught:
        split_loras(prompt, CAT, model)
    for words in says:
        assert words in str(caught.value), str(caught.value)


def test_the_limit_is_a_setting() -> None:
    with pytest.raises(LoraTagError, match="at most 1"):
        split_loras("<lora:ink><lora:glow>", CAT, "base", max_loras=1)


def test_trigger_words_go_first_once_so_the_token_limit_never_cuts_them() -> None:
    text, uses = split_loras("a fox <lora:pixel> <lora:ink> <lora:glow>", CAT, "base")
    assert with_triggers(text, uses, CAT) == "pixel art, glowing, a fox"
    assert with_triggers("", (LoraUse("pixel", 1.0),), CAT) == "pixel art"
    assert with_triggers("a fox", (), CAT) == "a fox"
    assert describe(uses) == "pixel ×0.8, ink ×1.0, glow ×1.0"
