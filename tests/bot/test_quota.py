"""Quota arithmetic: the rolling window, refunds, resets, role limits, next-free times."""

from __future__ import annotations

import pytest

from bot.quota import (
    WINDOW_S,
    QuotaState,
    RoleLimit,
    Usage,
    counted_times,
    effective_user_limit,
    plain_duration,
    refusal_text,
    summarize,
    when_text,
    window_cutoff,
)

NOW = 1_700_000_000.0
H = 3600.0


@pytest.mark.parametrize(
    ("rows", "reset_at", "expected"),
    [
        ([], None, ()),
        # inside the window, counted
        ([(NOW - 1, 1)], None, (NOW - 1,)),
        # exactly 24 h old: out; a second younger: in
        ([(NOW - WINDOW_S, 1), (NOW - WINDOW_S + 1, 1)], None, (NOW - WINDOW_S + 1,)),
        # refunded jobs (cancelled, failed) are counted 0 and use nothing
        ([(NOW - H, 0), (NOW - 2 * H, 1), (NOW - 3 * H, 0)], None, (NOW - 2 * H,)),
        # a reset hides everything at or before it, even inside the window
        ([(NOW - 5 * H, 1), (NOW - 2 * H, 1), (NOW - H, 1)], NOW - 2 * H, (NOW - H,)),
        # a reset older than the window changes nothing
        ([(NOW - 5 * H, 1)], NOW - 2 * WINDOW_S, (NOW - 5 * H,)),
        # out of order in, oldest first out
        (
            [(NOW - H, 1), (NOW - 3 * H, 1), (NOW - 2 * H, 1)],
            None,
            (NOW - 3 * H, NOW - 2 * H, NOW - H),
        ),
    ],
)
def test_counted_times(
    rows: list[tuple[float, int]], reset_at: float | None, expected: tuple[float, ...]
) -> None:
    assert counted_times(rows, window_cutoff(NOW, reset_at)) == expected


@pytest.mark.parametrize(
    ("limit", "times", "remaining", "exhausted", "next_at"),
    [
        (20, (), 20, False, None),
        (3, (NOW - 5 * H, NOW - H), 1, False, NOW - 5 * H + WINDOW_S),
        (2, (NOW - 5 * H, NOW - H), 0, True, NOW - 5 * H + WINDOW_S),
        # limit lowered below usage: the 2nd oldest must leave before one is free
        (2, (NOW - 5 * H, NOW - 3 * H, NOW - H), 0, True, NOW - 3 * H + WINDOW_S),
        (1, (NOW - 5 * H, NOW - 3 * H, NOW - H), 0, True, NOW - H + WINDOW_S),
        # a limit of 0 never frees up
        (0, (), 0, True, None),
        (0, (NOW - H,), 0, True, None),
        # no limit at all (exempt)
        (None, (NOW - H,), None, False, None),
    ],
)
def test_usage(
    limit: int | None,
    times: tuple[float, ...],
    remaining: int | None,
    exhausted: bool,
    next_at: float | None,
) -> None:
    usage = Usage(limit, times)
    assert usage.used == len(times)
    assert usage.remaining == remaining
    assert usage.exhausted is exhausted
    assert usage.next_unit_at() == next_at


def test_refund_gives_the_unit_back() -> None:
    """Flipping a job to counted=0 (cancel, fail) frees its unit at once."""
    rows = [(NOW - H, 1), (NOW - 2 * H, 1)]
    assert Usage(2, counted_times(rows, window_cutoff(NOW))).exhausted
    rows[0] = (NOW - H, 0)
    after = Usage(2, counted_times(rows, window_cutoff(NOW)))
    assert not after.exhausted and after.remaining == 1


@pytest.mark.parametrize(
    ("base", "rules", "roles", "expected"),
    [
        (20, [], [1, 2], 20),
        # a role without a rule changes nothing
        (20, [RoleLimit(9, 50)], [1], 20),
        # a role's own limit replaces the server's, higher or lower
        (20, [RoleLimit(1, 50)], [1], 50),
        (20, [RoleLimit(1, 5)], [1], 5),
        # several roles: the most generous
        (20, [RoleLimit(1, 5), RoleLimit(2, 40), RoleLimit(3, 30)], [1, 2, 3], 40),
        # exempt wins over any number
        (20, [RoleLimit(1, 40), RoleLimit(2, None, exempt=True)], [1, 2], None),
        (20, [RoleLimit(2, None, exempt=True)], [1], 20),
        # a rule with neither limit nor exemption means "the server's"
        (20, [RoleLimit(1, None)], [1], 20),
        (20, [RoleLimit(1, 0)], [1], 0),
    ],
)
def test_effective_user_limit(
    base: int, rules: list[RoleLimit], roles: list[int], expected: int | None
) -> None:
    assert effective_user_limit(base, rules, roles) == expected


@pytest.mark.parametrize(
    ("user", "guild", "allowed", "blocked", "at"),
    [
        (Usage(2, (NOW - H,)), Usage(10, (NOW - H,)), True, None, None),
        (Usage(1, (NOW - H,)), Usage(10, (NOW - H,)), False, "user", NOW - H + WINDOW_S),
        (Usage(5, (NOW - H,)), Usage(1, (NOW - 2 * H,)), False, "guild", NOW - 2 * H + WINDOW_S),
        # both blocked: the later of the two
        (Usage(1, (NOW - 9 * H,)), Usage(1, (NOW - H,)), False, "both", NOW - H + WINDOW_S),
        (Usage(0, ()), Usage(10, ()), False, "user", None),
        (Usage(None, (NOW - H,) * 3), Usage(3, (NOW - H,) * 3), False, "guild", NOW - H + WINDOW_S),
    ],
)
def test_quota_state(
    user: Usage, guild: Usage, allowed: bool, blocked: str | None, at: float | None
) -> None:
    state = QuotaState(user, guild)
    assert state.allowed is allowed
    assert state.blocked_by == blocked
    assert state.available_at() == at


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "now"),
        (0, "now"),
        (30, "less than a minute"),
        (60, "1 min"),
        (61, "2 min"),
        (3600, "1 h"),
        (3 * 3600 + 12 * 60, "3 h 12 min"),
        (WINDOW_S, "24 h"),
    ],
)
def test_plain_duration(seconds: float, text: str) -> None:
    assert plain_duration(seconds) == text


def test_refusal_text_has_discord_timestamp_and_plain_text() -> None:
    state = QuotaState(Usage(1, (NOW - H,)), Usage(200, (NOW - H,)))
    text = refusal_text(state, NOW)
    frees = int(NOW - H + WINDOW_S)
    assert f"<t:{frees}:R>" in text
    assert "in 23 h" in text and "UTC" in text
    assert "Nothing was queued" in text
    assert when_text(NOW + 90, NOW).startswith(f"<t:{int(NOW) + 90}:R> (in 2 min")


def test_refusal_text_limit_zero() -> None:
    text = refusal_text(QuotaState(Usage(5, ()), Usage(0, ())), NOW)
    assert "server" in text and "limit 0" in text


def test_summarize() -> None:
    lines = summarize(QuotaState(Usage(20, (NOW - H,)), Usage(200, (NOW - H,) * 3)), NOW)
    assert lines[0].startswith("🖼️ You: 19 of 20 images left")
    assert "197 of 200 images left" in lines[1]
    assert f"<t:{int(NOW - H + WINDOW_S)}:R>" in lines[2]
    assert summarize(QuotaState(Usage(None, ()), Usage(200, ())), NOW)[0].startswith(
        "🖼️ You: no limit"
    )
