"""End-to-end harness: the real `ImgBot` (discord.py client, SQLite store, worker process
with the tiny model) against the local Discord stand-in in `tests.fakediscord`.

Fixtures:
- `fd`: a started `FakeDiscord` (heartbeats every 250 ms);
- `world`: two guilds with a channel each and members with different permissions;
- `make_bot(**settings)`: starts an `ImgBot` against `fd` and waits until it is connected,
  has synced its commands and its worker is ready; every bot is closed at teardown;
- helpers `image_bytes`, `slash_img2img`, `wait_result`, `wait_status` for the usual steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.app import ImgBot, configure_endpoints
from config import Settings
from tests.fakediscord import FakeDiscord, InteractionHandle, Upload

ROOT = Path(__file__).resolve().parents[2]

MANAGE_MESSAGES = 1 << 13
MANAGE_GUILD = 1 << 5

BOT_START_TIMEOUT = 120.0
JOB_TIMEOUT = 120.0


@dataclass
class World:
    guild: int
    channel: int
    guild2: int
    channel2: int
    alice: int
    bob: int
    carol: int
    mod: int
    admin: int
    dave: int  # member of guild2 only


@pytest_asyncio.fixture
async def fd() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(heartbeat_interval=250) as stand_in:
        yield stand_in


@pytest.fixture
def world(fd: FakeDiscord) -> World:
    guild = fd.add_guild("Painters")
    channel = fd.add_channel(guild, "art")
    guild2 = fd.add_guild("Sketchers")
    channel2 = fd.add_channel(guild2, "sketches")
    users = {name: fd.add_user(name) for name in ("alice", "bob", "carol", "mod", "admin", "dave")}
    for name in ("alice", "bob", "carol"):
        fd.add_member(guild, users[name])
    fd.add_member(guild, users["mod"], permissions=MANAGE_MESSAGES)
    fd.add_member(guild, users["admin"], permissions=MANAGE_GUILD | MANAGE_MESSAGES)
    fd.add_member(guild2, users["dave"])
    fd.add_member(guild2, users["alice"])
    return World(guild, channel, guild2, channel2, **users)


BotFactory = Callable[..., Awaitable[ImgBot]]


@pytest_asyncio.fixture
async def make_bot(
    fd: FakeDiscord, tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[BotFactory]:
    bots: list[tuple[ImgBot, asyncio.Task[None]]] = []

    async def start(*, wait_worker: bool = True, **overrides: Any) -> ImgBot:
        values: dict[str, Any] = {
            "discord_token": fd.token,
            "discord_api_base": fd.api_base,
            "discord_gateway_url": fd.gateway_url,
            "model_id": str(tiny_model_dir),
            "device": "cpu",
            "resolution": 128,
            "default_steps": 4,
            "data_dir": tmp_path / "data",
            "progress_interval_s": 0.2,
            "max_batch": 1,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        configure_endpoints(settings)
        bot = ImgBot(settings, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(fd.token))
        bots.append((bot, task))
        await asyncio.wait_for(bot.wait_until_ready(), BOT_START_TIMEOUT)
        if wait_worker:
            await asyncio.wait_for(bot.jobs.ready.wait(), BOT_START_TIMEOUT)
            assert bot.jobs.fatal is None, bot.jobs.fatal
        return bot

    yield start
    await fd.settle()
    for bot, task in bots:
        if not bot.is_closed():
            await bot.close()
        await asyncio.gather(task, return_exceptions=True)


def image_bytes(width: int = 320, height: int = 256, fmt: str = "PNG") -> bytes:
    """A small photo-like picture: gradients, so the model has something to keep."""
    image = Image.new("RGB", (width, height))
    pixels = image.load()
    assert pixels is not None
    for x in range(width):
        for y in range(height):
            pixels[x, y] = (x * 255 // width, y * 255 // height, (x + y) % 256)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


async def slash_img2img(
    fd: FakeDiscord,
    guild: int,
    channel: int,
    user: int,
    prompt: str = "a watercolor fox",
    *,
    data: bytes | None = None,
    size: int | None = None,
    validate: bool = True,
    **options: Any,
) -> InteractionHandle:
    upload = Upload(
        "photo.png", data if data is not None else image_bytes(), "image/png", size=size
    )
    return await fd.send_slash(
        guild,
        channel,
        user,
        "img2img",
        {"prompt": prompt, **options},
        attachments={"image": upload},
        validate=validate,
    )


def status_message(fd: FakeDiscord, handle: InteractionHandle) -> dict[str, Any] | None:
    """The public message that shows a job's place/progress (and later becomes its result)."""
    for msg in fd.messages(include_deleted=True):
        if msg["interaction_token"] == handle.token and not msg["ephemeral"]:
            return msg
    return None


async def wait_result(
    fd: FakeDiscord, handle: InteractionHandle, timeout: float = JOB_TIMEOUT
) -> dict[str, Any]:
    """The result message of the job started by `handle` (an edit, a reply or a post)."""

    def find() -> dict[str, Any] | None:
        for msg in fd.messages():
            if (
                msg["attachments"]
                and msg["embeds"]
                and (
                    msg["interaction_token"] == handle.token or _job_of(msg) in _jobs_of(fd, handle)
                )
            ):
                return msg
        return None

    return await fd.until(find, timeout=timeout, what="the job's result message")


def _job_of(msg: dict[str, Any]) -> str | None:
    footer = (msg["embeds"][0].get("footer") or {}).get("text", "")
    return footer.rsplit("#", 1)[-1] if "#" in footer else None


def _jobs_of(fd: FakeDiscord, handle: InteractionHandle) -> set[str]:
    """Job ids named in the messages that belong to this interaction."""
    ids: set[str] = set()
    for msg in fd.messages(include_deleted=True):
        if msg["interaction_token"] != handle.token:
            continue
        for text in [msg["content"], *(h.get("content") or "" for h in msg["history"])]:
            if text and text.startswith("#"):
                ids.add(text[1:].split(" ", 1)[0])
    return ids


def embed_fields(msg: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["value"] for f in msg["embeds"][0]["fields"]}


def buttons(msg: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for row in msg["components"] for c in row["components"]]


def button(msg: dict[str, Any], label_start: str) -> dict[str, Any]:
    return next(b for b in buttons(msg) if b.get("label", "").startswith(label_start))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until an async check of the bot's own state passes (it trails the wire)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def worker_paused(bot: ImgBot) -> Iterator[None]:
    """Freeze the worker process (SIGSTOP) so the queue can be arranged without racing it;
    the bot itself keeps running, as it would while a real GPU is busy."""
    pid = bot.jobs.worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def cli_pixels(bot: ImgBot, command: str, image: bytes, tmp: Path, *args: str) -> np.ndarray:
    """`python -m pipeline COMMAND` on these PNG bytes with the bot's model settings (and
    `args`): the pixels the bot's own result must equal."""
    source, out = tmp / f"cli-in-{len(args)}.png", tmp / f"cli-out-{len(args)}.png"
    source.write_bytes(image)
    s = bot.settings
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", command, str(source),
        "--steps", str(s.default_steps), "--guidance", str(s.default_guidance),
        "--model", s.model_id, "--device", s.device, "--dtype", s.dtype,
        "--resolution", str(s.resolution), "--output", str(out), *args,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "MIN_INPUT_SIDE": "8"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return pixels(out.read_bytes())
