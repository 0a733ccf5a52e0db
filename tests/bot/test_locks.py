"""Per-key locks: one holder per key at a time, and no entry left once nobody uses one."""

from __future__ import annotations

import asyncio

from bot.locks import KeyedLocks


async def test_one_holder_per_key_and_nothing_kept_afterwards() -> None:
    locks = KeyedLocks()
    inside: dict[int, int] = {1: 0, 2: 0}
    most: dict[int, int] = {1: 0, 2: 0}

    async def use(key: int) -> None:
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await asyncio.sleep(0.01)
            inside[key] -= 1

    await asyncio.gather(*(use(key) for key in (1, 2) * 5))
    assert most == {1: 1, 2: 1}
    assert len(locks) == 0


async def test_a_failing_holder_releases_and_forgets_its_key() -> None:
    locks = KeyedLocks()
    try:
        async with locks.hold("album"):
            raise RuntimeError("edit failed")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with locks.hold("album"):
        assert len(locks) == 1
