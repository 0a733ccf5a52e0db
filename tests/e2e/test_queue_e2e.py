"""/queue shows a running job's prompt only where the gallery would show it (issue 25 item 1)."""

from __future__ import annotations

from tests.e2e.conftest import BotFactory, World, slash_img2img
from tests.fakediscord import FakeDiscord

SECRET = "a secret nsfw channel prompt"


async def test_queue_hides_a_prompt_from_an_age_restricted_channel(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot()
    after_dark = fd.add_channel(world.guild, "after-dark", nsfw=True)
    # a long job (cancelled with the bot at teardown), so it is still running when asked
    await slash_img2img(fd, world.guild, after_dark, world.bob, SECRET, steps=150, strength=1.0)
    await fd.until(lambda: bot.jobs.queue.running, what="the job to run")

    asker = await fd.send_slash(world.guild, world.channel, world.alice, "queue")
    seen = (await asker.wait_original())["content"]
    assert "secret" not in seen and "🎨 Now: a job in another channel" in seen, seen

    there = await fd.send_slash(world.guild, after_dark, world.alice, "queue")
    assert SECRET in (await there.wait_original())["content"]  # its own channel shows it
    owner = await fd.send_slash(world.guild, world.channel, world.bob, "queue")
    assert f"{SECRET}” (yours)" in (await owner.wait_original())["content"]
