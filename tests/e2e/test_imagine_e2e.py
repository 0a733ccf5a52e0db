"""/imagine end to end: the bot's picture equals `python -m pipeline imagine`, its buttons
(no −/+ and no Compare; Vary), Vary's three pictures with Use, and Edit, after a restart."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bot.app import ImgBot
from tests.e2e.conftest import BotFactory, World, button, buttons, embed_fields, wait_result
from tests.e2e.test_iterate_e2e import job_count, open_modal, pixels, private_text
from tests.fakediscord import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]


async def imagine_cli(bot: ImgBot, tmp: Path, *, prompt: str, negative: str, seed: int,
                      aspect: str) -> np.ndarray:  # fmt: skip
    """`python -m pipeline imagine` with the bot's model settings."""
    out = tmp / f"imagine-{seed}.png"
    s = bot.settings
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "imagine", "--prompt", prompt,
        "--negative-prompt", negative, "--seed", str(seed), "--aspect", aspect,
        "--steps", str(s.default_steps), "--guidance", str(s.default_guidance),
        "--model", s.model_id, "--device", s.device, "--dtype", s.dtype,
        "--resolution", str(s.resolution), "--output", str(out),
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return pixels(out.read_bytes())


def labels(msg: dict[str, Any]) -> list[list[str]]:
    return [[b["label"] for b in row["components"]] for row in msg["components"]]


async def test_imagine_equals_the_cli_and_vary_use_and_edit_work_after_a_restart(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make_bot()
    blank = await fd.send_slash(world.guild, world.channel, world.alice, "imagine",
                                {"prompt": "   "})  # fmt: skip
    assert "The prompt is empty" in await private_text(blank)
    assert await job_count(bot) == 0

    handle = await fd.send_slash(
        world.guild, world.channel, world.alice, "imagine",
        {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "seed": 21, "aspect": "4:3"},
    )  # fmt: skip
    base = await wait_result(fd, handle)
    fields = embed_fields(base)
    assert (fields["Prompt"], fields["Seed"], fields["Size"]) == ("a lighthouse at dusk", "21",
                                                                   "128×96")  # fmt: skip
    assert "Strength" not in fields
    assert labels(base) == [
        ["Reroll", "Delete"],
        ["Refine", "Edit", "Inpaint", "Vary", "Upscale ×2"],
    ]
    picture = pixels(fd.attachment_bytes(base))
    assert picture.shape == (96, 128, 3)
    expected = await imagine_cli(bot, tmp_path, prompt="a lighthouse at dusk", negative="fog",
                                 seed=21, aspect="4:3")  # fmt: skip
    assert np.array_equal(picture, expected)
    job = await bot.store.get_job(1)
    assert job is not None and (job.mode, job.input_path, job.strength) == ("txt2img", "", 1.0)
    await bot.close()

    bot = await make_bot()
    click = await fd.click(base["id"], button(base, "Vary")["custom_id"], world.bob)
    varied = await fd.until(
        lambda: (m := click.original()) and len(m["attachments"]) == 3 and m["components"] and m,
        timeout=180,
        what="Vary's three pictures",
    )
    assert not varied["ephemeral"]
    assert varied["content"].startswith("🔀 Variations of #1 at strengths 0.35 · 0.50 · 0.65")
    assert [b["label"] for b in buttons(varied)] == ["Use 0.35", "Use 0.50", "Use 0.65"]
    kids = [await bot.store.get_job(i) for i in (2, 3, 4)]
    assert [(j.kind, j.parent_id, j.seed, j.strength, j.mode) for j in kids if j] == [
        ("vary", 1, 21, s, "img2img") for s in (0.35, 0.5, 0.65)
    ]
    assert all(j and j.input_path.startswith("inputs/") for j in kids)  # the base, copied
    assert not np.array_equal(pixels(fd.attachment_bytes(varied, 0)), picture)

    count = await job_count(bot)
    use = await fd.click(varied["id"], button(varied, "Use 0.50")["custom_id"], world.carol)
    posted = await use.wait_original()
    assert embed_fields(posted)["Strength"] == "0.50"
    assert labels(posted)[1][:4] == ["Refine", "Edit", "Compare", "Inpaint"]  # an img2img result
    assert await job_count(bot) == count

    edit = await open_modal(fd, base, "Edit", world.alice)
    submit = await fd.submit_modal(edit, {"Prompt": "a lighthouse at noon", "Strength": "0.4"})
    edited = await wait_result(fd, submit)
    fields = embed_fields(edited)
    assert (fields["Prompt"], fields["Size"]) == ("a lighthouse at noon", "128×96")
    assert labels(edited)[1][-2] == "Vary"
    job = await bot.store.get_job(count + 1)
    assert job is not None and (job.kind, job.mode, job.strength) == ("edit", "txt2img", 1.0)
    await open_modal(fd, base, "Inpaint", world.bob)  # Inpaint starts from the base picture
    fd.assert_no_unknown_routes()
