"""/help by topic through the stand-in, and the long lists that used to break Discord's
limits (/settings show and the channel refusal with a hundred channels and roles)."""

from __future__ import annotations

from typing import Any

from bot.app import ImgBot
from bot.cogs.settings import SettingsCog
from bot.limits import CONTENT
from bot.ui.help import TOPICS
from tests.e2e.conftest import BotFactory, World, slash_img2img, wait_result
from tests.fakediscord import FakeDiscord

SUBCOMMAND, GROUP = 1, 2
MESSAGE_MENU = 3


def command_names(commands: list[dict[str, Any]]) -> list[str]:
    """Every command as a member types it (`/settings blocked-words add`), and context menus
    by their name (`Img2img this`), from the commands the bot synced."""
    names: list[str] = []

    def walk(prefix: str, options: list[dict[str, Any]]) -> bool:
        subs = [o for o in options if o["type"] in (SUBCOMMAND, GROUP)]
        for sub in subs:
            if sub["type"] == GROUP:
                walk(f"{prefix} {sub['name']}", sub.get("options") or [])
            else:
                names.append(f"{prefix} {sub['name']}")
        return bool(subs)

    for command in commands:
        if command.get("type", 1) == MESSAGE_MENU:
            names.append(command["name"])
        elif not walk(f"/{command['name']}", command.get("options") or []):
            names.append(f"/{command['name']}")
    return names


def page_texts(msg: dict[str, Any]) -> str:
    embed = msg["embeds"][0]
    return "\n".join(
        [embed["title"], embed["description"], *(f["value"] for f in embed.get("fields", []))]
    )


async def test_help_by_topic_names_every_command_and_works_after_a_restart(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(wait_worker=False)
    handle = await fd.send_slash(world.guild, world.channel, world.alice, "help")
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"]
    assert msg["embeds"][0]["title"] == "👋 Start here"
    select = msg["components"][0]["components"][0]
    assert select["custom_id"] == "help:topic"
    assert [o["label"] for o in select["options"]] == [t.label for t in TOPICS]

    pages = {}
    for topic in TOPICS:
        click = await fd.click(msg["id"], "help:topic", world.alice, values=[topic.key])
        assert (await click.response())["type"] == 7  # the private answer is edited in place
        shown = await fd.until(
            lambda t=topic: (
                (m := fd.message(msg["id"]))["embeds"][0]["title"].endswith(t.label) and m
            ),
            what=f"the {topic.label} page",
        )
        chosen = [o["value"] for o in shown["components"][0]["components"][0]["options"]
                  if o.get("default")]  # fmt: skip
        assert chosen == [topic.key]
        pages[topic.key] = page_texts(shown)

    assert "lower the strength to 0.4–0.5" in pages["trouble"] and "512×512" in pages["trouble"]
    assert "Compare" in pages["start"] and "First time? Try this" in pages["start"]
    assert "Img2img this" in pages["result"] and "0.3–0.4" in pages["strength"]
    everything = "\n".join(pages.values())
    registered = command_names(fd.commands())
    assert "/settings blocked-words add" in registered and "Img2img this" in registered
    missing = [name for name in registered if name not in everything]
    assert missing == [], f"commands no /help page names: {missing}"

    # the menu is routed by its custom_id alone: it works on an answer from before a restart
    await bot.close()
    await make_bot(wait_worker=False)
    click = await fd.click(msg["id"], "help:topic", world.alice, values=["inpaint"])
    assert (await click.response())["type"] == 7
    await fd.until(lambda: fd.message(msg["id"])["embeds"][0]["title"] == "🖌️ Inpainting")


async def settings_of(bot: ImgBot) -> SettingsCog:
    cog = bot.get_cog("SettingsCog")
    assert isinstance(cog, SettingsCog)
    return cog


async def test_long_lists_of_channels_and_roles_stay_inside_the_limits(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """150 allowed channels and 60 role limits: /settings show and the refusal in another
    channel each list what fits and say how many more (before: 400 50035, no answer)."""
    bot = await make_bot(wait_worker=False)
    quotas = (await settings_of(bot)).quotas
    channels = [10**17 + i for i in range(150)]
    for channel in channels:
        await quotas.allow_channel(world.guild, world.admin, channel)
    for i in range(60):
        await quotas.set_role_limit(world.guild, world.admin, 2 * 10**17 + i, 3, False)

    handle = await fd.send_slash(world.guild, world.channel, world.admin, "settings show")
    shown = await handle.wait_original(lambda m: not m["loading"])
    text = shown["content"]
    assert shown["ephemeral"] and len(text) <= CONTENT
    assert f"<#{channels[0]}>" in text and f"<#{channels[-1]}>" not in text
    assert "more" in text.split("• Channels:")[1].split("\n")[0]
    assert "more roles" in text and "**Recent changes**" in text

    refused = await slash_img2img(fd, world.guild, world.channel, world.alice)
    answer = await refused.wait_original(lambda m: not m["loading"])
    assert answer["ephemeral"] and len(answer["content"]) <= CONTENT
    assert "can only be used in" in answer["content"] and "more." in answer["content"]
    row = await (await bot.store.db.execute("SELECT COUNT(*) FROM jobs")).fetchone()
    assert row[0] == 0  # refused before anything was queued or counted


async def test_help_and_settings_say_results_are_not_filtered(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """The tiny model ships no checker and none is found (SAFETY_CHECKER=auto): the job row
    records that its picture was not checked, and /help (every page) and /settings show
    say that results are not filtered, with this server's count."""
    bot = await make_bot()
    assert bot.jobs.engine_info is not None and bot.jobs.engine_info.safety_checker == "missing"
    result = await wait_result(fd, await slash_img2img(fd, world.guild, world.channel, world.bob))
    job_id = int(result["embeds"][0]["footer"]["text"].rsplit("#", 1)[1])
    job = await bot.store.get_job(job_id)
    assert job is not None and job.state == "done" and job.filtered == 0

    handle = await fd.send_slash(world.guild, world.channel, world.alice, "help")
    msg = await handle.wait_original(lambda m: not m["loading"])
    notice = {f["name"]: f["value"] for f in msg["embeds"][0]["fields"]}["⚠️ Right now"]
    assert "Results are not filtered" in notice
    assert "1 picture of this server in the last 24 h was not checked" in notice
    await fd.click(msg["id"], "help:topic", world.alice, values=["settings"])
    await fd.until(
        lambda: (
            fd.message(msg["id"])["embeds"][0]["title"].endswith("Settings")
            and fd.message(msg["id"])["embeds"][0]["fields"][0]["value"] == notice
        )
    )
    # the other server made nothing: its count is 0
    other = await fd.send_slash(world.guild2, world.channel2, world.dave, "help")
    other_msg = await other.wait_original(lambda m: not m["loading"])
    assert "0 pictures of this server" in other_msg["embeds"][0]["fields"][0]["value"]

    shown = await fd.send_slash(world.guild, world.channel, world.admin, "settings show")
    text = (await shown.wait_original(lambda m: not m["loading"]))["content"]
    assert "⚠️ Results are not filtered" in text
    assert "Not checked by a safety filter in the last 24 h: 1 image" in text
