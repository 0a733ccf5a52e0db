"""FakeDiscord: the stand-in server, run in its own thread with its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .gateway import ConnectionInfo, Gateway
from .interactions import InteractionRecord
from .messages import MessageStore
from .recording import Call, Recording, _Injected
from .rest import RestApi
from .senders import Senders
from .world import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    Snowflakes,
    World,
)
from .worldapi import WorldApi

log = logging.getLogger(__name__)

APP_FLAGS = (1 << 15) | (1 << 19) | (1 << 23)  # members/content intents limited, command badge


@dataclass
class _Waiters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    items: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)


class FakeDiscord(WorldApi, Recording, Senders):
    """A local Discord: REST under ``api_base``, the gateway at ``gateway_url``.

    See the package docstring for the full API. This module holds the lifetime, the
    gateway side and waiting; ``worldapi``, ``recording`` and ``senders`` the rest.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        bot_name: str = "TestBot",
        bot_user_id: int | None = None,
        application_id: int | None = None,
        heartbeat_interval: int = 41250,
        attachment_size_limit: int = 10 * 1024 * 1024,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.heartbeat_interval = heartbeat_interval  # ms, read at each new connection
        self.ack_heartbeats = True  # False: heartbeats go unanswered (zombie connection)
        self.dispatch_message_events = True  # MESSAGE_CREATE/UPDATE/DELETE for bot messages
        self.host = host
        self._port = port
        self._lock = threading.RLock()
        self._ids = Snowflakes()
        self._world = World(self._ids)
        bot = self._world.add_user(bot_name, bot=True, user_id=bot_user_id)
        self.bot_user_id = bot.id
        self.application_id = application_id or bot.id
        self.owner_id = self._world.add_user("app-owner").id
        self._store = MessageStore(self._world, bot.id, self.application_id)
        self._store.attachment_size_limit = attachment_size_limit
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._interactions: dict[int, InteractionRecord] = {}
        self._by_token: dict[str, int] = {}
        self._calls: list[Call] = []
        self._unknown: list[Call] = []
        self._injected: list[_Injected] = []
        self._internal_errors: list[str] = []
        self._in_flight = 0
        self._last_activity = time.monotonic()
        self._denied_channels: set[int] = set()
        self._closed_dms: set[int] = set()
        self._message_bodies: list[dict[str, Any]] = []
        self._late_acks: list[dict[str, Any]] = []
        self._invalid_bodies: list[dict[str, Any]] = []
        self.ack_deadline: float | None = 3.0  # s to the first callback; None: no deadline
        self.token_lifetime: float = 15 * 60.0  # s an interaction token works for webhooks
        self.validate_bodies = True  # check JSON bodies against Discord's OpenAPI spec
        self.strict = True  # on leaving ``with``/``async with``: assert_clean()
        self._waiters = _Waiters()
        self._gateway = Gateway(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeDiscord:
        """Start listening (blocks for a moment); returns self."""
        if self._thread is not None:
            raise RuntimeError("FakeDiscord is already running")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, name="fakediscord", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the gateway connections and the server, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    async def astart(self) -> FakeDiscord:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """Like ``stop()``, without blocking the caller's loop (where the bot may run)."""
        await asyncio.to_thread(self.stop)

    async def __aenter__(self) -> FakeDiscord:
        return await self.astart()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        await self.astop()
        if exc_type is None and self.strict:
            self.assert_clean()

    def __enter__(self) -> FakeDiscord:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is None and self.strict:
            self.assert_clean()

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        app = RestApi(self).app()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._store.http_base = self.http_base

    async def _shutdown(self) -> None:
        await self._gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def api_base(self) -> str:
        """For ``discord.http.Route.BASE`` (DISCORD_API_BASE)."""
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        """For ``DiscordWebSocket.DEFAULT_GATEWAY`` (DISCORD_GATEWAY_URL)."""
        return f"ws://{self.host}:{self._port}/gateway"

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py's module globals here for the block, then restore them."""
        import discord.gateway
        import discord.http
        import yarl

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    # -- gateway ----------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> bool:
        """Send any dispatch event to the bot's session (kept for replay while it is
        disconnected). False when no session exists yet."""
        return await self._run(self._dispatch_async(event, data))

    async def _dispatch_async(self, event: str, data: dict[str, Any]) -> bool:
        return self._gateway.dispatch(event, data)

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Until the bot identified and was sent READY and its GUILD_CREATEs. (discord.py
        fires on_ready ``guild_ready_timeout`` later: give the bot a small one.)"""

        def check() -> bool:
            with self._lock:
                s = self._gateway.session
                return s is not None and s.ready and s.connection is not None

        await self.until(check, timeout, "the bot did not identify on the gateway")

    async def disconnect(self, code: int = 4000) -> None:
        """Close the bot's live gateway connection with ``code`` (returns once closed)."""
        await self._run(self._gateway.disconnect(code))

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: discord.py closes the socket and resumes."""
        await self._run(self._reconnect_async())

    async def _reconnect_async(self) -> None:
        self._gateway.reconnect()

    def forget_sessions(self) -> None:
        """Drop every gateway session: the next RESUME gets op 9 (invalid session, not
        resumable) and the client identifies again (a new READY and GUILD_CREATEs)."""
        with self._lock:
            self._gateway.sessions.clear()

    async def wait_resumed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until the bot has resumed ``count`` times in total."""
        await self.until(
            lambda: self.resume_count >= count, timeout, f"the bot did not resume {count} time(s)"
        )

    @property
    def identify_count(self) -> int:
        with self._lock:
            return len(self._gateway.identifies)

    @property
    def resume_count(self) -> int:
        with self._lock:
            return len(self._gateway.resumes)

    @property
    def identify_payloads(self) -> list[dict[str, Any]]:
        """What the bot sent in each IDENTIFY (``intents``, ``properties``...)."""
        with self._lock:
            return copy.deepcopy(self._gateway.identifies)

    @property
    def connections(self) -> list[ConnectionInfo]:
        with self._lock:
            return self._gateway.info()

    @property
    def heartbeats(self) -> list[float]:
        """Arrival times (time.monotonic(), measured on the stand-in's thread) of every
        heartbeat, all connections, in order. Per connection: ``connections[i].heartbeats``."""
        with self._lock:
            return sorted(t for c in self._gateway.connections for t in c.heartbeats)

    @property
    def session_id(self) -> str | None:
        with self._lock:
            s = self._gateway.session
            return None if s is None else s.id

    @property
    def dispatched(self) -> list[tuple[int, str]]:
        """``(seq, event)`` of every dispatch in the current session."""
        with self._lock:
            s = self._gateway.session
            return [] if s is None else [(seq, t) for seq, t, _ in s.log]

    def _ready_payloads(self, session: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        world = self._world
        me = world.users[self.bot_user_id].payload()
        me.update(verified=True, mfa_enabled=False, email=None)
        guild_ids = [g for g, guild in world.guilds.items() if self.bot_user_id in guild.members]
        ready: dict[str, Any] = {
            "v": 10,
            "user": me,
            "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": APP_FLAGS},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fakediscord"],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        guilds = [
            world.guild_create_payload(g, self.bot_user_id, session.intents) for g in guild_ids
        ]
        return ready, guilds

    def _app_info(self) -> dict[str, Any]:
        with self._lock:
            world = self._world
            return {
                "id": str(self.application_id),
                "name": world.users[self.bot_user_id].name,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": world.users[self.owner_id].payload(),
                "team": None,
                "flags": APP_FLAGS,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "role_connections_verification_url": None,
                "tags": [],
                "approximate_guild_count": len(world.guilds),
                "bot": world.users[self.bot_user_id].payload(),
                "integration_types_config": {"0": {}},
            }

    def _guild_joined(self, guild_id: int) -> None:
        session = self._gateway.session
        if session is None or not session.ready:
            return
        with self._lock:
            payload = self._world.guild_create_payload(guild_id, self.bot_user_id, session.intents)
        self._gateway.dispatch("GUILD_CREATE", payload)

    def _dispatch_if_ready(self, guild_id: int, event: str, payload: dict[str, Any]) -> None:
        session = self._gateway.session
        if session is not None and session.ready:
            self._gateway.dispatch(event, payload)

    def _message_event(self, rec: dict[str, Any], *, created: bool, deleted: bool = False) -> None:
        """MESSAGE_CREATE/UPDATE/DELETE to the bot, as Discord sends for visible messages."""
        if not self.dispatch_message_events or rec["ephemeral"]:
            return
        with self._lock:
            intents = self._gateway.intents()
            guild_id = rec["guild_id"]
            wanted = INTENT_GUILD_MESSAGES if guild_id is not None else INTENT_DIRECT_MESSAGES
            if not intents & wanted:
                return
            if deleted:
                event = "MESSAGE_DELETE"
                payload: dict[str, Any] = {
                    "id": str(rec["id"]),
                    "channel_id": str(rec["channel_id"]),
                }
                if guild_id is not None:
                    payload["guild_id"] = str(guild_id)
            else:
                event = "MESSAGE_CREATE" if created else "MESSAGE_UPDATE"
                payload = self._store.wire(rec, with_guild=True)
                if (
                    guild_id is not None
                    and rec["author_id"] in self._world.guilds[guild_id].members
                ):
                    payload["member"] = self._world.member_payload(
                        guild_id, rec["author_id"], with_user=False
                    )
        self._on_loop(self._dispatch_if_ready, guild_id or 0, event, payload)

    # -- threads and waiting ----------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the stand-in's loop (right away when already there)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    async def _run(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise RuntimeError("FakeDiscord is not running (call start())")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _notify(self) -> None:
        with self._waiters.lock:
            waiters = list(self._waiters.items)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    async def until(
        self, condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition not met"
    ) -> Any:
        """Wait (on the caller's loop) until ``condition()`` is truthy; return its value.

        Re-checked whenever the stand-in's state changes. Raises TimeoutError with ``what``
        and the last REST calls.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        key = (loop, event)
        with self._waiters.lock:
            self._waiters.items.add(key)
        try:
            deadline = loop.time() + timeout
            while True:
                event.clear()
                result = condition()
                if result:
                    return result
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"{what} within {timeout}s; {self._recent()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, 0.5))
        finally:
            with self._waiters.lock:
                self._waiters.items.discard(key)

    def _recent(self) -> str:
        calls = self.calls[-8:]
        unknown = self.unknown_calls
        text = "last REST calls: " + (
            ", ".join(f"{c.method} {c.path} -> {c.status}" for c in calls) or "none"
        )
        if unknown:
            text += "; UNKNOWN routes: " + ", ".join(f"{c.method} {c.path}" for c in unknown)
        errors = self.internal_errors
        if errors:
            text += "; STAND-IN ERRORS:\n" + "\n".join(errors)
        return text
