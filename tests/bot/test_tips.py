"""Tips on results, the lineage line, and where they show in the result embed."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from bot.store.db import Job
from bot.ui.render import result_embed
from bot.ui.tips import lineage, tip_for


def job(**values: Any) -> Job:
    base: dict[str, Any] = {f.name: None for f in fields(Job)}
    base.update(
        id=7, guild_id=1, channel_id=2, user_id=3, kind="new", prompt="a fox", strength=0.5,
        seed=1, steps=4, guidance=7.5, input_path="inputs/a.png", input_width=768,
        input_height=640, state="done", counted=1, created_at=0.0, steps_run=2, steps_total=4,
    )  # fmt: skip
    base.update(values)
    return Job(**base)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({}, None),
        ({"input_width": 320, "input_height": 256}, "320×256"),
        ({"input_width": 320, "input_height": 256, "strength": 0.8}, "320×256"),
        ({"strength": 0.7}, "faces may distort"),
        ({"strength": 0.69}, None),
        ({"kind": "refine", "input_width": 128, "input_height": 104}, None),
        ({"kind": "refine", "strength": 0.9}, "faces may distort"),
        ({"kind": "edit", "strength": 0.75}, "Compare"),
        ({"kind": "variant", "strength": 0.85}, None),
        ({"kind": "reroll", "input_width": 300}, None),
        ({"kind": "compare", "strength": 0.95}, None),
    ],
)
def test_at_most_one_tip_and_never_on_variants(values: dict[str, Any], needle: str | None) -> None:
    tip = tip_for(job(**values))
    if needle is None:
        assert tip is None
    else:
        assert tip is not None and needle in tip


def test_lineage_names_and_links_the_parent() -> None:
    assert lineage(job()) is None
    assert lineage(job(kind="refine", parent_id=5)) == "from #5"
    linked = lineage(job(kind="variant", parent_id=5, reply_to_message_id=99))
    assert linked == "from [#5](https://discord.com/channels/1/2/99)"


def test_result_embed_shows_lineage_and_the_tip() -> None:
    embed = result_embed(job(kind="edit", parent_id=5, reply_to_message_id=99, strength=0.8))
    assert embed.description is not None and embed.description.startswith("from [#5]")
    tips = [f.value for f in embed.fields if f.name == "Tip"]
    assert len(tips) == 1 and "0.80" in str(tips[0])
    plain = result_embed(job())
    assert plain.description is None and all(f.name != "Tip" for f in plain.fields)
