"""The bot with WORKER_BACKEND=redis holds no model: no torch import, a small process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_RSS_MB = 250  # discord.py, pydantic, redis, aiosqlite, Pillow: far below a model's size
# (current RSS: ru_maxrss of a child can still count the forking parent's pages)


def test_bot_process_with_the_redis_backend_holds_no_model() -> None:
    code = (
        "import sys, psutil\n"
        "import bot.__main__, bot.app, bot.jobs.backends.redis\n"
        "from config.settings import load_settings\n"
        "from bot.app import ImgBot\n"
        "bot = ImgBot(load_settings(worker_backend='redis', redis_url='redis://127.0.0.1:1/0'))\n"
        "backend = bot.worker_backend()\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "rss = psutil.Process().memory_info().rss // 1024\n"
        "print(json.dumps([type(backend).__name__, bad, rss]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    kind, bad, rss_kb = json.loads(run.stdout)
    assert (kind, bad) == ("RedisBackend", [])
    assert rss_kb < MAX_RSS_MB * 1024, f"{rss_kb // 1024} MB"
