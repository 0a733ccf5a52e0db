"""A second bot on a DATA_DIR that a running bot holds stops at start with one line naming
the holder, before it opens the database or loads a model."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from bot.jobs.data_dir_lock import DataDirLock
from tests.fakediscord import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]


async def test_a_second_bot_on_one_data_dir_stops_naming_the_first(
    fd: FakeDiscord, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = DataDirLock(data)  # this process stands for the running bot
    first.acquire()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DISCORD_TOKEN": fd.token,
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "DATA_DIR": str(data),
        "MODEL_ID": str(tmp_path / "never-loaded"),
        "DEVICE": "cpu",
    }
    try:
        run = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "bot"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        first.release()
    assert run.returncode == 1, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Another bot is already running on DATA_DIR")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in last
    assert not (data / "bot.sqlite3").exists() and "never-loaded" not in run.stderr
