"""Fixtures for the stand-in's self-tests: a started stand-in with discord.py pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakediscord import FakeDiscord


@pytest.fixture
async def fd() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord(heartbeat_interval=200)
    await fake.astart()
    try:
        with fake.patch_discord():
            yield fake
    finally:
        await fake.astop()
    if fake.strict:
        fake.assert_clean()


@pytest.fixture
def world(fd: FakeDiscord) -> dict[str, int]:
    guild = fd.add_guild("guild")
    channel = fd.add_channel(guild, "general")
    alice = fd.add_user("alice")
    fd.add_member(guild, alice)
    return {"guild": guild, "channel": channel, "alice": alice}
