"""Self-tests of the newer stand-in API: channel visibility, threads, message commands,
modals (rows, Labels, file uploads), allowed mentions, channel edits, the 3 s deadline and
body validation against Discord's OpenAPI spec; all through the real discord.py client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord.ext import commands

from tests.fakediscord import FakeDiscord, Upload

pytestmark = pytest.mark.e2e


class RowForm(discord.ui.Modal, title="Refine"):
    """Text inputs the classic way (each wrapped in an action row by discord.py)."""

    prompt: discord.ui.TextInput = discord.ui.TextInput(label="Prompt", default="a fox")
    strength: discord.ui.TextInput = discord.ui.TextInput(label="Strength", required=False)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        where = interaction.message.id if interaction.message is not None else None
        await interaction.response.send_message(
            f"{self.prompt.value}|{self.strength.value}|{where}", ephemeral=True
        )


class LabelForm(discord.ui.Modal, title="Img2img this"):
    """Text inputs and a file upload inside Label components (type 18)."""

    def __init__(self, target: discord.Message) -> None:
        super().__init__()
        self.target = target
        self.prompt = discord.ui.TextInput(custom_id="prompt", max_length=20)
        self.upload = discord.ui.FileUpload(custom_id="extra", required=False, max_values=2)
        self.add_item(discord.ui.Label(text="Prompt", component=self.prompt))
        self.add_item(discord.ui.Label(text="Extra image", component=self.upload))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        files = [a.filename for a in self.upload.values]
        target = ",".join(a.filename for a in self.target.attachments)
        await interaction.response.send_message(f"{self.prompt.value}|{files}|{target}")


class MoreBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(
            command_prefix="!",
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.seen: dict[str, Any] = {}
        self.errors: list[BaseException] = []
        self.delay = 0.0

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s wait before a re-IDENTIFY against the stand-in."""

    async def setup_hook(self) -> None:
        tree = self.tree

        @tree.command(name="where", description="Describe the channel")
        async def where(interaction: discord.Interaction) -> None:
            channel = interaction.channel
            guild = interaction.guild
            assert guild is not None and channel is not None
            cached = guild.get_channel_or_thread(channel.id)
            self.seen["where"] = {
                "cached": cached is not None,
                "type": channel.type.value,
                "nsfw": cached.is_nsfw() if cached is not None else None,
                "everyone_view": cached.permissions_for(guild.default_role).view_channel
                if cached is not None
                else None,
                "parent": getattr(cached, "parent_id", None),
                "perms_view": interaction.permissions.view_channel,
            }
            await interaction.response.send_message("here", ephemeral=True)

        @tree.command(name="ping", description="Echo text")
        async def ping(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send(text)
            msg = await interaction.original_response()
            await msg.edit(content=text + " (edited)")
            pinged = discord.AllowedMentions(users=[interaction.user])
            await interaction.channel.send(
                f"{interaction.user.mention} done",  # type: ignore[union-attr]
                allowed_mentions=pinged,
            )

        @tree.command(name="stale", description="Edit and delete through the channel routes")
        async def stale(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("Starting…")
            original = await interaction.original_response()
            followup = await interaction.followup.send("second", wait=True)
            channel = interaction.channel
            assert isinstance(channel, discord.TextChannel | discord.Thread)
            self.seen["stale_ids"] = (original.id, followup.id)
            await asyncio.sleep(0)
            await channel.get_partial_message(original.id).edit(content="Finished", view=None)
            await channel.get_partial_message(followup.id).delete()
            dm = await interaction.user.create_dm()
            await dm.send("your result is ready")

        @tree.command(name="slow", description="Acknowledges late")
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(self.delay)
            try:
                await interaction.response.send_message("late")
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command(name="refine", description="A modal from a button")
        async def refine(interaction: discord.Interaction) -> None:
            view = discord.ui.View(timeout=None)
            button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
                label="Refine", custom_id="refine"
            )

            async def clicked(click: discord.Interaction) -> None:
                await click.response.send_modal(RowForm())

            button.callback = clicked  # type: ignore[method-assign]
            view.add_item(button)
            await interaction.response.send_message("result", view=view)

        @tree.command(name="badmodal", description="A modal title Discord refuses")
        async def badmodal(interaction: discord.Interaction) -> None:
            modal = RowForm(title="x" * 60)
            try:
                await interaction.response.send_modal(modal)
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.context_menu(name="Img2img this")
        async def img2img_this(interaction: discord.Interaction, message: discord.Message) -> None:
            self.seen["target"] = {
                "id": message.id,
                "author": message.author.id,
                "attachments": [(a.filename, a.size) for a in message.attachments],
                "embeds": [e.image.url for e in message.embeds],
            }
            if not message.attachments and not message.embeds:
                await interaction.response.send_message("no image", ephemeral=True)
                return
            await interaction.response.send_modal(LabelForm(message))

        await tree.sync()


@contextlib.asynccontextmanager
async def running(fd: FakeDiscord) -> AsyncIterator[MoreBot]:
    bot = MoreBot()
    task = asyncio.create_task(bot.start(fd.token))
    try:
        await fd.wait_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        await fd.until(lambda: fd.command("Img2img this"), what="command sync")
        yield bot
        await fd.settle()
    finally:
        await bot.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


def png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(out, format="PNG")
    return out.getvalue()


async def test_nsfw_hidden_channels_and_threads(fd: FakeDiscord, world: dict[str, int]) -> None:
    g, alice = world["guild"], world["alice"]
    adult = fd.add_channel(g, "adult", nsfw=True)
    private = fd.add_channel(g, "staff", hidden=True)
    async with running(fd) as bot:
        thread = fd.add_thread(adult, "fox ideas")
        secret = fd.add_thread(world["channel"], "side", private=True)
        await fd.until(lambda: bot.get_channel(thread) and bot.get_channel(secret), what="threads")
        active = await bot.get_guild(g).active_threads()  # type: ignore[union-attr]
        assert {t.id for t in active} == {thread, secret}

        await (await fd.send_slash(g, adult, alice, "where")).response()
        assert bot.seen["where"] == {
            "cached": True,
            "type": 0,
            "nsfw": True,
            "everyone_view": True,
            "parent": None,
            "perms_view": True,
        }
        await (await fd.send_slash(g, thread, alice, "where")).response()
        assert bot.seen["where"]["type"] == 11 and bot.seen["where"]["parent"] == adult
        assert bot.seen["where"]["nsfw"] is True  # threads follow their parent
        await (await fd.send_slash(g, secret, alice, "where")).response()
        assert bot.seen["where"]["type"] == 12

        with pytest.raises(PermissionError):  # alice cannot see the private channel
            await fd.send_slash(g, private, alice, "where")
        fd.allow_channel_view(private, alice)  # CHANNEL_UPDATE, before the next interaction
        assert fd.channel_permissions(private, alice) & (1 << 10)
        await (await fd.send_slash(g, private, alice, "where")).response()
        assert bot.seen["where"]["everyone_view"] is False
        assert bot.seen["where"]["perms_view"] is True


async def test_message_command_on_member_photo_with_label_modal(
    fd: FakeDiscord, world: dict[str, int]
) -> None:
    g, ch, alice = world["guild"], world["channel"], world["alice"]
    async with running(fd) as bot:
        cmd = fd.command("Img2img this")
        assert cmd is not None and cmd["type"] == 3
        photo = fd.upload_message(ch, alice, "look", files=[("cat.png", png(), "image/png")])
        assert photo["attachments"][0]["filename"] == "cat.png"
        h = await fd.send_message_command(g, ch, alice, "Img2img this", photo["id"])
        assert h.payload["data"]["target_id"] == str(photo["id"])
        modal = await h.wait_modal()
        assert modal["title"] == "Img2img this"
        assert [c["type"] for c in modal["components"]] == [18, 18]
        assert set(h.modal_inputs()) == {"Prompt", "Extra image"}
        assert bot.seen["target"]["attachments"] == [("cat.png", len(png()))]
        assert bot.seen["target"]["author"] == alice

        with pytest.raises(ValueError):  # longer than max_length 20
            await fd.submit_modal(h, {"Prompt": "x" * 21})
        with pytest.raises(LookupError):
            await fd.submit_modal(h, {"Prompt": "ok", "Nope": "x"})
        sub = await fd.submit_modal(
            h, {"Prompt": "watercolor", "Extra image": [Upload("a.png", png(), "image/png")]}
        )
        msg = await sub.wait_original()
        assert msg["content"] == "watercolor|['a.png']|cat.png"

        plain = fd.upload_message(ch, alice, "just words")
        h2 = await fd.send_message_command(g, ch, alice, "Img2img this", plain["id"])
        reply = await h2.wait_original()
        assert reply["ephemeral"] and reply["content"] == "no image"


async def test_modal_from_button_carries_message(fd: FakeDiscord, world: dict[str, int]) -> None:
    g, ch, alice = world["guild"], world["channel"], world["alice"]
    async with running(fd):
        h = await fd.send_slash(g, ch, alice, "refine")
        msg = await h.wait_original()
        click = await fd.click(msg["id"], "refine", alice)
        await click.wait_modal()
        inputs = click.modal_inputs()
        assert inputs["Prompt"]["value"] == "a fox"  # prefilled
        sub = await fd.submit_modal(click, {"Strength": "0,3"})  # Prompt keeps its default
        assert sub.payload["message"]["id"] == str(msg["id"])
        answer = await sub.wait_original()
        assert answer["content"] == f"a fox|0,3|{msg['id']}"


async def test_allowed_mentions_recorded_for_every_message_body(
    fd: FakeDiscord, world: dict[str, int]
) -> None:
    g, ch, alice = world["guild"], world["channel"], world["alice"]
    async with running(fd):
        h = await fd.send_slash(g, ch, alice, "ping", {"text": "@everyone hi"})
        await fd.until(lambda: len(fd.message_bodies()) >= 3, what="three message bodies")
        await fd.settle()
        bodies = fd.message_bodies()
        kinds = [(b["method"], b["path"].split("/")[1]) for b in bodies]
        assert kinds == [("POST", "webhooks"), ("PATCH", "webhooks"), ("POST", "channels")]
        for b in bodies:
            assert b["allowed_mentions"] is not None and b["allowed_mentions"]["parse"] == []
        assert [int(u) for u in bodies[-1]["allowed_mentions"]["users"]] == [alice]
        assert h.original()["content"] == "@everyone hi (edited)"


async def test_channel_edit_delete_of_interaction_messages_and_dm(
    fd: FakeDiscord, world: dict[str, int]
) -> None:
    g, ch, alice = world["guild"], world["channel"], world["alice"]
    async with running(fd) as bot:
        h = await fd.send_slash(g, ch, alice, "stale")
        await fd.until(lambda: fd.messages(fd.dm_channel_id(alice)), what="the DM")
        original_id, followup_id = bot.seen["stale_ids"]
        original = fd.message(original_id)
        assert original is not None and original["content"] == "Finished"
        assert original["interaction_token"] == h.token
        deleted = fd.message(followup_id)
        assert deleted is not None and deleted["deleted"]
        assert fd.messages(fd.dm_channel_id(alice))[0]["content"] == "your result is ready"
        dm = fd.dm_channel_id(alice)
        routes = [(b["method"], b["path"].split("/")[1]) for b in fd.message_bodies()]
        assert routes == [
            ("POST", "interactions"),  # callback type 4: its data is the message
            ("POST", "webhooks"),
            ("PATCH", "channels"),
            ("POST", "channels"),
        ]
        assert fd.message_bodies()[-1]["path"] == f"/channels/{dm}/messages"
        assert all(b["allowed_mentions"] == {"parse": []} for b in fd.message_bodies())
        # the bot may not delete a member's message without Manage Messages
        theirs = fd.upload_message(ch, alice, "mine")
        channel = bot.get_channel(ch)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.Forbidden):
            await channel.get_partial_message(theirs["id"]).delete()


async def test_late_ack_is_unknown_interaction(fd: FakeDiscord, world: dict[str, int]) -> None:
    fd.ack_deadline = 0.3  # Discord's is 3 s; shorter here to keep the test quick
    async with running(fd) as bot:
        bot.delay = 0.5
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "slow")
        await fd.until(lambda: bot.errors, what="the late callback's error")
        err: Any = bot.errors[0]
        assert isinstance(err, discord.NotFound) and err.code == 10062
        assert [a["name"] for a in fd.late_acks()] == ["slow"]
        assert h.response_now() is None
        with pytest.raises(AssertionError, match="3 s deadline"):
            fd.assert_acks_in_time()
        bot.delay = 0.0
        ok = await fd.send_slash(world["guild"], world["channel"], world["alice"], "slow")
        assert (await ok.response())["type"] == 4
    fd.strict = False  # the late ack was the point


async def test_schema_rejects_what_discord_refuses(fd: FakeDiscord, world: dict[str, int]) -> None:
    async with running(fd) as bot:
        assert fd.invalid_bodies() == []  # command sync and login bodies pass the spec
        h = await fd.send_slash(world["guild"], world["channel"], world["alice"], "badmodal")
        await fd.until(lambda: bot.errors, what="the refused modal")
        err: Any = bot.errors[0]
        assert isinstance(err, discord.HTTPException) and (err.status, err.code) == (400, 50035)
        bad = fd.invalid_bodies()
        assert len(bad) == 1 and bad[0]["path"].endswith("/callback")
        assert any("title" in e for e in bad[0]["errors"]), bad[0]["errors"]
        assert h.modal is None
        with pytest.raises(AssertionError, match="Discord would refuse"):
            fd.assert_valid_bodies()
    fd.strict = False


def test_spec_relaxed_only_for_int_snowflakes_and_channel_type_16() -> None:
    from tests.fakediscord import schema

    ok = {"content": "hi", "allowed_mentions": {"parse": [], "users": [123, "456"]}}
    assert schema.validate_body("POST", "/channels/1/messages", ok)[1] == []
    bad = {"content": "hi", "allowed_mentions": {"parse": [], "users": ["abc"]}}
    assert schema.validate_body("POST", "/channels/1/messages", bad)[1]
    option = {"type": 7, "name": "where", "description": "d", "channel_types": [0, 16]}
    cmd = [{"name": "go", "description": "d", "type": 1, "options": [option]}]
    assert schema.validate_body("PUT", "/applications/1/commands", cmd)[1] == []
    option["channel_types"] = [17]
    assert schema.validate_body("PUT", "/applications/1/commands", cmd)[1]
    # other strictness stays: a 2001-character content is refused
    long = {"content": "x" * 2001}
    route, errors = schema.validate_body("PATCH", "/webhooks/1/t/messages/@original", long)
    assert route == "/webhooks/{webhook_id}/{webhook_token}/messages/@original"
    assert [schema.describe(e) for e in errors] == [
        "content: Must be 2000 or fewer in length (got 2001)."
    ]
