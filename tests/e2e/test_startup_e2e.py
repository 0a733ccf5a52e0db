"""The start-up log as a new operator reads it (issue 25 item 14): `python -m bot` against
the stand-in with the tiny model; what was loaded, where, the invite URL, and warnings only
for things the operator can act on (no voice or torchvision lines)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.bot.test_startup import BotProcess
from tests.fakediscord import FakeDiscord

ACTIONABLE = (
    "NO SAFETY CHECKER",  # set SAFETY_CHECKER_ID or SAFETY_CHECKER=off
    "region masks are off",  # set MASK_MODEL_ID
)


async def test_start_up_log_says_what_where_and_the_invite_url(
    fd: FakeDiscord, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {
        "DISCORD_TOKEN": fd.token,
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "DATA_DIR": str(data),
        "MODEL_ID": str(tiny_model_dir),
        "DEVICE": "cpu",
        "RESOLUTION": "64",
    }
    bot = BotProcess(env, tmp_path)
    await asyncio.to_thread(bot.wait_for, "worker ready", 1, 120)
    started = list(bot.lines)
    assert await asyncio.to_thread(bot.interrupt) == 0
    text = "\n".join(started)

    for noise in ("PyNaCl", "davey", "voice", "torchvision", "Traceback", "EngineInfo("):
        assert noise not in text, noise
    assert f"database {data / 'bot.sqlite3'}: creating to schema version" in text
    assert "migrating database to version" not in text  # one line, not one per migration
    assert f"data in {data.resolve()}" in text
    assert "invite URL: https://discord.com/oauth2/authorize?client_id=" in text
    assert (
        f"worker ready: {tiny_model_dir} (StableDiffusionImg2ImgPipeline) on cpu/fp32, 64 px, "
        "safety checker missing" in text
    )
    warnings = [line for line in started if " WARNING " in line or " ERROR " in line]
    assert warnings and all(any(a in line for a in ACTIONABLE) for line in warnings), warnings
