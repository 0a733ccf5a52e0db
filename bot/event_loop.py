"""The bot's event loop: uvloop where it is installed (Linux and macOS), else asyncio's own.

The bot's work is mostly small exchanges (Discord's HTTP, Redis, SQLite's thread), so the
loop's own cost is a large part of it: the fleet benchmark measured the bot's CPU per job
about 12 % lower on uvloop, whose transports and scheduling are C (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, or None (asyncio's default) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop above."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
