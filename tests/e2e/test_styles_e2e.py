"""Saved styles end to end: /style commands with permissions, /img2img style: against the
CLI, variants keeping the style, and styles surviving a restart."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bot.app import ImgBot
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    embed_fields,
    image_bytes,
    slash_img2img,
    wait_result,
)
from tests.fakediscord import FakeDiscord, InteractionHandle

ROOT = Path(__file__).resolve().parents[2]


async def private_text(handle: InteractionHandle) -> str:
    """The interaction's answer, which must be visible only to the user: its content and
    its embed's text (a style is shown as an embed)."""
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"], msg["content"]
    parts = [msg["content"] or ""]
    for embed in msg["embeds"]:
        parts += [embed.get("title") or "", embed.get("description") or ""]
        parts += [f"{f['name']}: {f['value']}" for f in embed.get("fields", [])]
    return "\n".join(parts)


async def style(fd: FakeDiscord, world: World, by: int, sub: str, /, **options: Any) -> str:
    handle = await fd.send_slash(world.guild, world.channel, by, f"style {sub}", options or None)
    return await private_text(handle)


async def choices(
    fd: FakeDiscord, world: World, by: int, command: str, options: dict[str, Any], focused: str
) -> list[str]:
    handle = await fd.send_autocomplete(
        world.guild, world.channel, by, command, options, focused=focused
    )
    return [c["value"] for c in (await handle.response())["data"]["choices"]]


async def job_count(bot: ImgBot) -> int:
    row = await (await bot.store.db.execute("SELECT COUNT(*) FROM jobs")).fetchone()
    return int(row[0])


async def test_style_commands_and_permissions(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    await make_bot()
    saved = await style(
        fd, world, world.alice, "save", name="Family-Oil", prompt="{prompt}, oil painting",
        negative_prompt="blurry", strength=0.6,
    )  # fmt: skip
    assert "Saved your style `family-oil`" in saved and "a cat, oil painting" in saved
    # a member cannot save a server style; a manager can
    refused = await style(
        fd, world, world.alice, "save", name="catalogue", prompt="white", scope="server"
    )
    assert "Manage Server" in refused
    assert "Saved the server style `catalogue`" in await style(
        fd, world, world.admin, "save", name="catalogue", prompt="clean white", scope="server"
    )
    assert "a–z, 0–9 and '-'" in await style(
        fd, world, world.alice, "save", name="oil painting!", prompt="oil"
    )

    alice_list = await style(fd, world, world.alice, "list")
    assert "`family-oil`" in alice_list and "`catalogue`" in alice_list
    assert "`oil-painting`" in alice_list and "(1 of 25)" in alice_list
    bob_list = await style(fd, world, world.bob, "list")
    assert "family-oil" not in bob_list and "`catalogue`" in bob_list

    shown = await style(fd, world, world.alice, "show", name="family-oil")
    assert "{prompt}, oil painting" in shown and "blurry" in shown and "0.60" in shown
    assert "/style list" in await style(fd, world, world.bob, "show", name="family-oil")

    # autocomplete: the member's, then the server's, then the built-ins
    assert await choices(fd, world, world.alice, "style show", {"name": "fa"}, "name") == [
        "family-oil"
    ]
    offered = await choices(
        fd, world, world.alice, "img2img", {"prompt": "a cat", "style": ""}, "style"
    )
    assert offered[:3] == ["family-oil", "catalogue", "oil-painting"]
    assert "family-oil" not in await choices(
        fd, world, world.bob, "img2img", {"prompt": "a cat", "style": ""}, "style"
    )

    assert "Manage Server" in await style(fd, world, world.alice, "delete", name="catalogue")
    assert "Deleted the server style" in await style(
        fd, world, world.admin, "delete", name="catalogue"
    )
    assert "Deleted your style" in await style(fd, world, world.alice, "delete", name="family-oil")
    assert "cannot be deleted" in await style(fd, world, world.alice, "delete", name="winter")
    assert "none yet" in await style(fd, world, world.alice, "list")
    fd.assert_no_unknown_routes()


async def run_cli(
    bot: ImgBot, image: Path, out: Path, *, prompt: str, negative: str, strength: float, seed: int
) -> None:
    """`python -m pipeline run` with the bot's model settings, without blocking the bot."""
    s = bot.settings
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "run", str(image), "--prompt", prompt,
        "--negative-prompt", negative, "--strength", str(strength), "--seed", str(seed),
        "--steps", str(s.default_steps), "--guidance", str(s.default_guidance),
        "--model", s.model_id, "--device", s.device, "--dtype", s.dtype,
        "--resolution", str(s.resolution), "--output", str(out),
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def test_img2img_style_matches_the_cli_with_the_composed_prompt(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make_bot()
    await style(
        fd, world, world.alice, "save", name="oily", prompt="{prompt}, oil painting, impressionist",
        negative_prompt="blurry", strength=0.6,
    )  # fmt: skip
    photo = image_bytes()

    # an unknown style is refused privately, naming it; nothing is queued
    unknown = await slash_img2img(fd, world.guild, world.channel, world.alice, style="nope")
    text = await private_text(unknown)
    assert "`nope`" in text and "/style list" in text
    assert await job_count(bot) == 0
    # a composed prompt past the limit is refused with a clear message
    long_prompt = "a cat " * 165  # 990 characters, fine alone
    too_long = await slash_img2img(
        fd, world.guild, world.channel, world.alice, long_prompt, style="oily"
    )
    assert "With the style `oily` the prompt would be" in await private_text(too_long)
    assert await job_count(bot) == 0

    # no strength given: the style's 0.6 applies
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a cat", data=photo, style="oily", seed=77
    )
    result = await wait_result(fd, handle)
    fields = embed_fields(result)
    assert fields["Prompt"] == "a cat, oil painting, impressionist"
    assert fields["Negative prompt"] == "blurry"
    assert fields["Strength"] == "0.60"
    assert fields["Style"] == "oily"
    job = await bot.store.get_job(1)
    assert job is not None and job.style == "oily"
    assert job.prompt == "a cat, oil painting, impressionist"

    source = tmp_path / "photo.png"
    source.write_bytes(photo)
    out = tmp_path / "cli.png"
    await run_cli(
        bot, source, out, prompt="a cat, oil painting, impressionist", negative="blurry",
        strength=0.6, seed=77,
    )  # fmt: skip
    bot_pixels = pixels(fd.attachment_bytes(result))
    assert np.array_equal(bot_pixels, pixels(out.read_bytes()))

    # a given strength wins over the style's, and a variant keeps the style
    given = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a cat", data=photo, style="oily",
        seed=77, strength=0.3, negative_prompt="text",
    )  # fmt: skip
    given_fields = embed_fields(await wait_result(fd, given))
    assert (given_fields["Strength"], given_fields["Negative prompt"]) == ("0.30", "text, blurry")
    variant = await fd.click(result["id"], button(result, "+0.15")["custom_id"], world.bob)
    variant_fields = embed_fields(await wait_result(fd, variant))
    assert variant_fields["Style"] == "oily"
    assert variant_fields["Prompt"] == "a cat, oil painting, impressionist"
    assert variant_fields["Strength"] == "0.75"


async def test_a_style_survives_a_restart(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    bot = await make_bot(wait_worker=False)
    await style(fd, world, world.admin, "save", name="winter-shop", prompt="snow", scope="server")
    await bot.close()

    await make_bot(wait_worker=False)
    shown = await style(fd, world, world.bob, "show", name="winter-shop")
    assert "winter-shop" in shown and "this server's" in shown
    assert "a cat, snow" in shown


async def test_a_style_at_the_length_limits_is_saved_and_shown_whole(
    fd: FakeDiscord, world: World, make_bot: BotFactory
) -> None:
    """A 1,000-character template and negative prompt (about 3,000 characters to show with
    the example): before, Discord refused the answer (50035) after the style was saved."""
    bot = await make_bot(wait_worker=False)
    template = ("{prompt}, " + "oil painting, impressionist, " * 40)[:999] + "!"
    negative = ("blurry, low quality, " * 60)[:1000]
    saved = await style(
        fd, world, world.alice, "save", name="long-look", prompt=template,
        negative_prompt=negative, strength=0.6,
    )  # fmt: skip
    assert "Saved your style `long-look`" in saved
    shown = await style(fd, world, world.alice, "show", name="long-look")
    assert f"Prompt: `{template}`" in shown and f"Negative prompt: `{negative}`" in shown
    assert "Example: “a cat” becomes “a cat, oil painting" in shown
    assert len(shown) > 2000  # more than one message could hold
    stored = await bot.styles.resolve(world.guild, world.alice, "long-look")
    assert stored is not None and stored.template == template
    assert all(b["status"] < 400 for b in fd.message_bodies())
