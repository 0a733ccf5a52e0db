"""The /help pages: each fits Discord's limits with or without a notice, the menu's options
are valid, and every topic the menu offers has a page. That every registered command is
named on a page is checked against the synced commands in tests/e2e/test_help_e2e.py."""

from __future__ import annotations

import pytest

from bot.safety_notice import runs_unfiltered, unfiltered_text
from bot.ui.help import TOPIC_KEYS, TOPICS, help_embed, topic, topic_options
from tests.bot.test_limits import assert_within_limits

TOPIC_NAMES = [
    "Start here", "Strength", "Working on a result", "Upscale ×2", "Inpainting",
    "Series and styles", "Keep the structure", "Models and LoRAs", "Settings",
    "Troubleshooting",
]  # fmt: skip


def test_the_topics_the_issue_asks_for_in_order() -> None:
    assert [t.label for t in TOPICS] == TOPIC_NAMES
    assert len(set(TOPIC_KEYS)) == len(TOPICS)


@pytest.mark.parametrize("key", TOPIC_KEYS)
@pytest.mark.parametrize("notice", [None, "n" * 3000])
def test_every_page_fits(key: str, notice: str | None) -> None:
    embed = help_embed(key, notice)
    assert_within_limits(embed)
    assert embed.description == topic(key).text  # the page itself is never cut
    if notice:
        assert embed.fields[0].value.startswith("nnn")


def test_menu_options_are_valid_select_options() -> None:
    options = topic_options("inpaint")
    assert len(options) <= 25
    assert [o.value for o in options if o.default] == ["inpaint"]
    for option in options:
        assert len(option.label) <= 100 and len(option.description or "") <= 100


def test_an_unknown_topic_opens_the_first_page() -> None:
    assert topic("no-such-topic") is TOPICS[0]


def test_help_mentions_blocked_words_and_forget_me() -> None:
    pages = "\n".join(t.text for t in TOPICS)
    assert "blocked word" in pages and "/gallery forget-me" in pages


class _Info:
    def __init__(self, safety_checker: str) -> None:
        self.safety_checker = safety_checker


class _OneWorker:
    def __init__(self, info: _Info | None) -> None:
        self.info = info


class _Fleet:
    def __init__(self, *states: str) -> None:
        self.info = _Info("remote")
        self.engine_infos = tuple(_Info(s) for s in states)


@pytest.mark.parametrize(
    ("worker", "unfiltered"),
    [
        (_OneWorker(_Info("on")), False),
        (_OneWorker(_Info("off")), True),
        (_OneWorker(_Info("missing")), True),
        (_OneWorker(None), False),  # no worker ready: nothing is being made
        (_Fleet("on", "on"), False),
        (_Fleet("on", "missing"), True),  # one worker of the fleet is enough
    ],
)
def test_results_are_unfiltered_while_any_worker_runs_without_a_checker(
    worker: object, unfiltered: bool
) -> None:
    assert runs_unfiltered(worker) is unfiltered


def test_the_warning_counts_this_server_s_unchecked_pictures() -> None:
    assert "1 picture of this server in the last 24 h was not checked" in unfiltered_text(1)
    assert "3 pictures of this server in the last 24 h were not checked" in unfiltered_text(3)
