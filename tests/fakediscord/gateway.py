"""The gateway websocket: HELLO, heartbeats, IDENTIFY/READY, RESUME with replay, dispatches.

Everything here runs on the stand-in's own loop. Each connection has one writer task fed by
a queue, so frames leave in the order they were produced; a session keeps every dispatch so
a RESUME can replay what the client missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE, RESUME, RECONNECT = 0, 1, 2, 3, 4, 6, 7
REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 8, 9, 10, 11

_CLOSE = object()


@dataclass
class Connection:
    """One websocket connection (thread-safe snapshots come from ``ConnectionInfo``)."""

    id: int
    query: dict[str, str]
    opened: float = field(default_factory=time.monotonic)
    closed: float | None = None
    close_code: int | None = None
    heartbeats: list[float] = field(default_factory=list)
    identified: bool = False
    resumed: bool = False
    session_id: str | None = None
    received_ops: list[tuple[int, float]] = field(default_factory=list)
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    closing: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class ConnectionInfo:
    """A snapshot of one gateway connection, for tests."""

    id: int
    query: dict[str, str]
    opened: float
    closed: float | None
    close_code: int | None
    heartbeats: list[float]
    identified: bool
    resumed: bool
    session_id: str | None


@dataclass
class Session:
    id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    log: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, event, frame)
    connection: Connection | None = None
    ready: bool = False


class Gateway:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.connections: list[Connection] = []
        self.sessions: dict[str, Session] = {}
        self.session: Session | None = None  # the latest identified session
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []

    # -- dispatching (loop only) ------------------------------------------------------------

    def dispatch(self, event: str, data: dict[str, Any], session: Session | None = None) -> bool:
        """Send op 0 ``event`` to the session, or keep it for the replay on RESUME."""
        with self.fake._lock:
            session = session or self.session
            if session is None:
                return False
            session.seq += 1
            frame = json.dumps({"op": DISPATCH, "t": event, "s": session.seq, "d": data})
            session.log.append((session.seq, event, frame))
            conn = session.connection
            if conn is not None and not conn.closing:
                conn.queue.put_nowait(frame)
            return True

    def intents(self) -> int:
        return self.session.intents if self.session is not None else 0

    async def disconnect(self, code: int) -> None:
        session = self.session
        conn = session.connection if session is not None else None
        if conn is None:
            raise RuntimeError("the bot has no live gateway connection to close")
        self._close(conn, code)
        await conn.done.wait()

    def reconnect(self) -> None:
        conn = self.session.connection if self.session is not None else None
        if conn is None:
            raise RuntimeError("the bot has no live gateway connection")
        self._send(conn, RECONNECT, None)

    def _close(self, conn: Connection, code: int) -> None:
        if not conn.closing:
            conn.closing = True
            conn.queue.put_nowait((_CLOSE, code))

    async def close_all(self) -> None:
        for conn in self.connections:
            if conn.closed is None:
                self._close(conn, 1001)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.done.wait() for c in self.connections)), timeout=2.0
            )

    # -- the websocket ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(timeout=2.0, compress=False, max_msg_size=0)
        await ws.prepare(request)
        conn = Connection(id=len(self.connections) + 1, query=dict(request.query))
        with self.fake._lock:
            self.connections.append(conn)
        writer = asyncio.create_task(self._writer(ws, conn))
        conn.queue.put_nowait(
            json.dumps(
                {
                    "op": HELLO,
                    "s": None,
                    "t": None,
                    "d": {
                        "heartbeat_interval": self.fake.heartbeat_interval,
                        "_trace": ["fakediscord"],
                    },
                }
            )
        )
        self.fake._notify()
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    try:
                        payload = json.loads(msg.data)
                    except ValueError:
                        self._close(conn, 4002)
                        continue
                    self._on_payload(conn, payload)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if not conn.closing:
                conn.closing = True
                conn.queue.put_nowait(None)  # ends the writer
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=3.0)
            with self.fake._lock:
                conn.closed = time.monotonic()
                if conn.close_code is None:
                    conn.close_code = ws.close_code
                session = self.sessions.get(conn.session_id or "")
                if session is not None and session.connection is conn:
                    session.connection = None
            conn.done.set()
            self.fake._notify()
        return ws

    async def _writer(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        while True:
            item = await conn.queue.get()
            if item is None:
                return
            if isinstance(item, tuple) and item[0] is _CLOSE:
                conn.close_code = item[1]
                with contextlib.suppress(Exception):
                    await ws.close(code=item[1])
                return
            try:
                await ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return

    def _send(self, conn: Connection, op: int, data: Any) -> None:
        if not conn.closing:
            conn.queue.put_nowait(json.dumps({"op": op, "s": None, "t": None, "d": data}))

    def _on_payload(self, conn: Connection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d")
        now = time.monotonic()
        with self.fake._lock:
            conn.received_ops.append((op, now))
            if op == HEARTBEAT:
                conn.heartbeats.append(now)
        if op == HEARTBEAT:
            if self.fake.ack_heartbeats:
                self._send(conn, HEARTBEAT_ACK, None)
        elif op == IDENTIFY:
            self._identify(conn, data or {})
        elif op == RESUME:
            self._resume(conn, data or {})
        elif op == REQUEST_MEMBERS:
            self._request_members(data or {})
        elif op in (PRESENCE, VOICE):
            pass
        else:
            self._close(conn, 4001)  # unknown opcode
        self.fake._notify()

    def _identify(self, conn: Connection, data: dict[str, Any]) -> None:
        if conn.session_id is not None:
            self._close(conn, 4005)  # already authenticated
            return
        if data.get("token") != self.fake.token:
            self._close(conn, 4004)  # authentication failed
            return
        session = Session(
            id=uuid.uuid4().hex,
            intents=int(data.get("intents") or 0),
            shard=data.get("shard"),
            connection=conn,
        )
        with self.fake._lock:
            self.identifies.append(data)
            self.sessions[session.id] = session
            self.session = session
            conn.identified = True
            conn.session_id = session.id
            ready, guilds = self.fake._ready_payloads(session)
        self.dispatch("READY", ready, session)
        for guild in guilds:
            self.dispatch("GUILD_CREATE", guild, session)
        with self.fake._lock:
            session.ready = True

    def _resume(self, conn: Connection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") != self.fake.token:
            self._send(conn, INVALID_SESSION, False)
            return
        old = session.connection
        if old is not None and old is not conn:
            self._close(old, 4000)
        seq = data.get("seq") or 0
        with self.fake._lock:
            self.resumes.append(data)
            session.connection = conn
            conn.resumed = True
            conn.session_id = session.id
            self.session = session
            missed = [frame for s, _, frame in session.log if s > seq]
        for frame in missed:
            conn.queue.put_nowait(frame)
        self.dispatch("RESUMED", {"_trace": ["fakediscord"]}, session)

    def _request_members(self, data: dict[str, Any]) -> None:
        with self.fake._lock:
            world = self.fake._world
            guild = world.guilds.get(int(data.get("guild_id") or 0))
            if guild is None:
                return
            wanted = data.get("user_ids")
            if wanted is not None:
                ids = [int(u) for u in (wanted if isinstance(wanted, list) else [wanted])]
                ids = [u for u in ids if u in guild.members]
            else:
                query = (data.get("query") or "").lower()
                ids = [u for u in guild.members if world.users[u].name.lower().startswith(query)]
                if data.get("limit"):
                    ids = ids[: int(data["limit"])]
            chunk = {
                "guild_id": str(guild.id),
                "members": [world.member_payload(guild.id, u) for u in ids],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce") is not None:
                chunk["nonce"] = data["nonce"]
        self.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    # -- snapshots (any thread, under the fake's lock) --------------------------------------

    def info(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(
                id=c.id,
                query=dict(c.query),
                opened=c.opened,
                closed=c.closed,
                close_code=c.close_code,
                heartbeats=list(c.heartbeats),
                identified=c.identified,
                resumed=c.resumed,
                session_id=c.session_id,
            )
            for c in self.connections
        ]
