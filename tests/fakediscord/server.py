"""FakeDiscord: the stand-in server, run in its own thread with its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

from . import interactions as ix
from .gateway import ConnectionInfo, Gateway
from .interactions import InteractionHandle, InteractionRecord, Upload
from .messages import MessageStore, walk_components
from .rest import RestApi, json_response
from .world import (
    DEFAULT_BOT_PERMISSIONS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    VIEW_CHANNEL,
    Snowflakes,
    World,
)

log = logging.getLogger(__name__)

APP_FLAGS = (1 << 15) | (1 << 19) | (1 << 23)  # members/content intents limited, command badge


_MESSAGE_ROUTES = (
    ("POST", re.compile(r"^/webhooks/\d+/[^/]+$")),
    ("PATCH", re.compile(r"^/webhooks/\d+/[^/]+/messages/[^/]+$")),
    ("POST", re.compile(r"^/channels/\d+/messages$")),
    ("PATCH", re.compile(r"^/channels/\d+/messages/\d+$")),
)
_CALLBACK_ROUTE = re.compile(r"^/interactions/\d+/[^/]+/callback$")


def _message_part(method: str, path: str, body: Any) -> dict[str, Any] | None:
    """The message a request creates or edits (callback ``data`` for types 4 and 7)."""
    if method == "POST" and _CALLBACK_ROUTE.match(path):
        if isinstance(body, dict) and body.get("type") in (4, 7):
            data = body.get("data")
            return data if isinstance(data, dict) else {}
        return None
    if any(method == m and rx.match(path) for m, rx in _MESSAGE_ROUTES):
        return body if isinstance(body, dict) else {}
    return None


class Call(NamedTuple):
    """One REST request the bot made (``path`` is relative to the API base)."""

    method: str
    path: str
    json: Any  # the JSON body, or the multipart ``payload_json``
    time: float  # time.monotonic() when the answer was sent
    status: int
    query: dict[str, str]
    files: list[dict[str, Any]]  # [{index, filename, size, content_type}]


@dataclass
class _Injected:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    hits: int = 0


@dataclass
class _Waiters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    items: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)


class FakeDiscord:
    """A local Discord: REST under ``api_base``, the gateway at ``gateway_url``.

    See the package docstring for the full API.
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

    # -- world ------------------------------------------------------------------------------

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot's user payload (``id``, ``username``, ``bot``...)."""
        with self._lock:
            return self._world.users[self.bot_user_id].payload()

    def add_user(self, name: str, *, bot: bool = False) -> int:
        with self._lock:
            return self._world.add_user(name, bot=bot).id

    def add_guild(
        self,
        name: str,
        owner_id: int | None = None,
        *,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
    ) -> int:
        """A guild the bot is in (with @everyone and the bot's managed role). The owner
        (default: the application owner) becomes a member and has every permission."""
        with self._lock:
            guild = self._world.add_guild(
                name, owner_id or self.owner_id, self.bot_user_id, bot_permissions
            )
        self._on_loop(self._guild_joined, guild.id)
        return guild.id

    def add_channel(
        self, guild_id: int, name: str, *, type: int = 0, nsfw: bool = False, hidden: bool = False
    ) -> int:
        """A guild channel. ``nsfw``: age-restricted. ``hidden``: @everyone is denied View
        Channel (overwrite ``{id: guild_id, type: 0, deny: 1 << 10}``) and the bot's member
        is allowed it, like a private channel the bot was added to; let members in with
        ``allow_channel_view``."""
        with self._lock:
            channel = self._world.add_channel(
                guild_id, name, type, nsfw=nsfw, hidden=hidden, bot_user_id=self.bot_user_id
            )
            payload = channel.payload()
        self._on_loop(self._dispatch_if_ready, guild_id, "CHANNEL_CREATE", payload)
        return channel.id

    def set_channel_permissions(
        self, channel_id: int, target_id: int, *, allow: int = 0, deny: int = 0
    ) -> None:
        """Add ``allow``/``deny`` bits to the overwrite for a role or a member (``target_id``
        is looked up: a role id of that guild, else a user id). Dispatched as CHANNEL_UPDATE."""
        with self._lock:
            world = self._world
            channel = world.channels[channel_id]
            kind = 0 if target_id in world.roles else 1
            if kind == 1 and target_id not in world.users:
                raise KeyError(f"{target_id} is neither a role nor a user")
            world.set_overwrite(channel_id, target_id, kind, allow=allow, deny=deny)
            payload = channel.payload()
        self._on_loop(self._dispatch_if_ready, channel.guild_id or 0, "CHANNEL_UPDATE", payload)

    def allow_channel_view(self, channel_id: int, user_id: int) -> None:
        """A member overwrite allowing View Channel, so ``user_id`` may use a hidden channel."""
        self.set_channel_permissions(channel_id, user_id, allow=VIEW_CHANNEL)

    def channel_permissions(self, channel_id: int, user_id: int) -> int:
        """A member's permissions in a channel (roles and overwrites; threads: the parent's)."""
        with self._lock:
            return self._world.channel_permissions(channel_id, user_id)

    def add_thread(
        self,
        parent_channel_id: int,
        name: str,
        *,
        private: bool = False,
        owner_id: int | None = None,
    ) -> int:
        """A thread (type 11, or 12 when ``private``) in a guild channel, started by
        ``owner_id`` (default: the bot). In GUILD_CREATE ``threads``; THREAD_CREATE after
        READY. Permissions and age restriction follow the parent, as on Discord."""
        with self._lock:
            thread = self._world.add_thread(
                parent_channel_id, name, private=private, owner_id=owner_id or self.bot_user_id
            )
            payload = thread.payload()
            payload["newly_created"] = True
        self._on_loop(self._dispatch_if_ready, thread.guild_id or 0, "THREAD_CREATE", payload)
        return thread.id

    def add_role(self, guild_id: int, name: str, permissions: int = 0) -> int:
        with self._lock:
            role = self._world.add_role(guild_id, name, permissions)
            payload = {"guild_id": str(guild_id), "role": role.payload()}
        self._on_loop(self._dispatch_if_ready, guild_id, "GUILD_ROLE_CREATE", payload)
        return role.id

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        *,
        permissions: int = 0,
        roles: list[int] | None = None,
        nick: str | None = None,
    ) -> None:
        """Make a user a member. ``permissions`` are extra bits on top of @everyone and
        ``roles``, given through a role of the member's own (named "<name> perms"), so they
        show in ``interaction.permissions`` and in discord.py's ``permissions_for`` alike."""
        with self._lock:
            member = self._world.add_member(
                guild_id, user_id, permissions=permissions, roles=roles, nick=nick
            )
            new_roles = [
                {"guild_id": str(guild_id), "role": self._world.roles[r].payload()}
                for r in member.roles
                if r not in (roles or [])
            ]
            payload = self._world.member_payload(guild_id, user_id)
            payload["guild_id"] = str(guild_id)
        for role in new_roles:
            self._on_loop(self._dispatch_if_ready, guild_id, "GUILD_ROLE_CREATE", role)
        self._on_loop(self._dispatch_if_ready, guild_id, "GUILD_MEMBER_ADD", payload)

    def dm_channel_id(self, user_id: int) -> int:
        """The DM channel between the bot and a user (made on first use)."""
        with self._lock:
            return self._world.dm_channel(user_id).id

    def close_dms(self, user_id: int, closed: bool = True) -> None:
        """The user does not accept DMs from the bot: posting in their DM channel answers
        403 50007 "Cannot send messages to this user" (opening the channel still works)."""
        with self._lock:
            (self._closed_dms.add if closed else self._closed_dms.discard)(user_id)

    def member_permissions(self, guild_id: int, user_id: int) -> int:
        with self._lock:
            return self._world.member_permissions(guild_id, user_id)

    @property
    def attachment_size_limit(self) -> int:
        """Per-file upload limit (bytes): sent in interactions, enforced with 413 40005."""
        return self._store.attachment_size_limit

    @attachment_size_limit.setter
    def attachment_size_limit(self, value: int) -> None:
        with self._lock:
            self._store.attachment_size_limit = value

    def deny_channel(self, channel_id: int, denied: bool = True) -> None:
        """Channel routes answer 403 50013 Missing Permissions while denied."""
        with self._lock:
            (self._denied_channels.add if denied else self._denied_channels.discard)(channel_id)

    # -- application commands ---------------------------------------------------------------

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """Registered commands: global ones, or those of one guild; as Discord echoes them."""
        with self._lock:
            return copy.deepcopy(self._commands.get(guild_id, []))

    def command(self, name: str, guild_id: int | None = None) -> dict[str, Any] | None:
        return next((c for c in self.commands(guild_id) if c["name"] == name), None)

    def _stored_command(
        self, cmd: dict[str, Any], scope: int | None, old: dict[str, Any] | None
    ) -> dict[str, Any]:
        stored = copy.deepcopy(cmd)
        stored.setdefault("type", 1)
        stored.setdefault("description", "")
        stored.setdefault("options", [])
        stored.setdefault("default_member_permissions", None)
        stored.setdefault("nsfw", False)
        stored["id"] = old["id"] if old is not None else str(self._ids.next())
        stored["application_id"] = str(self.application_id)
        stored["version"] = str(self._ids.next())
        if scope is not None:
            stored["guild_id"] = str(scope)
        return stored

    # -- messages ---------------------------------------------------------------------------

    def messages(
        self, channel_id: int | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Every message (ephemeral ones too, see ``m["ephemeral"]``), oldest first."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._store.records.values()
                if (channel_id is None or m["channel_id"] == channel_id)
                and (include_deleted or not m["deleted"])
            ]

    def message(self, message_id: int | str) -> dict[str, Any] | None:
        """One message by id (deleted ones too), or None."""
        with self._lock:
            rec = self._store.get(int(message_id))
            return None if rec is None else copy.deepcopy(rec)

    def message_payload(self, message_id: int | str) -> dict[str, Any]:
        """The wire payload Discord would send for a message."""
        with self._lock:
            rec = self._store.get(int(message_id))
            if rec is None:
                raise KeyError(f"no message {message_id}")
            return self._store.wire(rec)

    def attachment_bytes(self, message: dict[str, Any] | int | str, index: int = 0) -> bytes:
        """The uploaded bytes of a message's attachment."""
        msg = message if isinstance(message, dict) else self.message(message)
        if msg is None:
            raise KeyError(f"no message {message}")
        att = msg["attachments"][index]
        with self._lock:
            blob = self._store.blob(int(att["id"]))
        if blob is None:
            raise KeyError(f"no bytes for attachment {att['id']}")
        return blob[0]

    async def wait_for_message(
        self,
        predicate: Callable[[dict[str, Any]], Any] | None = None,
        timeout: float = 5.0,
        *,
        channel_id: int | None = None,
    ) -> dict[str, Any]:
        """The first stored message (current version) satisfying ``predicate``."""

        def check() -> dict[str, Any] | None:
            return next((m for m in self.messages(channel_id) if ix._holds(predicate, m)), None)

        return await self.until(check, timeout, "no matching message")

    def upload_message(
        self,
        channel_id: int,
        user_id: int,
        content: str = "",
        files: list[Upload | tuple[Any, ...]] | None = None,
        *,
        embeds: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Store a message from a user (e.g. a photo a member posted, for the bot to reply
        to, fetch, or get as a context-menu target); returns the stored message (a copy;
        ``["id"]`` is its id). ``embeds`` are taken as given (e.g. ``[{"type": "image",
        "image": {"url": ...}}]``).

        Dispatched as MESSAGE_CREATE when the bot has the messages intent.
        """
        with self._lock:
            if channel_id not in self._world.channels:
                raise KeyError(f"unknown channel {channel_id}")
            if user_id not in self._world.users:
                raise KeyError(f"unknown user {user_id}")
            msg = self._store.create(
                channel_id,
                {"content": content, "embeds": embeds or []},
                [],
                kind="user",
                author_id=user_id,
                allow_empty=bool(files),
            )
            for f in files or []:
                up = Upload.coerce(f)
                msg["attachments"].append(
                    self._store.host_file(
                        channel_id,
                        up.filename,
                        up.data,
                        up.content_type,
                        size=up.size,
                        width=up.width,
                        height=up.height,
                    )
                )
            result = copy.deepcopy(msg)
        self._message_event(msg, created=True)
        self._notify()
        return result

    # -- REST calls -------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    @property
    def unknown_calls(self) -> list[Call]:
        """Requests to routes the stand-in does not know (answered 404/405)."""
        with self._lock:
            return list(self._unknown)

    def assert_no_unknown_routes(self) -> None:
        """Fails on routes the stand-in lacks and on errors inside the stand-in itself."""
        unknown = self.unknown_calls
        assert not unknown, "bot called routes the stand-in does not know: " + ", ".join(
            f"{c.method} {c.path}" for c in unknown
        )
        errors = self.internal_errors
        assert not errors, "the stand-in failed on a request:\n" + "\n".join(errors)

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of requests the stand-in itself failed on (answered 400)."""
        with self._lock:
            return list(self._internal_errors)

    def _record_internal_error(self, method: str, path: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        log.error("fakediscord failed on %s %s:\n%s", method, path, text)
        with self._lock:
            self._internal_errors.append(f"{method} {path}: {text}")

    async def wait_for(self, predicate: Callable[[Call], Any], timeout: float = 5.0) -> Call:
        """The first recorded REST call satisfying ``predicate``."""

        def check() -> Call | None:
            return next((c for c in self.calls if ix._holds(predicate, c)), None)

        return await self.until(check, timeout, "no matching REST call")

    def inject_error(
        self,
        method: str,
        path_pattern: str,
        status: int,
        body: Any = None,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` (or ``"*"``) and the regex
        ``path_pattern`` (searched in the API-relative path) with ``status`` and ``body``.

        A 429 gets ``retry_after`` 0.05 and the ``Via`` header unless given (discord.py only
        retries a 429 that carries ``Via``); a 5xx is retried by discord.py up to 5 times.
        """
        headers = dict(headers or {})
        if body is None:
            body = {"message": f"{status}: injected", "code": 0}
        if status == 429:
            if isinstance(body, dict):
                body.setdefault("retry_after", 0.05)
                body.setdefault("global", False)
            headers.setdefault("Via", "1.1 google")
        with self._lock:
            self._injected.append(
                _Injected(method.upper(), re.compile(path_pattern), status, body, headers, times)
            )

    def _take_injected(self, method: str, path: str) -> web.Response | None:
        with self._lock:
            for inj in self._injected:
                if (
                    inj.hits < inj.times
                    and inj.method in ("*", method)
                    and inj.pattern.search(path)
                ):
                    inj.hits += 1
                    return json_response(inj.body, inj.status, inj.headers)
        return None

    def _request_started(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._last_activity = time.monotonic()

    def _request_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last_activity = time.monotonic()
        self._notify()

    async def settle(self, quiet: float = 0.05, timeout: float = 5.0) -> None:
        """Until no REST request is in flight and none came for ``quiet`` seconds: let the
        bot finish reading its answers (e.g. before ``bot.close()``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                idle_for = time.monotonic() - self._last_activity
                busy = self._in_flight > 0
            if not busy and idle_for >= quiet:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the bot did not go quiet within {timeout}s; {self._recent()}")
            await asyncio.sleep(max(quiet - idle_for, 0.01) if not busy else 0.01)

    def _record_call(
        self,
        *,
        method: str,
        path: str,
        body: Any,
        status: int,
        query: dict[str, str],
        files: list[Any],
        unknown: bool,
    ) -> None:
        call = Call(
            method=method,
            path=path,
            json=body,
            time=time.monotonic(),
            status=status,
            query=query,
            files=[
                {
                    "index": f.index,
                    "filename": f.filename,
                    "size": len(f.data),
                    "content_type": f.content_type,
                }
                for f in files
            ],
        )
        message = _message_part(method, path, body)
        with self._lock:
            self._calls.append(call)
            if unknown:
                self._unknown.append(call)
            if message is not None:
                self._message_bodies.append(
                    {
                        "method": method,
                        "path": path,
                        "body": copy.deepcopy(body),
                        "message": copy.deepcopy(message),
                        "allowed_mentions": copy.deepcopy(message.get("allowed_mentions")),
                        "status": status,
                    }
                )
        self._notify()

    def message_bodies(self) -> list[dict[str, Any]]:
        """Every request that creates or edits a message (answered or refused), in order:
        ``{method, path, body, message, allowed_mentions, status}``. ``body`` is the JSON or
        ``payload_json`` as sent; ``message`` its message part (an interaction callback's
        ``data``, else the body); ``allowed_mentions`` that part's (None when absent).
        Covers callbacks of type 4 and 7, webhook POST/PATCH (follow-ups, @original) and
        channel message POST/PATCH (DMs included)."""
        with self._lock:
            return copy.deepcopy(self._message_bodies)

    def late_acks(self) -> list[dict[str, Any]]:
        """First callbacks that came after ``ack_deadline`` (3 s) and were refused with 404
        10062, like Discord: ``{interaction_id, name, type, delay, body}``."""
        with self._lock:
            return copy.deepcopy(self._late_acks)

    def assert_acks_in_time(self) -> None:
        """Fails when the bot acknowledged any interaction later than ``ack_deadline``."""
        late = self.late_acks()
        assert not late, "interactions acknowledged after the 3 s deadline: " + ", ".join(
            f"{a['name']!r} ({a['delay']:.2f} s)" for a in late
        )

    def invalid_bodies(self) -> list[dict[str, Any]]:
        """Request bodies Discord's OpenAPI schema rejects (answered 400 50035):
        ``{method, path, route, body, errors}`` (errors: readable strings)."""
        with self._lock:
            return copy.deepcopy(self._invalid_bodies)

    def assert_valid_bodies(self) -> None:
        """Fails when the bot sent any body Discord's schema rejects."""
        bad = self.invalid_bodies()
        assert not bad, "bodies Discord would refuse (400 50035):\n" + "\n".join(
            f"{b['method']} {b['path']}: {'; '.join(b['errors'])}\n  body: {b['body']!r}"[:3000]
            for b in bad
        )

    def assert_clean(self) -> None:
        """All of: no unknown routes, no stand-in errors, every ack in time, every body
        valid. Called when a ``with``/``async with`` block ends normally, unless
        ``strict`` is False (set that in a test that provokes these on purpose)."""
        self.assert_no_unknown_routes()
        self.assert_acks_in_time()
        self.assert_valid_bodies()

    # -- interactions -----------------------------------------------------------------------

    async def send_slash(
        self,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int,
        name: str,
        options: dict[str, Any] | None = None,
        attachments: dict[str, Upload | tuple[Any, ...]] | None = None,
        *,
        locale: str = "en-US",
        validate: bool = True,
    ) -> InteractionHandle:
        """Send INTERACTION_CREATE for a synced slash command, as a user typed it.

        ``name`` may hold subcommands: ``"settings show"``. ``options`` map option names to
        values (ints for user/role/channel ids); attachment options take their file from
        ``attachments[name]`` (or from ``options[name]``). ``validate`` applies the checks a
        Discord client makes: required options, choices, ranges, lengths, and the command's
        ``default_member_permissions``.
        """
        values = dict(options or {})
        values.update(attachments or {})
        with self._lock:
            world = self._world
            if guild_id is None:
                channel_id = channel_id or world.dm_channel(user_id).id
            if channel_id is None or channel_id not in world.channels:
                raise KeyError(f"unknown channel {channel_id}")
            cmd, is_guild, path = ix.resolve_command(self._commands, guild_id, name)
            if validate and guild_id is not None and cmd.get("default_member_permissions"):
                needed = int(cmd["default_member_permissions"])
                if world.member_permissions(guild_id, user_id) & needed != needed:
                    raise PermissionError(
                        f"/{cmd['name']} needs permissions {needed}; Discord would not show it "
                        f"to user {user_id} (pass validate=False to send it anyway)"
                    )
            opts, resolved = ix.build_options(
                world,
                self._store,
                cmd,
                path,
                values,
                guild_id=guild_id,
                user_id=user_id,
                channel_id=channel_id,
                validate=validate,
            )
            data: dict[str, Any] = {
                "id": cmd["id"],
                "name": cmd["name"],
                "type": 1,
                "options": opts,
            }
            if resolved:
                data["resolved"] = resolved
            if is_guild:
                data["guild_id"] = str(guild_id)
            rec = self._new_interaction(
                ix.APPLICATION_COMMAND,
                guild_id,
                channel_id,
                user_id,
                data,
                locale=locale,
                name=cmd["name"],
                check_view=validate,
            )
        return await self._deliver(rec)

    async def send_autocomplete(
        self,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int,
        name: str,
        options: dict[str, Any],
        focused: str,
        *,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """Send an autocomplete interaction (type 4) while the user types option ``focused``;
        the bot's choices come back as ``(await handle.response())["data"]["choices"]``."""
        with self._lock:
            world = self._world
            if guild_id is None:
                channel_id = channel_id or world.dm_channel(user_id).id
            if channel_id is None or channel_id not in world.channels:
                raise KeyError(f"unknown channel {channel_id}")
            cmd, is_guild, path = ix.resolve_command(self._commands, guild_id, name)
            opts, resolved = ix.build_options(
                world,
                self._store,
                cmd,
                path,
                options,
                guild_id=guild_id,
                user_id=user_id,
                channel_id=channel_id,
                validate=False,
            )
            leaf = opts
            while leaf and leaf[0]["type"] in (1, 2):
                leaf = leaf[0]["options"]
            target = next((o for o in leaf if o["name"] == focused), None)
            if target is None:
                raise LookupError(f"focused option {focused!r} is not in options")
            target["focused"] = True
            data: dict[str, Any] = {
                "id": cmd["id"],
                "name": cmd["name"],
                "type": 1,
                "options": opts,
            }
            if resolved:
                data["resolved"] = resolved
            if is_guild:
                data["guild_id"] = str(guild_id)
            rec = self._new_interaction(
                ix.AUTOCOMPLETE,
                guild_id,
                channel_id,
                user_id,
                data,
                locale=locale,
                name=cmd["name"],
            )
        return await self._deliver(rec)

    async def send_message_command(
        self,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int,
        name: str,
        target_message_id: int | str,
        *,
        locale: str = "en-US",
        validate: bool = True,
    ) -> InteractionHandle:
        """Send a message context-menu command ("Apps → name", type 2 with ``data.type`` 3)
        on a stored message: ``data {id, name, type 3, target_id, resolved {messages {ID:
        message}}}``. The target carries its attachments and embeds (no intent needed).
        ``channel_id`` defaults to the target's channel."""
        with self._lock:
            world = self._world
            target = self._store.get(int(target_message_id))
            if target is None or target["deleted"]:
                raise KeyError(f"no message {target_message_id}")
            if target["ephemeral"]:
                raise ValueError("an ephemeral message cannot be the target of a command")
            channel_id = channel_id or target["channel_id"]
            if channel_id != target["channel_id"]:
                raise ValueError(
                    f"message {target_message_id} is in channel "
                    f"{target['channel_id']}, not {channel_id}"
                )
            cmd, is_guild, _ = ix.resolve_command(self._commands, guild_id, name, kind=3)
            if validate and guild_id is not None and cmd.get("default_member_permissions"):
                needed = int(cmd["default_member_permissions"])
                if world.member_permissions(guild_id, user_id) & needed != needed:
                    raise PermissionError(f"{name!r} needs permissions {needed}")
            wire = self._store.wire(target)
            if (
                target["guild_id"] is not None
                and target["author_id"] in world.guilds[target["guild_id"]].members
            ):
                wire["member"] = world.member_payload(
                    target["guild_id"], target["author_id"], with_user=False
                )
            author = world.users[target["author_id"]].payload()
            data: dict[str, Any] = {
                "id": cmd["id"],
                "name": cmd["name"],
                "type": 3,
                "target_id": str(target["id"]),
                "resolved": {
                    "messages": {str(target["id"]): wire},
                    "users": {author["id"]: author},
                },
            }
            if is_guild:
                data["guild_id"] = str(guild_id)
            rec = self._new_interaction(
                ix.APPLICATION_COMMAND,
                guild_id,
                channel_id,
                user_id,
                data,
                locale=locale,
                name=cmd["name"],
                check_view=validate,
                command_type=3,
            )
        return await self._deliver(rec)

    async def click(
        self,
        message_id: int | str,
        custom_id: str,
        user_id: int,
        guild_id: int | None = None,
        *,
        values: list[str] | None = None,
        locale: str = "en-US",
        validate: bool = True,
    ) -> InteractionHandle:
        """Send a component interaction (type 3) for a button (or select, with ``values``)
        on a stored message. ``validate`` insists the component exists and is enabled."""
        with self._lock:
            msg = self._store.get(int(message_id))
            if msg is None or msg["deleted"]:
                raise KeyError(f"no message {message_id}")
            comp = next(
                (
                    c
                    for _, c in walk_components(msg["components"])
                    if c.get("custom_id") == custom_id
                ),
                None,
            )
            if validate and comp is None:
                ids = [c.get("custom_id") for _, c in walk_components(msg["components"])]
                raise LookupError(f"message {message_id} has no component {custom_id!r}: {ids}")
            if validate and comp is not None and comp.get("disabled"):
                raise ValueError(f"component {custom_id!r} is disabled")
            component_type = comp.get("type", 2) if comp is not None else (3 if values else 2)
            data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
            if values is not None:
                data["values"] = list(values)
            guild_id = guild_id if guild_id is not None else msg["guild_id"]
            rec = self._new_interaction(
                ix.MESSAGE_COMPONENT,
                guild_id,
                msg["channel_id"],
                user_id,
                data,
                locale=locale,
                name=custom_id,
                check_view=validate,
                message=msg,
            )
        return await self._deliver(rec)

    async def submit_modal(
        self, opened_by: InteractionHandle, values: dict[str, Any], user_id: int | None = None
    ) -> InteractionHandle:
        """Submit the modal the bot opened in answer to ``opened_by`` (type 5 MODAL_SUBMIT).

        ``values`` are keyed by a component's ``custom_id`` or its label (a text input's own
        label, or the Label (type 18) around it). Text inputs take a str (left out: their
        prefilled ``value``, else ""; ``required`` and ``min_length``/``max_length`` are
        checked as Discord's client does); selects take a list of str; a FileUpload (type
        19) takes an ``Upload``/tuple or a list of them, hosted and resolved in
        ``data.resolved.attachments``. A key that names no component raises. The submit
        carries ``message`` when the modal was opened from a button.
        """
        with self._lock:
            origin = self._interactions[opened_by.id]
            modal = origin.modal
            if modal is None:
                raise LookupError(f"interaction {opened_by.id} did not open a modal")
            used: set[str] = set()
            resolved: dict[str, dict[str, Any]] = {}

            def lookup(comp: dict[str, Any], label: str | None) -> Any:
                for key in (comp.get("custom_id"), comp.get("label"), label):
                    if key is not None and key in values:
                        used.add(key)
                        return values[key]
                return None

            def fill(comp: dict[str, Any], label: str | None = None) -> dict[str, Any] | None:
                kind = comp.get("type")
                if kind == 1:
                    inner = [fill(c, label) for c in comp.get("components", [])]
                    return {"type": 1, "components": [c for c in inner if c is not None]}
                if kind == 18:
                    inner = fill(comp["component"], comp.get("label"))
                    out = {"type": 18, "component": inner}
                    if "id" in comp:
                        out["id"] = comp["id"]
                    return out
                if kind == 10:  # a text display: nothing to submit
                    return {"type": 10, **({"id": comp["id"]} if "id" in comp else {})}
                name = comp.get("label") or label or comp.get("custom_id")
                value = lookup(comp, label)
                out: dict[str, Any] = {"type": kind, "custom_id": comp.get("custom_id")}
                if "id" in comp:
                    out["id"] = comp["id"]
                if kind == 4:
                    text = value if value is not None else comp.get("value") or ""
                    if not isinstance(text, str):
                        raise TypeError(f"text input {name!r} takes a str, not {text!r}")
                    if comp.get("required") is not False and not text:
                        raise ValueError(f"text input {name!r} is required")
                    lo, hi = comp.get("min_length"), comp.get("max_length", 4000)
                    if text and (
                        (lo is not None and len(text) < lo) or (hi is not None and len(text) > hi)
                    ):
                        raise ValueError(f"text input {name!r}: length must be in [{lo}, {hi}]")
                    out["value"] = text
                    return out
                if kind == 19:
                    files = [] if value is None else (value if isinstance(value, list) else [value])
                    ids = []
                    for f in files:
                        up = Upload.coerce(f)
                        att = self._store.host_file(
                            origin.channel_id,
                            up.filename,
                            up.data,
                            up.content_type,
                            size=up.size,
                            width=up.width,
                            height=up.height,
                        )
                        resolved.setdefault("attachments", {})[str(att["id"])] = (
                            self._store.wire_attachment(att, ephemeral=True)
                        )
                        ids.append(str(att["id"]))
                    self._check_count(comp, name, len(ids))
                    out["values"] = ids
                    return out
                if kind in (3, 5, 6, 7, 8):
                    chosen = [] if value is None else [str(v) for v in value]
                    self._check_count(comp, name, len(chosen))
                    if kind == 3:
                        allowed = [o["value"] for o in comp.get("options", [])]
                        bad = [v for v in chosen if v not in allowed]
                        if bad:
                            raise ValueError(f"select {name!r}: {bad} not among {allowed}")
                    out["values"] = chosen
                    return out
                raise ValueError(f"modal component type {kind} is not supported here")

            filled = [fill(c) for c in modal.get("components", [])]
            unknown = set(values) - used
            if unknown:
                raise LookupError(
                    f"modal {modal.get('custom_id')!r} has no input(s) {sorted(unknown)}"
                )
            data: dict[str, Any] = {
                "custom_id": modal["custom_id"],
                "components": [c for c in filled if c is not None],
            }
            if resolved:
                data["resolved"] = resolved
            source = self._store.get(origin.source_message_id or 0)
            rec = self._new_interaction(
                ix.MODAL_SUBMIT,
                origin.guild_id,
                origin.channel_id,
                user_id or origin.user_id,
                data,
                locale=origin.payload.get("locale", "en-US"),
                name=modal["custom_id"],
                message=source,
            )
        return await self._deliver(rec)

    @staticmethod
    def _check_count(comp: dict[str, Any], name: str | None, count: int) -> None:
        required = comp.get("required") is not False
        lo = comp.get("min_values")
        lo = (1 if required else 0) if lo is None else lo
        hi = comp.get("max_values")
        hi = 1 if hi is None else hi
        if not required and count == 0:
            return
        if not lo <= count <= hi:
            raise ValueError(f"{name!r} takes between {lo} and {hi} value(s), got {count}")

    def expire_token(self, token: str) -> None:
        """Invalidate an interaction token now (Discord does after 15 minutes): webhook
        routes answer 401 50027 "Invalid Webhook Token", the callback 404 10062."""
        with self._lock:
            iid = self._by_token.get(token)
            if iid is None:
                raise KeyError("unknown interaction token")
            self._interactions[iid].expired = True

    def interactions(self) -> list[InteractionHandle]:
        with self._lock:
            return [InteractionHandle(self, i) for i in self._interactions]

    def _interaction_by_token(self, token: str) -> InteractionRecord | None:
        iid = self._by_token.get(token)
        return None if iid is None else self._interactions[iid]

    def _new_interaction(
        self,
        itype: int,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        data: dict[str, Any],
        *,
        locale: str,
        name: str,
        message: dict[str, Any] | None = None,
        check_view: bool = False,
        command_type: int = 1,
    ) -> InteractionRecord:
        world = self._world
        if user_id not in world.users:
            raise KeyError(f"unknown user {user_id}")
        if channel_id not in world.channels:
            raise KeyError(f"unknown channel {channel_id}")
        if (
            check_view
            and guild_id is not None
            and user_id in world.users
            and not world.channel_permissions(channel_id, user_id) & VIEW_CHANNEL
        ):
            raise PermissionError(
                f"user {user_id} cannot view channel {channel_id}, so Discord would not let "
                "them use it (allow_channel_view, or validate=False)"
            )
        iid = self._ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        channel = world.channels[channel_id].payload(world)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "token": token,
            "version": 1,
            "attachment_size_limit": self._store.attachment_size_limit,
            "channel_id": str(channel_id),
            "channel": channel,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "data": data,
        }
        if guild_id is not None:
            if guild_id not in world.guilds:
                raise KeyError(f"unknown guild {guild_id}")
            if user_id not in world.guilds[guild_id].members:
                raise KeyError(f"user {user_id} is not a member of guild {guild_id}")
            # As on Discord: the member's and the app's permissions in this channel.
            perms = world.channel_permissions(channel_id, user_id)
            channel["permissions"] = str(perms)
            member = world.member_payload(guild_id, user_id)
            member["permissions"] = str(perms)
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member,
                app_permissions=str(world.channel_permissions(channel_id, self.bot_user_id)),
                authorizing_integration_owners={"0": str(guild_id)},
                context=0,
            )
        else:
            payload.update(
                user=world.users[user_id].payload(),
                app_permissions=str(DEFAULT_BOT_PERMISSIONS),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
        if message is not None:
            payload["message"] = self._store.wire(message)
        rec = InteractionRecord(
            id=iid,
            token=token,
            type=itype,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            payload=payload,
            name=name,
            command_type=command_type,
            source_message_id=message["id"] if message is not None else None,
        )
        self._interactions[iid] = rec
        self._by_token[token] = iid
        return rec

    async def _deliver(self, rec: InteractionRecord) -> InteractionHandle:
        if not await self.dispatch("INTERACTION_CREATE", rec.payload):
            raise RuntimeError("the bot has not identified on the gateway yet (wait_ready)")
        return InteractionHandle(self, rec.id)

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
