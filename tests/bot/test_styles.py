"""Style rules as tables of values: composition, negatives, strength, names, limits, lookup."""

from __future__ import annotations

import pytest

from bot.errors import UserError
from bot.styles import (
    BUILTINS,
    MAX_PER_MEMBER,
    MAX_PER_SERVER,
    Style,
    apply_style,
    check_name,
    check_room,
    check_template,
    compose_prompt,
    join_negative,
    pick_strength,
    resolve,
    structure_for,
    style_choices,
)
from pipeline.request import MAX_PROMPT_CHARS


@pytest.mark.parametrize(
    ("template", "prompt", "expected"),
    [
        ("{prompt}, oil painting, impressionist", "a cat", "a cat, oil painting, impressionist"),
        ("a portrait of {prompt} in winter", "my dog", "a portrait of my dog in winter"),
        ("oil painting, impressionist", "a cat", "a cat, oil painting, impressionist"),
        ("{prompt} and {prompt}", "x", "x and x"),
    ],
    ids=["placeholder-first", "placeholder-inside", "no-placeholder", "twice"],
)
def test_compose_prompt(template: str, prompt: str, expected: str) -> None:
    assert compose_prompt(template, prompt) == expected


def test_braces_other_than_the_placeholder_stay_literal() -> None:
    assert compose_prompt("{prompt}, {style} 100%", "a cat") == "a cat, {style} 100%"


@pytest.mark.parametrize(
    ("user", "style", "expected"),
    [
        (None, None, None),
        ("blurry", None, "blurry"),
        (None, "blurry", "blurry"),
        ("text", "blurry", "text, blurry"),
        ("  ", " blurry ", "blurry"),
    ],
)
def test_join_negative(user: str | None, style: str | None, expected: str | None) -> None:
    assert join_negative(user, style) == expected


@pytest.mark.parametrize(
    ("user", "style", "expected"),
    [(None, None, 0.5), (None, 0.7, 0.7), (0.3, 0.7, 0.3), (0.3, None, 0.3), (1.0, 0.05, 1.0)],
)
def test_user_strength_wins_then_style_then_default(
    user: float | None, style: float | None, expected: float
) -> None:
    assert pick_strength(user, style) == expected


def test_apply_style_composes_all_three() -> None:
    style = Style("oily", "{prompt}, oil painting, impressionist", "blurry", 0.7, "mine")
    got = apply_style(style, "a cat", "text", None)
    assert (got.prompt, got.negative_prompt, got.strength, got.style) == (
        "a cat, oil painting, impressionist",
        "text, blurry",
        0.7,
        "oily",
    )
    assert apply_style(style, "a cat", None, 0.25).strength == 0.25
    plain = apply_style(None, "a cat", None, None)
    assert (plain.prompt, plain.negative_prompt, plain.strength, plain.style) == (
        "a cat",
        None,
        0.5,
        None,
    )


def test_composed_prompt_past_the_limit_is_refused() -> None:
    template = "{prompt}, " + "x" * (MAX_PROMPT_CHARS - 10)
    style = Style("long", template)
    assert len(apply_style(style, "a", None, None).prompt) <= MAX_PROMPT_CHARS
    with pytest.raises(UserError, match=r"style `long`.*limit is 1000"):
        apply_style(style, "a long prompt", None, None)
    negative = Style("neg", "{prompt}", "n" * MAX_PROMPT_CHARS)
    with pytest.raises(UserError, match="negative prompt would be"):
        apply_style(negative, "a cat", "more", None)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [("oil", "oil"), ("Family-Oil", "family-oil"), (" a1-b2 ", "a1-b2"), ("x" * 32, "x" * 32)],
)
def test_good_names(raw: str, stored: str) -> None:
    assert check_name(raw) == stored


@pytest.mark.parametrize("raw", ["", "   ", "x" * 33, "oil painting", "öl", "a_b", "a/b", "`x`"])
def test_bad_names_say_the_rule(raw: str) -> None:
    with pytest.raises(UserError, match="a–z, 0–9 and '-', at most 32"):
        check_name(raw)


@pytest.mark.parametrize("template", ["", "   ", "{prompt}", " {prompt} , "])
def test_template_must_add_something(template: str) -> None:
    with pytest.raises(UserError, match="prompt is empty"):
        check_template(template)


def test_template_length() -> None:
    assert check_template(" " + "y" * MAX_PROMPT_CHARS + " ") == "y" * MAX_PROMPT_CHARS
    with pytest.raises(UserError, match="1001 characters"):
        check_template("y" * (MAX_PROMPT_CHARS + 1))


@pytest.mark.parametrize(
    ("count", "scope", "ok"),
    [
        (0, "mine", True),
        (MAX_PER_MEMBER - 1, "mine", True),
        (MAX_PER_MEMBER, "mine", False),
        (MAX_PER_MEMBER, "server", True),
        (MAX_PER_SERVER - 1, "server", True),
        (MAX_PER_SERVER, "server", False),
    ],
)
def test_limits(count: int, scope: str, ok: bool) -> None:
    assert (MAX_PER_MEMBER, MAX_PER_SERVER) == (25, 50)
    if ok:
        check_room(count, scope)  # type: ignore[arg-type]
    else:
        with pytest.raises(UserError, match=f"most allowed is {count}"):
            check_room(count, scope)  # type: ignore[arg-type]


def test_lookup_order_member_then_server_then_builtin() -> None:
    mine = [Style("winter", "{prompt}, mine", scope="mine")]
    server = [
        Style("winter", "{prompt}, server", scope="server"),
        Style("house", "{prompt}, house", scope="server"),
    ]
    assert resolve("winter", mine, server) == mine[0]
    assert resolve("WINTER ", mine, server) == mine[0]
    assert resolve("winter", [], server) == server[0]
    assert resolve("winter", [], []) == BUILTINS["winter"]
    assert resolve("house", mine, server) == server[1]
    assert resolve("nope", mine, server) is None


def test_builtins_carry_their_recommended_strength() -> None:
    assert {name: s.strength for name, s in BUILTINS.items()} == {
        "oil-painting": 0.5,
        "watercolour": 0.5,
        "concept-art": 0.7,
        "digital-illustration": 0.45,
        "product-clean": 0.5,
        "winter": 0.5,
    }
    for style in BUILTINS.values():
        assert check_name(style.name) == style.name
        assert check_template(style.template) == style.template
        assert style.scope == "builtin"


def test_autocomplete_in_lookup_order_once_each() -> None:
    mine = [Style("winter", "{prompt}, m", scope="mine"), Style("wild", "w", scope="mine")]
    server = [Style("winter", "{prompt}, s", scope="server"), Style("lowkey", "l", scope="server")]
    choices = style_choices("w", mine, server)
    values = [v for _, v in choices]
    assert values == ["winter", "wild", "watercolour", "lowkey"]  # prefix matches first
    assert choices[0][0] == "winter (yours)"
    assert ("lowkey (this server's)", "lowkey") in choices
    assert len(style_choices("", [Style(f"s{i}", "t", scope="mine") for i in range(30)], [])) == 25


@pytest.mark.parametrize(
    ("chosen", "served", "expected"),
    [
        (None, ("lines",), "lines"),  # the style's, where the worker serves it
        (None, None, "lines"),  # no worker ready yet: taken (a worker without it fails it)
        (None, ("edges",), None),  # not served: the style runs without structure
        ("off", ("lines",), "off"),  # the member's own choice wins, off included
        ("edges", ("edges", "lines"), "edges"),
    ],
)
def test_concept_art_keeps_a_sketchs_lines_where_served(
    chosen: str | None, served: tuple[str, ...] | None, expected: str | None
) -> None:
    composed = apply_style(BUILTINS["concept-art"], "a castle", None, None)
    assert composed.structure == "lines"
    assert structure_for(chosen, composed, served) == expected
    plain = apply_style(None, "a castle", None, None)
    assert structure_for(None, plain, served) is None
