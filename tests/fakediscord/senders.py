"""Interactions a test sends as a user would: slash and message commands, autocomplete,
clicks and modal submits (a part of ``FakeDiscord``)."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from . import interactions as ix
from .interactions import InteractionHandle, InteractionRecord, Upload
from .messages import walk_components
from .modals import modal_submit_data
from .world import DEFAULT_BOT_PERMISSIONS, VIEW_CHANNEL

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class Senders:
    """``FakeDiscord``'s user side: it builds INTERACTION_CREATE payloads like Discord's."""

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
            data = modal_submit_data(self._store, origin.channel_id, modal, values)
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
