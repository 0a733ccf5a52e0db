"""The stand-in's world: users, guilds, roles, channels, members, and their wire payloads.

Ids are ints here and strings on the wire, as on Discord. Everything in this module is plain
data; the server guards it with its lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits used here (see discord.Permissions for the full list).
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 53) - 1
DEFAULT_BOT_PERMISSIONS = (
    (1 << 6)  # add reactions
    | (1 << 10)  # view channel
    | (1 << 11)  # send messages
    | (1 << 14)  # embed links
    | (1 << 15)  # attach files
    | (1 << 16)  # read message history
    | (1 << 18)  # use external emojis
    | (1 << 31)  # use application commands
    | (1 << 38)  # send messages in threads
)
VIEW_CHANNEL = 1 << 10
MANAGE_MESSAGES = 1 << 13
DEFAULT_EVERYONE_PERMISSIONS = (
    (1 << 6) | (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
)

# Gateway intents that change what the stand-in sends.
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12


class Snowflakes:
    """Increasing snowflake ids whose timestamps are the real current time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            candidate = (ms << 22) | (next(self._counter) & 0xFFF)
            if candidate <= self._last:
                candidate = self._last + 1
            self._last = candidate
            return candidate


def iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass
class User:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name if self.global_name is not None else self.name,
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


THREAD_TYPES = (10, 11, 12)  # announcement, public, private thread


@dataclass
class Overwrite:
    """A channel permission overwrite: ``type`` 0 for a role, 1 for a member."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class Channel:
    id: int
    name: str
    guild_id: int | None = None
    type: int = 0
    position: int = 0
    recipient_id: int | None = None  # DM channels only
    nsfw: bool = False
    overwrites: list[Overwrite] = field(default_factory=list)
    parent_id: int | None = None  # threads: their channel
    owner_id: int | None = None  # threads: who started it
    created: str = field(default_factory=iso_now)

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def payload(self, world: World | None = None) -> dict[str, Any]:
        if self.type == 1:
            recipients = []
            if world is not None and self.recipient_id in world.users:
                recipients = [world.users[self.recipient_id].payload()]
            return {
                "id": str(self.id),
                "type": 1,
                "recipients": recipients,
                "last_message_id": None,
                "flags": 0,
            }
        if self.is_thread:
            return {
                "id": str(self.id),
                "type": self.type,
                "guild_id": str(self.guild_id),
                "parent_id": str(self.parent_id),
                "owner_id": str(self.owner_id),
                "name": self.name,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "message_count": 0,
                "member_count": 1,
                "total_message_sent": 0,
                "flags": 0,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": self.created,
                    "locked": False,
                    "invitable": self.type != 12,
                    "create_timestamp": self.created,
                },
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "topic": None,
            "nsfw": self.nsfw,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }


@dataclass
class Member:
    user_id: int
    guild_id: int
    roles: list[int] = field(default_factory=list)
    permissions: int = 0  # extra bits reported in interaction payloads
    joined_at: str = field(default_factory=iso_now)
    nick: str | None = None


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    bot_role_id: int | None = None
    channels: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    joined_at: str = field(default_factory=iso_now)


class World:
    """All guilds, users, roles and channels the stand-in knows."""

    def __init__(self, snowflakes: Snowflakes) -> None:
        self.ids = snowflakes
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.roles: dict[int, Role] = {}
        self.channels: dict[int, Channel] = {}
        self.dm_channels: dict[int, int] = {}  # user id -> channel id

    # -- building ---------------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False, user_id: int | None = None) -> User:
        user = User(id=user_id or self.ids.next(), name=name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, owner_id: int, bot_user_id: int, bot_permissions: int) -> Guild:
        guild = Guild(id=self.ids.next(), name=name, owner_id=owner_id)
        self.guilds[guild.id] = guild
        everyone = Role(
            id=guild.id,
            guild_id=guild.id,
            name="@everyone",
            permissions=DEFAULT_EVERYONE_PERMISSIONS,
            position=0,
        )
        self.roles[everyone.id] = everyone
        guild.roles.append(everyone.id)
        bot_name = self.users[bot_user_id].name
        bot_role = self.add_role(guild.id, bot_name, bot_permissions)
        bot_role.managed = True
        bot_role.bot_id = bot_user_id
        guild.bot_role_id = bot_role.id
        self.add_member(guild.id, bot_user_id, roles=[bot_role.id])
        if owner_id in self.users and owner_id not in guild.members:
            self.add_member(guild.id, owner_id)
        return guild

    def add_role(self, guild_id: int, name: str, permissions: int = 0) -> Role:
        guild = self.guilds[guild_id]
        role = Role(
            id=self.ids.next(),
            guild_id=guild_id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),
        )
        self.roles[role.id] = role
        guild.roles.append(role.id)
        return role

    def add_channel(
        self,
        guild_id: int,
        name: str,
        type: int = 0,
        *,
        nsfw: bool = False,
        hidden: bool = False,
        bot_user_id: int | None = None,
    ) -> Channel:
        """A guild channel; ``hidden`` denies @everyone View Channel and lets the bot in (as
        an admin does when adding a bot to a private channel)."""
        guild = self.guilds[guild_id]
        if type in THREAD_TYPES or type == 1:
            raise ValueError(f"channel type {type}: use add_thread / dm_channel")
        channel = Channel(
            id=self.ids.next(),
            name=name,
            guild_id=guild_id,
            type=type,
            position=len(guild.channels),
            nsfw=nsfw,
        )
        if hidden:
            channel.overwrites.append(Overwrite(id=guild_id, type=0, deny=VIEW_CHANNEL))
            if bot_user_id is not None:
                channel.overwrites.append(Overwrite(id=bot_user_id, type=1, allow=VIEW_CHANNEL))
        self.channels[channel.id] = channel
        guild.channels.append(channel.id)
        return channel

    def add_thread(
        self, parent_id: int, name: str, *, private: bool = False, owner_id: int
    ) -> Channel:
        parent = self.channels[parent_id]
        if parent.guild_id is None or parent.is_thread:
            raise ValueError(f"channel {parent_id} cannot hold threads")
        thread = Channel(
            id=self.ids.next(),
            name=name,
            guild_id=parent.guild_id,
            type=12 if private else 11,
            parent_id=parent_id,
            owner_id=owner_id,
        )
        self.channels[thread.id] = thread
        self.guilds[parent.guild_id].threads.append(thread.id)
        return thread

    def set_overwrite(
        self, channel_id: int, target_id: int, target_type: int, *, allow: int = 0, deny: int = 0
    ) -> Channel:
        """Add to (or create) the overwrite for a role (0) or member (1) on a channel."""
        channel = self.channels[channel_id]
        if channel.is_thread or channel.guild_id is None:
            raise ValueError("overwrites belong to guild channels (threads use their parent's)")
        ow = next((o for o in channel.overwrites if o.id == target_id), None)
        if ow is None:
            ow = Overwrite(id=target_id, type=target_type)
            channel.overwrites.append(ow)
        ow.allow = (ow.allow | allow) & ~deny
        ow.deny = (ow.deny | deny) & ~allow
        return channel

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        *,
        permissions: int = 0,
        roles: list[int] | None = None,
        nick: str | None = None,
    ) -> Member:
        guild = self.guilds[guild_id]
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}; add_user first")
        for role_id in roles or []:
            if role_id not in guild.roles:
                raise KeyError(f"role {role_id} is not in guild {guild_id}")
        roles = list(roles or [])
        if permissions:
            # A role of its own, so the bits show in discord.py's permissions_for() too,
            # as on Discord where permissions always come from roles.
            roles.append(
                self.add_role(guild_id, f"{self.users[user_id].name} perms", permissions).id
            )
        member = Member(user_id=user_id, guild_id=guild_id, roles=roles, nick=nick)
        guild.members[user_id] = member
        return member

    def dm_channel(self, user_id: int) -> Channel:
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}")
        channel_id = self.dm_channels.get(user_id)
        if channel_id is None:
            channel = Channel(id=self.ids.next(), name="", type=1, recipient_id=user_id)
            self.channels[channel.id] = channel
            self.dm_channels[user_id] = channel.id
            return channel
        return self.channels[channel_id]

    # -- permissions ------------------------------------------------------------------------

    def member_permissions(self, guild_id: int, user_id: int) -> int:
        guild = self.guilds[guild_id]
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        member = guild.members.get(user_id)
        perms = self.roles[guild.id].permissions
        if member is not None:
            perms |= member.permissions
            for role_id in member.roles:
                perms |= self.roles[role_id].permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def channel_permissions(self, channel_id: int, user_id: int) -> int:
        """A member's permissions in a channel, overwrites applied the way Discord does
        (threads use their parent's; DMs: everything a DM allows)."""
        channel = self.channels[channel_id]
        if channel.guild_id is None:
            return ALL_PERMISSIONS
        if channel.is_thread and channel.parent_id is not None:
            channel = self.channels[channel.parent_id]
        perms = self.member_permissions(channel.guild_id, user_id)
        if perms == ALL_PERMISSIONS:
            return perms
        guild = self.guilds[channel.guild_id]
        member = guild.members.get(user_id)
        by_id = {o.id: o for o in channel.overwrites}
        everyone = by_id.get(guild.id)
        if everyone is not None:
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.roles if member is not None else []:
            ow = by_id.get(role_id)
            if ow is not None and ow.type == 0:
                allow, deny = allow | ow.allow, deny | ow.deny
        perms = (perms & ~deny) | allow
        own = by_id.get(user_id)
        if own is not None and own.type == 1:
            perms = (perms & ~own.deny) | own.allow
        if not perms & VIEW_CHANNEL:
            return 0
        return perms

    # -- payloads ---------------------------------------------------------------------------

    def member_payload(
        self, guild_id: int, user_id: int, *, with_user: bool = True, with_permissions: bool = False
    ) -> dict[str, Any]:
        guild = self.guilds[guild_id]
        member = guild.members.get(user_id) or Member(user_id=user_id, guild_id=guild_id)
        data: dict[str, Any] = {
            "roles": [str(r) for r in member.roles],
            "nick": member.nick,
            "avatar": None,
            "banner": None,
            "joined_at": member.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.users[user_id].payload()
        if with_permissions:
            data["permissions"] = str(self.member_permissions(guild_id, user_id))
        return data

    def guild_payload(self, guild_id: int) -> dict[str, Any]:
        guild = self.guilds[guild_id]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "roles": [self.roles[r].payload() for r in guild.roles],
            "emojis": [],
            "stickers": [],
            "features": [],
        }

    def guild_create_payload(self, guild_id: int, bot_user_id: int, intents: int) -> dict[str, Any]:
        guild = self.guilds[guild_id]
        data = self.guild_payload(guild_id)
        if intents & INTENT_GUILD_MEMBERS:
            member_ids = list(guild.members)
        else:  # like Discord: without the members intent only the bot itself comes along
            member_ids = [bot_user_id] if bot_user_id in guild.members else []
        data.update(
            {
                "unavailable": False,
                "large": False,
                "lazy": True,
                "joined_at": guild.joined_at,
                "member_count": len(guild.members),
                "members": [self.member_payload(guild_id, uid) for uid in member_ids],
                "channels": [self.channels[c].payload() for c in guild.channels],
                "threads": [self.channels[t].payload() for t in guild.threads],
                "presences": [],
                "voice_states": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "embedded_activities": [],
            }
        )
        return data
