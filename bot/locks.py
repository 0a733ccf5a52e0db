"""One asyncio lock per key (an album, a comparison), kept only while someone uses it.

A dict of locks that only grows leaks one entry per album or comparison ever shown; popping
an entry while another task waits on it lets a third task take a fresh lock and run beside
it. `KeyedLocks` counts holders and waiters and drops a key's lock when the count is zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        """Keys held or waited on now (0 when idle: nothing is kept)."""
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Run the block with `key`'s lock, one task at a time per key."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
