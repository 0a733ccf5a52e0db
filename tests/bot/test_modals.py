"""The Refine/Edit/Img2img this modal: its payload, its routing id and reading it back."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bot.ui import modals
from pipeline.request import InputError


def test_build_prefills_labelled_inputs_and_routes_by_custom_id() -> None:
    modal = modals.build(
        "refine", 42, prompt="a fox", negative_prompt="blurry", strength=0.3, seed=7
    )
    payload = modal.to_dict()
    assert payload["custom_id"] == "i2i:modal:refine:42" and payload["title"] == "Refine #42"
    inputs = {c["label"]: c["component"] for c in payload["components"]}
    assert list(inputs) == ["Prompt", "Negative prompt", "Strength", "Seed"]
    assert [inputs[k].get("value") for k in inputs] == ["a fox", "blurry", "0.30", "7"]
    assert inputs["Prompt"]["required"] and not inputs["Seed"]["required"]
    assert modals.parse_custom_id(payload["custom_id"]) == ("refine", 42)


def test_an_empty_modal_leaves_optional_inputs_empty() -> None:
    payload = modals.build("this", 9, strength=0.5).to_dict()
    inputs = {c["label"]: c["component"] for c in payload["components"]}
    assert "value" not in inputs["Prompt"] and "value" not in inputs["Seed"]
    assert inputs["Strength"]["value"] == "0.50"


@pytest.mark.parametrize(
    "value",
    ["i2i:modal:refine:x", "i2i:modal:other:1", "i2i:v:p:1", "", "i2i:modal:edit:1:2"],
)
def test_other_custom_ids_are_not_ours(value: str) -> None:
    assert modals.parse_custom_id(value) is None


def _rows(**values: str) -> dict[str, Any]:
    return {
        "components": [
            {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
            for k, v in values.items()
        ]
    }


def _labels(**values: str) -> dict[str, Any]:
    return {
        "components": [
            {"type": 18, "id": i, "component": {"type": 4, "custom_id": k, "value": v}}
            for i, (k, v) in enumerate(values.items())
        ]
    }


@pytest.mark.parametrize("layout", [_rows, _labels], ids=["action-rows", "labels"])
def test_submitted_values_read_rows_and_labels(layout: Any) -> None:
    data = layout(prompt="a fox", negative="", strength="0,3", seed="")
    values = modals.submitted_values(data)
    assert values == {"prompt": "a fox", "negative": "", "strength": "0,3", "seed": ""}
    form = modals.read_form(values)
    assert form == modals.Form("a fox", None, 0.3, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.3", 0.3), ("0,3", 0.3), (" .35 ", 0.35), ("1", 1.0), ("0.05", 0.05)],
)
def test_read_strength_accepts_what_people_type(text: str, expected: float) -> None:
    assert modals.read_strength(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1.5", "Strength 1.5 is out of range"),
        ("0.01", "Strength 0.01 is out of range"),
        ("strong", "Strength must be a number"),
        ("", "Strength must be a number"),
        ("nan", "out of range"),
    ],
)
def test_read_strength_refuses_saying_what_is_allowed(text: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle) as info:
        modals.read_strength(text)
    assert "0.05" in str(info.value)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"prompt": "   ", "strength": "0.5"}, "prompt is empty"),
        ({"prompt": "x" * 1001, "strength": "0.5"}, "limit is 1000"),
        ({"prompt": "a", "strength": "0.5", "seed": "-1"}, "Seed must be a whole number"),
        ({"prompt": "a", "strength": "0.5", "seed": "4294967296"}, "Seed 4294967296 is out"),
    ],
)
def test_read_form_checks_like_the_slash_command(values: dict[str, str], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        modals.read_form(values)


def test_read_form_keeps_a_given_seed_and_negative_prompt() -> None:
    form = modals.read_form(
        {"prompt": " a fox ", "negative": " blurry ", "strength": "0.6", "seed": " 12 "}
    )
    assert form == modals.Form("a fox", "blurry", 0.6, 12)


def test_several_pictures_add_a_choice_read_back_as_an_index() -> None:
    payload = modals.build("this", 3, strength=0.5, pictures=["a.png", "b.png"]).to_dict()
    first = payload["components"][0]
    assert first["label"] == "Picture" and first["component"]["type"] == 3
    assert [o["value"] for o in first["component"]["options"]] == ["0", "1"]
    assert (
        modals.build("this", 3, strength=0.5, pictures=["a.png"]).to_dict()["components"][0][
            "label"
        ]
        == "Prompt"
    )
    data = {"components": [{"type": 18, "component": {"type": 3, "custom_id": "picture",
                                                       "values": ["1"]}}]}  # fmt: skip
    assert modals.submitted_values(data) == {"picture": "1"}


@pytest.mark.parametrize(
    ("kind", "pictures", "labels"),
    [
        ("refine", None, ["Prompt", "Negative prompt", "Strength", "Seed"]),
        ("edit", None, ["Prompt", "Negative prompt", "Strength", "Seed", "Style"]),
        ("this", ["a.png"], ["Prompt", "Negative prompt", "Strength", "Seed", "Style"]),
        ("this", ["a.png", "b.png"], ["Picture", "Prompt", "Negative prompt", "Strength", "Style"]),
    ],
)
def test_edit_and_this_have_a_style_field_within_five_components(
    kind: str, pictures: list[str] | None, labels: list[str]
) -> None:
    payload = modals.build(kind, 1, prompt="a fox", strength=0.5, pictures=pictures).to_dict()
    assert [c["label"] for c in payload["components"]] == labels
    assert len(labels) <= modals.MAX_COMPONENTS
    form = modals.read_form({"prompt": "a fox", "strength": "0.5", "style": " oil-painting "})
    assert form.style == "oil-painting"
    assert modals.read_form({"prompt": "a fox", "strength": "0.5", "style": " "}).style is None


def test_a_jobs_structure_is_shown_as_a_tag_after_its_prompt_and_read_back() -> None:
    payload = modals.build(
        "edit", 5, prompt="a house", strength=0.75, structure="lines", structure_weight=1.5,
        takes_structure=True,
    ).to_dict()  # fmt: skip
    prompt = next(c for c in payload["components"] if c["label"] == "Prompt")
    assert prompt["component"]["value"] == "a house <structure:lines:1.5>"
    assert "<structure:lines:1>" in prompt["description"]
    form = modals.read_form({"prompt": prompt["component"]["value"], "strength": "0.75"})
    assert (form.prompt, form.structure, form.structure_weight) == ("a house", "lines", 1.5)
    # a prompt at its limit still shows its tag whole
    full = modals.build("edit", 5, prompt="x" * 1000, strength=0.5, structure="edges")
    value = full.to_dict()["components"][0]["component"]
    assert value["value"].endswith(" <structure:edges:1>")
    assert len(value["value"]) <= value["max_length"]
    # no structure, no hint: nothing added
    plain = modals.build("edit", 5, prompt="a house", strength=0.5).to_dict()["components"][0]
    assert plain["component"]["value"] == "a house" and "description" not in plain


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a house", ("a house", None, 1.0)),
        ("a house <structure:edges>", ("a house", "edges", 1.0)),
        ("<Structure:LINES:0,5> a house", ("a house", "lines", 0.5)),
        ("a <structure:off:1> house", ("a house", "off", 1.0)),
    ],
)
def test_split_structure_reads_the_tag(prompt: str, expected: tuple[Any, ...]) -> None:
    assert modals.split_structure(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a <structure:lines> b <structure:edges>", "Use one `<structure:…>` tag"),
        ("a <structure:depth>", "Structure 'depth' is not offered. Use off, edges or lines"),
        ("a <structure:lines:strong>", "must be a number from 0.1 to 2"),
        ("a <structure:lines:3>", "Structure weight 3 is out of range"),
        ("<structure:lines>", "prompt is empty"),
    ],
)
def test_a_bad_structure_tag_is_refused_saying_how_to_fix_it(prompt: str, needle: str) -> None:
    with pytest.raises(InputError, match=re.escape(needle)):
        modals.read_form({"prompt": prompt, "strength": "0.5"})
