"""Interactions the stand-in sends to the bot, and the handles tests use to follow them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .messages import MessageStore
from .world import World

if TYPE_CHECKING:
    from .server import FakeDiscord

# Interaction types
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Callback types
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9

ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
        MODAL,
    },
    MODAL_SUBMIT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
    },
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
}


@dataclass
class Upload:
    """A file a user attaches to a slash command.

    ``size`` overrides the size Discord declares in the payload (the bytes stay as given),
    to test size checks without sending big files; ``width``/``height`` likewise override
    the image dimensions (computed with Pillow when left out).
    """

    filename: str
    data: bytes
    content_type: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None

    @classmethod
    def coerce(cls, value: Any) -> Upload:
        if isinstance(value, Upload):
            return value
        if isinstance(value, tuple) and 2 <= len(value) <= 4:
            return cls(*value)
        raise TypeError(
            "an attachment is Upload(filename, data, content_type, size) or a tuple "
            f"(filename, bytes[, content_type[, size]]), not {value!r}"
        )


@dataclass
class InteractionRecord:
    """What the stand-in knows about one interaction (guarded by the server's lock)."""

    id: int
    token: str
    type: int
    guild_id: int | None
    channel_id: int
    user_id: int
    payload: dict[str, Any]
    name: str | None = None  # command name, or custom_id for components and modals
    command_type: int = 1  # 1 slash, 3 message context menu
    source_message_id: int | None = None  # the clicked message, for components
    created: float = field(default_factory=time.monotonic)
    response: dict[str, Any] | None = None
    original_id: int | None = None
    deferred_pending: bool = False  # a thinking message waits for its first follow-up
    followup_ids: list[int] = field(default_factory=list)
    expired: bool = False
    modal: dict[str, Any] | None = None
    rejected_callbacks: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self, world: World) -> dict[str, Any]:
        """``interaction_metadata`` for the messages this interaction creates."""
        meta: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "user": world.users[self.user_id].payload(),
            "authorizing_integration_owners": (
                {"0": str(self.guild_id)} if self.guild_id else {"1": str(self.user_id)}
            ),
        }
        if self.type == APPLICATION_COMMAND:
            meta["name"] = self.name
            meta["command_type"] = self.command_type
        if self.source_message_id is not None:
            meta["interacted_message_id"] = str(self.source_message_id)
        return meta


class InteractionHandle:
    """A test's view of one interaction sent to the bot.

    Reads are plain, thread-safe snapshots; the ``wait_*`` coroutines run on the test's loop.
    """

    def __init__(self, fake: FakeDiscord, interaction_id: int) -> None:
        self._fake = fake
        self.id = interaction_id
        with fake._lock:
            rec = fake._interactions[interaction_id]
            self.token: str = rec.token
            self.type: int = rec.type
            self.payload: dict[str, Any] = rec.payload

    def __repr__(self) -> str:
        return f"<InteractionHandle id={self.id} type={self.type} response={self.response_type}>"

    def _rec(self) -> InteractionRecord:
        return self._fake._interactions[self.id]

    # -- snapshots --------------------------------------------------------------------------

    @property
    def response_type(self) -> int | None:
        """The callback type the bot answered with (4, 5, 6, 7, 8, 9), or None."""
        with self._fake._lock:
            rec = self._rec()
            return None if rec.response is None else rec.response["type"]

    def response_now(self) -> dict[str, Any] | None:
        """The callback ``{type, data, files, time}`` if the bot answered, else None."""
        with self._fake._lock:
            rec = self._rec()
            return None if rec.response is None else dict(rec.response)

    def original(self) -> dict[str, Any] | None:
        """The @original message: the thinking message after a defer (``loading`` True until
        the first follow-up or edit), the type-4 message, or the clicked message for 6/7."""
        with self._fake._lock:
            rec = self._rec()
            return None if rec.original_id is None else self._fake.message(rec.original_id)

    def followups(self) -> list[dict[str, Any]]:
        """Messages the bot's follow-ups produced, in order. The first follow-up after a
        defer edits the thinking message, so it is the original (same id)."""
        with self._fake._lock:
            ids = list(dict.fromkeys(self._rec().followup_ids))
            return [m for m in (self._fake.message(i) for i in ids) if m is not None]

    def messages(self) -> list[dict[str, Any]]:
        """The original (if any) and every follow-up, without repeats."""
        with self._fake._lock:
            rec = self._rec()
            ids = ([rec.original_id] if rec.original_id is not None else []) + rec.followup_ids
            ids = list(dict.fromkeys(ids))
            return [m for m in (self._fake.message(i) for i in ids) if m is not None]

    @property
    def ephemeral(self) -> bool | None:
        """Whether the original response is ephemeral (None while there is none)."""
        original = self.original()
        return None if original is None else original["ephemeral"]

    @property
    def modal(self) -> dict[str, Any] | None:
        """The modal the bot opened (callback type 9 data), or None."""
        with self._fake._lock:
            return self._rec().modal

    @property
    def rejected_callbacks(self) -> list[dict[str, Any]]:
        """Callbacks Discord refused (a second acknowledgement, a late one, a bad type)."""
        with self._fake._lock:
            return list(self._rec().rejected_callbacks)

    def expire(self) -> None:
        """Make the token invalid now, as after Discord's 15 minutes."""
        self._fake.expire_token(self.token)

    # -- waiting ----------------------------------------------------------------------------

    async def response(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the bot's callback; returns ``{type, data, files, time}``."""
        return await self._fake.until(
            self.response_now, timeout, f"interaction {self.id}: no callback from the bot"
        )

    async def wait_modal(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the bot answered with a modal (callback type 9); returns its data
        ``{custom_id, title, components}``. Fails at once if it answered otherwise."""

        def check() -> dict[str, Any] | None:
            response = self.response_now()
            if response is not None and response["type"] != MODAL:
                raise AssertionError(
                    f"interaction {self.id} was answered with type "
                    f"{response['type']}, not a modal: {response['data']}"
                )
            return self.modal

        return await self._fake.until(check, timeout, f"interaction {self.id}: no modal")

    def modal_inputs(self) -> dict[str, dict[str, Any]]:
        """The opened modal's inputs by label (Label text, else the input's own label, else
        custom_id): each the component dict (``custom_id``, ``value`` (prefilled),
        ``required``, ``style``...)."""
        modal = self.modal
        if modal is None:
            raise LookupError(f"interaction {self.id} did not open a modal")
        found: dict[str, dict[str, Any]] = {}

        def walk(comp: dict[str, Any], label: str | None) -> None:
            if comp.get("type") == 1:
                for c in comp.get("components", []):
                    walk(c, label)
            elif comp.get("type") == 18:
                walk(comp["component"], comp.get("label"))
            elif comp.get("custom_id") is not None:
                found[label or comp.get("label") or comp["custom_id"]] = comp

        for comp in modal.get("components", []):
            walk(comp, None)
        return found

    async def wait_for(
        self, predicate: Callable[[InteractionHandle], Any], timeout: float = 5.0
    ) -> Any:
        """Wait until ``predicate(handle)`` is truthy and return its value."""
        return await self._fake.until(
            lambda: predicate(self), timeout, f"interaction {self.id}: condition not met"
        )

    async def wait_original(
        self, predicate: Callable[[dict[str, Any]], Any] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait for the @original message (and ``predicate(message)``), return it.

        ``wait_original(lambda m: not m["loading"])`` waits until a defer was replaced.
        """

        def check() -> dict[str, Any] | None:
            msg = self.original()
            return msg if msg is not None and _holds(predicate, msg) else None

        return await self._fake.until(check, timeout, f"interaction {self.id}: @original")

    async def wait_followup(
        self, predicate: Callable[[dict[str, Any]], Any] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait for the first follow-up message satisfying ``predicate``, return it."""

        def check() -> dict[str, Any] | None:
            return next((m for m in self.followups() if _holds(predicate, m)), None)

        return await self._fake.until(check, timeout, f"interaction {self.id}: follow-up")

    async def wait_message(
        self, predicate: Callable[[dict[str, Any]], Any] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait for any message of this interaction satisfying ``predicate``."""

        def check() -> dict[str, Any] | None:
            return next((m for m in self.messages() if _holds(predicate, m)), None)

        return await self._fake.until(check, timeout, f"interaction {self.id}: message")


def _holds(predicate: Callable[[Any], Any] | None, value: Any) -> bool:
    if predicate is None:
        return True
    try:
        return bool(predicate(value))
    except (LookupError, TypeError):
        return False


# -- slash command options ------------------------------------------------------------------


def resolve_command(
    commands: dict[int | None, list[dict[str, Any]]], guild_id: int | None, name: str, kind: int = 1
) -> tuple[dict[str, Any], bool, list[str]]:
    """Find a registered command by ``"name sub group"`` path; returns (command, is_guild, path).

    ``kind`` 1 is a slash command (the name splits into subcommands); 2 (user) and 3 (message)
    are context-menu commands, whose whole name may hold spaces (``"Img2img this"``).
    """
    parts = name.split() if kind == 1 else [name]
    if not parts or not parts[0]:
        raise ValueError("empty command name")
    top = parts[0]
    for scope in ([guild_id] if guild_id is not None else []) + [None]:
        for cmd in commands.get(scope, []):
            if cmd["name"] == top and cmd.get("type", 1) == kind:
                return cmd, scope is not None, parts[1:]
    known = sorted({(c["name"], c.get("type", 1)) for scope in commands.values() for c in scope})
    what = {1: "slash", 2: "user", 3: "message"}.get(kind, str(kind))
    raise LookupError(
        f"no {what} command {top!r} registered for guild {guild_id} or globally "
        f"(registered (name, type): {known}); did the bot sync its command tree?"
    )


def build_options(
    world: World,
    store: MessageStore,
    cmd: dict[str, Any],
    path: list[str],
    values: dict[str, Any],
    *,
    guild_id: int | None,
    user_id: int,
    channel_id: int,
    validate: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``data.options`` tree and ``data.resolved`` for one slash command invocation."""
    schema = cmd.get("options") or []
    wrappers: list[tuple[str, int]] = []
    for part in path:
        node = next((o for o in schema if o["name"] == part and o["type"] in (1, 2)), None)
        if node is None:
            subs = [o["name"] for o in schema if o["type"] in (1, 2)]
            raise LookupError(f"/{cmd['name']} has no subcommand {part!r} here (have {subs})")
        wrappers.append((part, node["type"]))
        schema = node.get("options") or []
    if any(o["type"] in (1, 2) for o in schema):
        subs = [o["name"] for o in schema if o["type"] in (1, 2)]
        raise LookupError(f"/{cmd['name']} needs a subcommand: one of {subs}")

    resolved: dict[str, dict[str, Any]] = {}
    leaf: list[dict[str, Any]] = []
    by_name = {o["name"]: o for o in schema}
    unknown = set(values) - set(by_name)
    if unknown:
        raise ValueError(
            f"/{' '.join([cmd['name'], *path])} has no option(s) {sorted(unknown)}; "
            f"options: {list(by_name)}"
        )
    for opt in schema:
        name = opt["name"]
        if name not in values:
            if validate and opt.get("required"):
                raise ValueError(f"option {name!r} is required")
            continue
        value = _option_value(
            world,
            store,
            opt,
            values[name],
            resolved,
            guild_id=guild_id,
            user_id=user_id,
            channel_id=channel_id,
            validate=validate,
        )
        leaf.append({"name": name, "type": opt["type"], "value": value})

    options = leaf
    for part, kind in reversed(wrappers):
        options = [{"name": part, "type": kind, "options": options}]
    return options, resolved


def _option_value(
    world: World,
    store: MessageStore,
    opt: dict[str, Any],
    value: Any,
    resolved: dict[str, dict[str, Any]],
    *,
    guild_id: int | None,
    user_id: int,
    channel_id: int,
    validate: bool,
) -> Any:
    kind = opt["type"]
    name = opt["name"]
    if not validate and kind in (3, 4, 10) and isinstance(value, str):
        return value  # autocomplete: what the user typed so far
    if kind == 3:
        value = str(value)
        if validate:
            lo, hi = opt.get("min_length"), opt.get("max_length", 6000)
            if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
                raise ValueError(f"option {name!r}: length must be in [{lo}, {hi}]")
    elif kind == 4:
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"option {name!r} is an integer, got {value!r}")
        value = int(value)
    elif kind == 10:
        value = float(value)
    elif kind == 5:
        value = bool(value)
    elif kind in (6, 7, 8, 9):
        return _snowflake_option(world, opt, value, resolved, guild_id=guild_id, user_id=user_id)
    elif kind == 11:
        upload = Upload.coerce(value)
        att = store.host_file(
            channel_id,
            upload.filename,
            upload.data,
            upload.content_type,
            size=upload.size,
            width=upload.width,
            height=upload.height,
        )
        resolved.setdefault("attachments", {})[str(att["id"])] = store.wire_attachment(
            att, ephemeral=True
        )
        return str(att["id"])
    else:
        raise ValueError(f"option {name!r} has unsupported type {kind}")
    if validate and kind in (4, 10):
        lo, hi = opt.get("min_value"), opt.get("max_value")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"option {name!r}: {value} is outside [{lo}, {hi}]")
    choices = opt.get("choices")
    if validate and choices and value not in [c["value"] for c in choices]:
        raise ValueError(f"option {name!r}: {value!r} is not one of the choices {choices}")
    return value


def _snowflake_option(
    world: World,
    opt: dict[str, Any],
    value: Any,
    resolved: dict[str, dict[str, Any]],
    *,
    guild_id: int | None,
    user_id: int,
) -> str:
    kind = opt["type"]
    sid = int(value)
    if kind in (6, 9) and sid in world.users:
        resolved.setdefault("users", {})[str(sid)] = world.users[sid].payload()
        if guild_id is not None and sid in world.guilds[guild_id].members:
            resolved.setdefault("members", {})[str(sid)] = world.member_payload(
                guild_id, sid, with_user=False, with_permissions=True
            )
        return str(sid)
    if kind in (8, 9) and sid in world.roles:
        resolved.setdefault("roles", {})[str(sid)] = world.roles[sid].payload()
        return str(sid)
    if kind == 7 and sid in world.channels:
        channel = world.channels[sid]
        if opt.get("channel_types") and channel.type not in opt["channel_types"]:
            raise ValueError(f"option {opt['name']!r}: channel type {channel.type} not allowed")
        data = channel.payload(world)
        data["permissions"] = str(
            world.member_permissions(guild_id, user_id) if guild_id is not None else 0
        )
        resolved.setdefault("channels", {})[str(sid)] = data
        return str(sid)
    what = {6: "user", 7: "channel", 8: "role", 9: "user or role"}[kind]
    raise ValueError(f"option {opt['name']!r}: no {what} with id {sid}")
