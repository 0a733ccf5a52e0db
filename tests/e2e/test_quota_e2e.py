"""Quotas and /settings end to end: the real client and worker against the Discord stand-in."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import (
    MANAGE_GUILD,
    BotFactory,
    World,
    button,
    slash_img2img,
    status_message,
    wait_result,
)
from tests.fakediscord import FakeDiscord, InteractionHandle

ALL_STATES = ["queued", "running", "done", "failed", "cancelled", "deleted"]


async def private_text(handle: InteractionHandle) -> str:
    """The interaction's answer, which must be visible only to the user."""
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"], msg["content"]
    return str(msg["content"])


async def slash(fd: FakeDiscord, world: World, by: int, name: str, /, **options: Any) -> str:
    """Run a command in the first server's channel; its private answer."""
    return await private_text(
        await fd.send_slash(world.guild, world.channel, by, name, options or None)
    )


def downloads_so_far(fd: FakeDiscord) -> int:
    return sum(1 for c in fd.calls if c.path.startswith("/attachments"))


async def test_settings_is_only_for_manage_server(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot()
    assert int(fd.command("settings")["default_member_permissions"]) == MANAGE_GUILD
    # Discord hides it from members without the permission...
    with pytest.raises(PermissionError):
        await fd.send_slash(world.guild, world.channel, world.alice, "settings show")
    # ...but a server can show it to anyone, so the bot checks again
    for user in (world.alice, world.mod):
        handle = await fd.send_slash(
            world.guild, world.channel, user, "settings limits", {"user": 1}, validate=False
        )
        assert "Manage Server" in await private_text(handle)
    assert "20 of 20 images left" in await slash(fd, world, world.alice, "quota")
    assert "No changes yet" in await slash(fd, world, world.admin, "settings show")


async def test_quota_counts_and_refuses_over_quota(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(quota_user_daily=1)
    text = await slash(fd, world, world.alice, "quota")
    assert "You: 1 of 1 image left" in text and "server: 200 of 200 images left" in text

    result = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.alice))
    text = await slash(fd, world, world.alice, "quota")
    assert "You: 0 of 1 image left" in text and "199 of 200" in text
    assert "frees up <t:" in text and ":R> (in " in text

    # over quota: a private refusal saying when, before any download; nothing is queued
    downloads = downloads_so_far(fd)
    assert downloads == 1
    refused = await slash_img2img(fd, world.guild, world.channel, world.alice)
    text = await private_text(refused)
    assert "used your 1 image for" in text and "frees up <t:" in text and "UTC" in text
    assert status_message(fd, refused) is None
    assert downloads_so_far(fd) == downloads
    # buttons count too
    click = await fd.click(result["id"], button(result, "Reroll")["custom_id"], world.alice)
    assert "frees up <t:" in await private_text(click)
    assert len(await bot.store.jobs_in_states(ALL_STATES)) == 1

    # the limit is per member: bob still has his image, and the server counts both
    click = await fd.click(result["id"], button(result, "Reroll")["custom_id"], world.bob)
    await wait_result(fd, click)
    assert "198 of 200" in await slash(fd, world, world.bob, "quota")

    # an admin resets alice's usage: she may make one again
    text = await slash(fd, world, world.admin, "settings reset-usage", member=world.alice)
    assert "reset the usage" in text
    assert "You: 1 of 1 image left" in await slash(fd, world, world.alice, "quota")


async def test_settings_changes_are_shown_with_who_and_when(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot()
    gallery = fd.add_channel(world.guild, "gallery")
    vip = fd.add_role(world.guild, "vip")

    assert "✅" in await slash(fd, world, world.admin, "settings limits", user=5, guild=50)
    text = await slash(fd, world, world.admin, "settings limits", user=101)
    assert "❌" in text and "up to 100" in text
    text = await slash(fd, world, world.admin, "settings role-limit", role=vip, exempt=True)
    assert "exempt" in text
    await slash(fd, world, world.admin, "settings gallery-channel", channel=gallery)

    shown = await slash(fd, world, world.admin, "settings show")
    assert "Per member: 5 images per 24 h" in shown
    assert "Whole server: 50 images per 24 h" in shown
    assert f"Gallery channel: <#{gallery}>" in shown
    assert f"Role <@&{vip}>: no per-member limit" in shown
    assert "Recent changes" in shown
    assert f"by <@{world.admin}>: per-member limit 20 → 5; server limit 200 → 50" in shown
    assert "<t:" in shown

    text = await slash(fd, world, world.alice, "quota")
    assert "You: 5 of 5 images left" in text and "server: 50 of 50 images left" in text
    # the other server keeps the defaults
    handle = await fd.send_slash(world.guild2, world.channel2, world.dave, "quota")
    assert "You: 20 of 20 images left" in await private_text(handle)


async def test_channel_restriction(fd: FakeDiscord, world: World, make_bot: BotFactory) -> None:
    bot = await make_bot()
    bots = fd.add_channel(world.guild, "bots")
    text = await slash(fd, world, world.admin, "settings channel-allow", channel=bots)
    assert "✅" in text

    refused = await slash_img2img(fd, world.guild, world.channel, world.alice)
    text = await private_text(refused)
    assert f"only be used in: <#{bots}>" in text
    assert await bot.store.jobs_in_states(ALL_STATES) == []

    accepted = await slash_img2img(fd, world.guild, bots, world.alice)
    await wait_result(fd, accepted)

    assert "every channel" in await slash(fd, world, world.admin, "settings channel-all")
    assert "Channels: every channel" in await slash(fd, world, world.admin, "settings show")
