"""Self-tests: the real discord.py client against the stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakediscord import FakeDiscord, Upload

pytestmark = pytest.mark.e2e


class AgainButton(discord.ui.DynamicItem[discord.ui.Button], template=r"again:(?P<n>[0-9]+)"):
    """State in the custom_id, routed by regex: works without any stored view."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label="Again", custom_id=f"again:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> AgainButton:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        interaction.client.clicks.append(self.n)  # type: ignore[attr-defined]
        await interaction.response.send_message(f"again {self.n}", ephemeral=True)


class CountButton(discord.ui.DynamicItem[discord.ui.Button], template=r"count:(?P<n>[0-9]+)"):
    """Answers with type 7: the clicked message is edited in place."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label="+1", custom_id=f"count:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> CountButton:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(CountButton(self.n + 1))
        view.add_item(SlowButton())
        await interaction.response.edit_message(content=f"count {self.n + 1}", view=view)


class SlowButton(discord.ui.DynamicItem[discord.ui.Button], template=r"slow"):
    """Answers with type 6, then edits the clicked message through @original."""

    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="slow", custom_id="slow"))

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> SlowButton:
        return cls()

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="done", view=None)


class NameForm(discord.ui.Modal, title="Your name"):
    name: discord.ui.TextInput = discord.ui.TextInput(label="Name")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"hello {self.name.value}")


settings = app_commands.Group(name="settings", description="Server settings")


@settings.command(name="show", description="Show a setting")
async def settings_show(interaction: discord.Interaction, key: str, level: int = 1) -> None:
    await interaction.response.send_message(f"{key}={level}")


class StandinBot(commands.Bot):
    def __init__(self, intents: discord.Intents | None = None) -> None:
        super().__init__(
            command_prefix="!",
            intents=intents or discord.Intents.default(),
            guild_ready_timeout=0.05,
        )
        self.clicks: list[int] = []
        self.errors: list[BaseException] = []
        self.release = asyncio.Event()
        self.posted: tuple[int, str] | None = None

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every re-IDENTIFY; not needed against the stand-in."""

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        self.errors.append(error)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AgainButton, CountButton, SlowButton)
        self.tree.add_command(settings)
        self.tree.on_error = self.on_app_command_error

        @self.tree.command(name="echo", description="Reverse an uploaded file")
        async def echo(
            interaction: discord.Interaction, image: discord.Attachment, note: str = "none"
        ) -> None:
            await interaction.response.defer(thinking=True)
            data = await image.read()
            view = discord.ui.View(timeout=None)
            view.add_item(AgainButton(len(data)))
            embed = discord.Embed(title="reversed", description=note)
            embed.set_image(url="attachment://out.bin")
            await interaction.followup.send(
                content=f"{image.filename} {image.size}",
                file=discord.File(io.BytesIO(data[::-1]), "out.bin"),
                embed=embed,
                view=view,
                ephemeral=True,
            )

        @self.tree.command(name="secret", description="Private answer")
        async def secret(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("only you", ephemeral=True)

        @self.tree.command(name="late", description="Follows up when released")
        async def late(interaction: discord.Interaction) -> None:
            await interaction.response.defer()
            await self.release.wait()
            try:
                await interaction.followup.send("too late")
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @self.tree.command(name="counter", description="A counter and a slow button")
        async def counter(interaction: discord.Interaction) -> None:
            view = discord.ui.View(timeout=None)
            view.add_item(CountButton(0))
            view.add_item(SlowButton())
            await interaction.response.send_message("count 0", view=view)

        @self.tree.command(name="post", description="Channel messages")
        async def post(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message("posting", ephemeral=True)
            channel = interaction.channel
            assert isinstance(channel, discord.TextChannel)
            first = await channel.send(text, file=discord.File(io.BytesIO(b"data"), "d.txt"))
            reply = await first.reply("reply")
            await first.edit(content=f"{text} (edited)")
            fetched = await channel.fetch_message(first.id)
            await reply.delete()
            self.posted = (first.id, fetched.content)

        @self.tree.command(name="pick", description="Typed options")
        async def pick(
            interaction: discord.Interaction,
            who: discord.Member,
            role: discord.Role,
            where: discord.TextChannel,
            count: app_commands.Range[int, 1, 5],
            ratio: float,
            loud: bool = False,
        ) -> None:
            await interaction.response.send_message(
                f"{who.name}|{role.name}|{where.name}|{count}|{ratio}|{loud}"
            )

        @self.tree.command(name="form", description="A modal")
        async def form(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(NameForm())

        @self.tree.command(name="style", description="Autocomplete")
        async def style(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(name)

        @style.autocomplete("name")
        async def style_names(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            names = ["anime", "photo", "pixel"]
            return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

        @self.tree.command(name="admin", description="Managers only")
        @app_commands.default_permissions(manage_guild=True)
        async def admin(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("ok")

        await self.tree.sync()


@contextlib.asynccontextmanager
async def running(fd: FakeDiscord, token: str | None = None) -> AsyncIterator[StandinBot]:
    bot = StandinBot()
    task = asyncio.create_task(bot.start(token or fd.token))
    try:
        await fd.wait_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        yield bot
        await fd.settle()
    finally:
        await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
    fd.assert_no_unknown_routes()


async def test_login_and_command_sync(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd) as bot:
        assert bot.user is not None and bot.user.id == fd.bot_user_id
        assert bot.get_guild(world["guild"]) is not None
        assert bot.get_channel(world["channel"]) is not None
        names = {c["name"] for c in fd.commands()}
        assert names == {
            "echo",
            "secret",
            "late",
            "settings",
            "counter",
            "post",
            "pick",
            "form",
            "admin",
            "style",
        }
        echo = fd.command("echo")
        assert echo is not None and echo["application_id"] == str(fd.application_id)
        assert [o["type"] for o in echo["options"]] == [11, 3]
        assert fd.identify_count == 1
        assert fd.connections[0].query == {"v": "10", "encoding": "json", "compress": "zlib-stream"}
    fd.assert_no_unknown_routes()


async def test_json_content_type_is_exact(fd: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            fd.api_base + "/users/@me", headers={"Authorization": f"Bot {fd.token}"}
        ) as resp:
            assert resp.headers["Content-Type"] == "application/json"
        async with session.get(fd.api_base + "/nope") as resp:
            assert resp.status == 404
            assert (await resp.json()) == {"message": "404: Not Found", "code": 0}
    assert [c.path for c in fd.unknown_calls] == ["/nope"]
    fd.strict = False  # the unknown route was the point


async def test_slash_with_attachment_and_followup_file(
    fd: FakeDiscord, world: dict[str, int]
) -> None:
    payload = bytes(range(256)) * 4
    async with running(fd):
        h = await fd.send_slash(
            world["guild"],
            world["channel"],
            world["alice"],
            "echo",
            {"note": "hi"},
            attachments={"image": ("in.bin", payload, "application/octet-stream")},
        )
        assert (await h.response())["type"] == 5
        msg = await h.wait_original(lambda m: not m["loading"])
        # The first follow-up after a public defer fills the thinking message and stays public.
        assert h.followups()[0]["id"] == msg["id"]
        assert msg["ephemeral"] is False and h.ephemeral is False
        assert msg["content"] == f"in.bin {len(payload)}"
        assert fd.attachment_bytes(msg) == payload[::-1]
        assert msg["attachments"][0]["filename"] == "out.bin"
        embed = msg["embeds"][0]
        assert embed["title"] == "reversed" and embed["description"] == "hi"
        assert embed["image"]["url"] == msg["attachments"][0]["url"]
        assert msg["components"][0]["components"][0]["custom_id"] == f"again:{len(payload)}"
        assert len(msg["history"]) == 1 and msg["history"][0]["flags"] & 128
        # the bot downloaded the user's file from the stand-in
        assert any(c.path.startswith("/attachments/") for c in fd.calls)
        upload = await fd.wait_for(lambda c: c.path.startswith("/webhooks/"))
        assert upload.files[0]["filename"] == "out.bin"


async def test_declared_size_override(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        h = await fd.send_slash(
            world["guild"],
            world["channel"],
            world["alice"],
            "echo",
            attachments={"image": Upload("big.png", b"x", size=50_000_000)},
        )
        msg = await h.wait_original(lambda m: not m["loading"])
        assert msg["content"] == "big.png 50000000"
        att = h.payload["data"]["resolved"]["attachments"]
        ((att_id, att_data),) = att.items()
        assert h.payload["data"]["options"][0]["value"] == att_id
        assert att_data["size"] == 50_000_000


async def test_button_click_reaches_dynamic_item(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd) as bot:
        h = await fd.send_slash(
            world["guild"],
            world["channel"],
            world["alice"],
            "echo",
            attachments={"image": ("a.bin", b"abc")},
        )
        msg = await h.wait_original(lambda m: not m["loading"])
        click = await fd.click(msg["id"], "again:3", world["alice"])
        response = await click.response()
        assert response["type"] == 4
        assert bot.clicks == [3]
        reply = click.original()
        assert reply is not None and reply["content"] == "again 3" and reply["ephemeral"]
        with pytest.raises(LookupError):
            await fd.click(msg["id"], "again:999", world["alice"])


async def test_ephemeral_response_and_subcommand(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "secret")
        assert (await h.response())["type"] == 4
        assert h.ephemeral is True
        assert h.original()["content"] == "only you"
        s = await fd.send_slash(
            world["guild"],
            world["channel"],
            world["alice"],
            "settings show",
            {"key": "steps", "level": 3},
        )
        msg = await s.wait_original()
        assert msg["content"] == "steps=3" and not msg["ephemeral"]
        with pytest.raises(ValueError):
            await fd.send_slash(
                world["guild"], world["channel"], world["alice"], "settings show", {"level": 3}
            )


async def test_disconnect_resume_and_replay(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        seq_before = fd.dispatched[-1][0]
        await fd.disconnect(4000)
        # sent while the bot is away: kept and replayed on RESUME
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "secret")
        await fd.wait_resumed()
        assert fd.identify_count == 1 and fd.resume_count == 1
        assert (await h.response())["type"] == 4
        assert fd.connections[0].close_code == 4000
        assert fd.connections[1].resumed and not fd.connections[1].identified
        events = [e for s, e in fd.dispatched if s > seq_before]
        assert events == ["INTERACTION_CREATE", "RESUMED"]
        again = await fd.send_slash(world["guild"], world["channel"], world["alice"], "secret")
        assert (await again.response())["type"] == 4


async def test_heartbeats_keep_arriving(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        start = time.monotonic()
        await fd.until(lambda: len([t for t in fd.heartbeats if t > start]) >= 5, 3, "heartbeats")
        beats = [t for t in fd.heartbeats if t > start]
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert max(gaps) < 0.5


async def test_stalled_bot_loop_shows_as_late_heartbeat(
    fd: FakeDiscord, world: dict[str, int]
) -> None:
    async with running(fd):
        await fd.until(lambda: len(fd.heartbeats) >= 2, 3, "heartbeats")
        time.sleep(0.8)  # the bot's loop (this loop) stalls; the stand-in's does not
        start = time.monotonic()
        await fd.until(
            lambda: len([t for t in fd.heartbeats if t > start]) >= 2,
            3,
            "heartbeats after the stall",
        )
        gaps = [b - a for a, b in itertools.pairwise(fd.heartbeats)]
        assert max(gaps) > 0.6


async def test_wrong_token_is_login_failure(fd: FakeDiscord) -> None:
    bot = StandinBot()
    try:
        with pytest.raises(discord.LoginFailure):
            await bot.login("not-the-token")
    finally:
        await bot.close()
    assert fd.calls[-1].status == 401


async def test_expired_token_fails_followup(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd) as bot:
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "late")
        assert (await h.response())["type"] == 5
        h.expire()
        bot.release.set()
        await fd.until(lambda: bot.errors, what="the follow-up error")
        err: Any = bot.errors[0]
        assert isinstance(err, discord.HTTPException)
        assert (err.status, err.code) == (401, 50027)
        assert h.original()["loading"] is True


async def test_channel_messages_reply_edit_fetch_delete(
    fd: FakeDiscord, world: dict[str, int]
) -> None:
    async with running(fd) as bot:
        h = await fd.send_slash(
            world["guild"], world["channel"], world["alice"], "post", {"text": "hello"}
        )
        await fd.until(lambda: bot.posted, what="the bot's posts")
        first_id, fetched = bot.posted  # type: ignore[misc]
        assert fetched == "hello (edited)"
        first = fd.message(first_id)
        assert first is not None and first["kind"] == "channel"
        assert [v["content"] for v in first["history"]] == ["hello"]
        assert fd.attachment_bytes(first) == b"data"
        assert first["attachments"][0]["content_type"].startswith("text/plain")
        reply = next(
            m
            for m in fd.messages(world["channel"], include_deleted=True)
            if m["content"] == "reply"
        )
        assert reply["deleted"] and reply["message_reference"]["message_id"] == first_id
        visible = [m["content"] for m in fd.messages(world["channel"]) if not m["ephemeral"]]
        assert visible == ["hello (edited)"]
        assert h.original()["ephemeral"]


async def test_typed_options_and_validation(fd: FakeDiscord, world: dict[str, int]) -> None:
    role = fd.add_role(world["guild"], "artists")
    async with running(fd):
        opts = {
            "who": world["alice"],
            "role": role,
            "where": world["channel"],
            "count": 3,
            "ratio": 0.5,
        }
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "pick", opts)
        msg = await h.wait_original()
        assert msg["content"] == "alice|artists|general|3|0.5|False"
        with pytest.raises(ValueError):
            await fd.send_slash(
                world["guild"], world["channel"], world["alice"], "pick", {**opts, "count": 9}
            )
        with pytest.raises(LookupError):
            await fd.send_slash(world["guild"], world["channel"], world["alice"], "nope")


async def test_autocomplete(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        h = await fd.send_autocomplete(
            world["guild"], world["channel"], world["alice"], "style", {"name": "p"}, focused="name"
        )
        response = await h.response()
        assert response["type"] == 8
        assert [c["value"] for c in response["data"]["choices"]] == ["photo", "pixel"]


async def test_modal_submit(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "form")
        assert (await h.response())["type"] == 9
        assert h.modal is not None and h.modal["title"] == "Your name"
        sub = await fd.submit_modal(h, {"Name": "Bob"})
        msg = await sub.wait_original()
        assert msg["content"] == "hello Bob"


async def test_update_message_and_deferred_update(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "counter")
        msg = await h.wait_original()
        click = await fd.click(msg["id"], "count:0", world["alice"])
        assert (await click.response())["type"] == 7
        updated = fd.message(msg["id"])
        assert updated is not None and updated["content"] == "count 1"
        ids = [c["custom_id"] for c in updated["components"][0]["components"]]
        assert ids == ["count:1", "slow"]
        slow = await fd.click(msg["id"], "slow", world["alice"])
        assert (await slow.response())["type"] == 6
        done = await slow.wait_original(lambda m: m["content"] == "done")
        assert done["id"] == msg["id"] and done["components"] == []
        assert [v["content"] for v in done["history"]] == ["count 0", "count 1"]


async def test_default_member_permissions(fd: FakeDiscord, world: dict[str, int]) -> None:
    managers = fd.add_role(world["guild"], "managers", permissions=1 << 5)  # manage guild
    bob = fd.add_user("bob")
    fd.add_member(world["guild"], bob, roles=[managers])
    async with running(fd):
        with pytest.raises(PermissionError):
            await fd.send_slash(world["guild"], world["channel"], world["alice"], "admin")
        h = await fd.send_slash(world["guild"], world["channel"], bob, "admin")
        assert (await h.wait_original())["content"] == "ok"
        assert int(h.payload["member"]["permissions"]) & (1 << 5)


async def test_dm_slash(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        h = await fd.send_slash(None, None, world["alice"], "secret")
        msg = await h.wait_original()
        assert msg["channel_id"] == fd.dm_channel_id(world["alice"])


async def test_injected_rate_limit_is_retried(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        fd.inject_error("POST", r"^/interactions/", 429)
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "secret")
        assert (await h.response())["type"] == 4
        statuses = [c.status for c in fd.calls if c.path.startswith("/interactions/")]
        assert statuses == [429, 200]


async def test_upload_limit_and_double_ack(fd: FakeDiscord, world: dict[str, int]) -> None:
    fd.attachment_size_limit = 100
    async with running(fd) as bot:
        h = await fd.send_slash(
            world["guild"],
            world["channel"],
            world["alice"],
            "echo",
            attachments={"image": ("a.bin", b"x" * 200)},
        )
        assert h.payload["attachment_size_limit"] == 100
        call = await fd.wait_for(lambda c: c.path.startswith("/webhooks/"))
        assert call.status == 413
        await fd.until(lambda: bot.errors, what="the upload error")
        assert h.original()["loading"]
        # a second acknowledgement is refused like on Discord
        url = f"{fd.api_base}/interactions/{h.id}/{h.token}/callback"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"type": 4, "data": {"content": "x"}}) as resp,
        ):
            assert resp.status == 400
            assert (await resp.json())["code"] == 40060


@pytest.mark.parametrize("members", [False, True])
async def test_members_intent_decides_cached_members(
    fd: FakeDiscord, world: dict[str, int], members: bool
) -> None:
    intents = discord.Intents.default()
    intents.members = members
    bot = StandinBot(intents)
    task = asyncio.create_task(bot.start(fd.token))
    try:
        await fd.wait_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        guild = bot.get_guild(world["guild"])
        assert guild is not None and guild.me is not None
        assert (guild.get_member(world["alice"]) is not None) is members
        assert guild.chunked is members
    finally:
        await bot.close()
        await asyncio.wait_for(task, 5)


async def test_reconnect_and_invalid_session(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd):
        await fd.request_reconnect()
        await fd.wait_resumed(1)
        fd.forget_sessions()
        await fd.disconnect(4000)
        await fd.until(lambda: fd.identify_count == 2, what="a new IDENTIFY")
        await fd.wait_ready()
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "secret")
        assert (await h.response())["type"] == 4
        assert fd.resume_count == 1
