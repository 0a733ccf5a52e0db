"""The bot's event loop: uvloop where installed (it is, on Linux and macOS, from the lock)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from bot import event_loop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_the_bot_runs_on_uvloop_where_it_is_installed() -> None:
    assert event_loop.run(_loop_module()).startswith("uvloop")


def test_without_uvloop_it_runs_on_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed
    assert event_loop.loop_factory() is None
    assert event_loop.run(_loop_module()).startswith("asyncio")


def test_the_bot_process_collects_garbage_less_often_and_freezes_what_it_started_with() -> None:
    """In a process of its own: freezing and the thresholds are process-wide."""
    code = (
        "import gc; from bot import event_loop; event_loop.tune_gc(); "
        "print(gc.get_threshold() == event_loop.GC_THRESHOLD, gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
