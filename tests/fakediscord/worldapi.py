"""The test's side of the world: guilds, channels, threads, members, permissions, commands
and stored messages (a part of ``FakeDiscord``)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import interactions as ix
from .interactions import Upload
from .world import DEFAULT_BOT_PERMISSIONS, VIEW_CHANNEL

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class WorldApi:
    """``FakeDiscord``'s world building and reading (ints in, ints out)."""

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
