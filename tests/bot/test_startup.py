"""Start-up while Discord cannot be reached (issue 25 item 13): one line naming the host and
the cause, retries with backoff, a clean stop on Ctrl-C while waiting; and the library lines
an operator cannot act on are dropped (item 14)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.startup import cause, endpoint, wait_for_discord
from pipeline.quiet import DropMessages, quiet_library_noise

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://discord.com/api/v10", ("discord.com", 443)),
        ("http://127.0.0.1:8123/api/v10", ("127.0.0.1", 8123)),
        ("http://proxy.internal/api", ("proxy.internal", 80)),
    ],
)
def test_endpoint(url: str, expected: tuple[str, int]) -> None:
    assert endpoint(url) == expected


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (socket.gaierror(-2, "Name or service not known"), "DNS lookup failed (Name or service"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (TimeoutError(), "no answer within 10 s"),
        (OSError(101, "Network is unreachable"), "network unreachable"),
    ],
)
def test_cause_in_plain_words(error: BaseException, words: str) -> None:
    assert cause(error).startswith(words)


async def test_waits_with_backoff_and_stops_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="bot.startup"):
        waiting = asyncio.create_task(
            wait_for_discord(f"http://127.0.0.1:{port}/api/v10", stop, first_delay=0.05)
        )
        while sum("still unreachable" in r.getMessage() for r in caplog.records) < 2:
            await asyncio.sleep(0.02)
        stop.set()
        assert await asyncio.wait_for(waiting, 5) is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"cannot reach Discord at 127.0.0.1:{port}: connection refused. Retrying with backoff "
        "until it answers (Ctrl-C to stop)."
    ]
    retries = [r.getMessage() for r in caplog.records if "still unreachable" in r.getMessage()]
    assert retries[:2] == [
        "Discord still unreachable (try 2: connection refused); next in 0 s",  # 0.1 s
        "Discord still unreachable (try 3: connection refused); next in 0 s",  # 0.2 s
    ]
    assert not any(r.exc_info for r in caplog.records)


async def test_goes_on_once_discord_answers(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="bot.startup"):
        waiting = asyncio.create_task(
            wait_for_discord(f"http://127.0.0.1:{port}/api/v10", stop, first_delay=0.05)
        )
        while not any(r.levelno == logging.WARNING for r in caplog.records):
            await asyncio.sleep(0.02)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        async with server:
            assert await asyncio.wait_for(waiting, 5) is True
    assert "Discord reachable at 127.0.0.1" in caplog.records[-1].getMessage()


class BotProcess:
    """`python -m bot` with stderr read as it comes, so a test can wait for a line."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("DISCORD_")}
        full.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "DISCORD_TOKEN": "unused"})
        full.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=cwd, env=full, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, words: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(words in line for line in self.lines) < count:
            assert self.proc.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, f"no {words!r} in:\n" + "\n".join(self.lines)
            time.sleep(0.05)

    def interrupt(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code


@pytest.mark.parametrize(
    ("api_base", "cause_words"),
    [
        ("http://127.0.0.1:{port}/api/v10", "connection refused"),
        ("http://discord.invalid/api/v10", "DNS lookup failed"),
    ],
)
def test_unreachable_discord_is_one_line_then_retries_and_ctrl_c_exits_cleanly(
    tmp_path: Path, api_base: str, cause_words: str
) -> None:
    url = api_base.format(port=closed_port())
    host, port = endpoint(url)
    bot = BotProcess({"DISCORD_API_BASE": url, "DATA_DIR": str(tmp_path / "data")}, tmp_path)
    bot.wait_for("still unreachable")  # the first retry, a second later
    assert bot.interrupt() == 0
    text = "\n".join(bot.lines)
    assert "Traceback" not in text and "ClientConnector" not in text
    warnings = [line for line in bot.lines if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == 1, text
    assert f"cannot reach Discord at {host}:{port}: {cause_words}" in warnings[0]
    assert "stopped while waiting for Discord" in text
    assert not (tmp_path / "data").exists()  # nothing was opened before Discord answered


def test_library_noise_is_dropped_and_other_warnings_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_library_noise()
    quiet_library_noise()  # twice: still one filter
    voice = logging.getLogger("discord.client")
    assert sum(isinstance(f, DropMessages) for f in voice.filters) == 1
    processors = logging.getLogger("transformers.utils.import_utils")
    for logger in (voice, processors):  # straight to the capture: transformers may not propagate
        logger.addHandler(caplog.handler)
    try:
        voice.warning("PyNaCl is not installed, voice will NOT be supported")
        voice.warning("davey is not installed, voice will NOT be supported")
        processors.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
            "`CLIPImageProcessorPil` for backward compatibility."
        )
        voice.warning("something else")
        processors.warning("another transformers warning")
    finally:
        for logger in (voice, processors):
            logger.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("something else") >= 1
    assert messages.count("another transformers warning") >= 1
    assert not [m for m in messages if "voice will NOT" in m or "requires torchvision" in m]
