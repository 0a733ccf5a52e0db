"""One scheduler per Valkey namespace: a lock with a TTL and a fencing token.

Two bots granting from one namespace would each keep their own fair queue and hand workers
more than they can run. The bot that holds `…:scheduler` (SET NX with a TTL, refreshed
three times per TTL) is the scheduler; a second one stops at start, naming the holder.
Each acquisition draws a fencing token (INCR `…:scheduler:token`) that every grant carries;
a worker compares it with the current token and refuses a grant from a bot that lost the
lock (paused past its TTL, cut off from the server) instead of running it beside the new
scheduler's grants.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

import redis.asyncio as aioredis

from pipeline import stream_codec as codec

log = logging.getLogger(__name__)

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class SchedulerLock:
    """This bot's claim on the namespace; `token` is 0 until it is held."""

    def __init__(self, keys: codec.Keys, epoch: str, ttl_s: float) -> None:
        self.keys = keys
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.value = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "epoch": epoch, "since": time.time()}
        )
        self.token = 0
        self.held = False

    async def acquire(self, r: aioredis.Redis) -> str | None:
        """Take the lock if it is free (or ours); None, or who holds it."""
        if await r.set(self.keys.scheduler, self.value, nx=True, px=self.ttl_ms):
            self.token = int(await r.incr(self.keys.scheduler_token))
            self.held = True
            log.info("this bot is the scheduler of %s (token %d)", self.keys.prefix, self.token)
            return None
        holder = await r.get(self.keys.scheduler)
        if holder is None:
            return await self.acquire(r)  # expired just now
        text = holder.decode() if isinstance(holder, bytes) else str(holder)
        if text == self.value:
            self.held = True
            return None
        return describe(text)

    async def acquire_or_wait(self, r: aioredis.Redis) -> str | None:
        """Take the lock, waiting up to one TTL for a holder that stopped without letting
        it go (a crash); None, or who still holds it."""
        deadline = time.monotonic() + self.ttl_ms / 1000 + 0.5
        while True:
            holder = await self.acquire(r)
            if holder is None or time.monotonic() > deadline:
                return holder
            await asyncio.sleep(min(1.0, self.ttl_ms / 4000))

    async def refresh(self, r: aioredis.Redis) -> str | None:
        """Keep the lock (or take it again after a server restart emptied it); None, or
        who holds it now (this bot lost it and must not grant)."""
        if self.held and await r.eval(_REFRESH, 1, self.keys.scheduler, self.value, self.ttl_ms):  # type: ignore[misc]
            return None
        was = self.held
        self.held = False
        holder = await self.acquire(r)
        if holder is not None and was:
            log.error("lost the scheduler lock to %s: this bot grants nothing more", holder)
        return holder

    async def release(self, r: aioredis.Redis) -> None:
        if self.held:
            await r.eval(_RELEASE, 1, self.keys.scheduler, self.value)  # type: ignore[misc]
            self.held = False


def describe(raw: str) -> str:
    """The holder, in words, from the lock's value."""
    try:
        data = json.loads(raw)
        return f"the bot on host {data['host']} (pid {data['pid']}, epoch {data['epoch']})"
    except (ValueError, KeyError, TypeError):
        return repr(raw)
