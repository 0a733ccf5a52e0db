"""Render: member text shown as typed (markdown escaped), no server path in a footer."""

from __future__ import annotations

import pytest

from bot.ui.render import model_label, user_text


@pytest.mark.parametrize(
    ("model", "label"),
    [
        ("/srv/models/sd15", "sd15"),
        ("/srv/models/sd15/", "sd15"),
        ("./models/turbo", "turbo"),
        ("~/models/sdxl", "sdxl"),
        ("C:\\models\\sd15", "sd15"),
        ("a/b/c", "c"),
        ("stabilityai/sd-turbo", "stabilityai/sd-turbo"),
        ("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
        ("sd15", "sd15"),
        (None, "model"),
        ("", "model"),
    ],
)
def test_model_label_never_shows_a_path(model: str | None, label: str) -> None:
    assert model_label(model) == label


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a *bold* fox", "a \\*bold\\* fox"),
        ("__under__ and ~~strike~~", "\\_\\_under\\_\\_ and \\~\\~strike\\~\\~"),
        ("`code` || spoiler ||", "\\`code\\` \\|\\| spoiler \\|\\|"),
        ("plain words", "plain words"),
    ],
)
def test_user_text_escapes_markdown(text: str, shown: str) -> None:
    assert user_text(text, 100) == shown


def test_user_text_shortens_before_escaping() -> None:
    assert user_text("*" * 10, 4) == "\\*\\*\\*…"
