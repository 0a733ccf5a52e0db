"""/series text and refusals as values: positions named, quota for the whole series, album."""

from __future__ import annotations

import pytest

from bot.series import Item, album_text, attachment_name, bad_images_text, quota_refusal


def test_bad_images_are_named_by_position() -> None:
    text = bad_images_text([(2, "too small"), (7, "a GIF")])
    assert "nothing was counted" in text
    assert "• image2: too small" in text and "• image7: a GIF" in text


@pytest.mark.parametrize(
    ("size", "user_left", "guild_left", "expected"),
    [
        (10, 10, 10, None),
        (10, None, None, None),
        (10, 4, 50, "A series of 10 needs 10 images; you have 4 left today."),
        (3, 9, 2, "A series of 3 needs 3 images; this server has 2 left today."),
        (3, 0, 0, "you have 0 left today"),
    ],
)
def test_quota_refuses_the_whole_series(
    size: int, user_left: int | None, guild_left: int | None, expected: str | None
) -> None:
    got = quota_refusal(size, user_left, guild_left)
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got


def test_album_lists_images_in_input_order_with_progress() -> None:
    items = [
        Item(2, "b.png", 12, "running"),
        Item(1, "a.png", 11, "done", has_image=True),
        Item(3, "c.png", 13, "queued"),
    ]
    text = album_text(5, "a red fox", 0.5, 42, "oil-painting", items)
    lines = text.splitlines()
    assert lines[0] == "🖼️ Series for <@5> · strength 0.50 · seed 42 · style `oil-painting`"
    assert lines[2:5] == ["1. a.png: ✅ done", "2. b.png: 🎨 making", "3. c.png: ⏳ waiting"]
    assert lines[-1] == "1 of 3 done, 2 to go."
    ended = [Item(1, "a", 1, "done", True), Item(2, "b", 2, "failed"), Item(3, "c", 3, "withheld")]
    assert album_text(5, "p", 0.5, 1, None, ended).endswith("Finished: 1 of 3 images made.")
    assert attachment_name(items[1]) == "series-01-job11.png"


def test_member_text_in_the_album_is_escaped() -> None:
    text = album_text(5, "*bold* fox", 0.5, 1, None, [Item(1, "my_photo.png", 1, "queued")])
    assert "“\\*bold\\* fox”" in text and "1. my\\_photo.png: ⏳ waiting" in text
