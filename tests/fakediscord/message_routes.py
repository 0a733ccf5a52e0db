"""REST routes that make and change messages: interaction callbacks, interaction webhooks
(follow-ups, @original) and channel messages, with Discord's checks (a part of ``RestApi``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import interactions as ix
from .messages import ApiError, form_error, unknown_message
from .resthelpers import BODY, FILES, _sf, _truthy, json_response, no_content
from .world import MANAGE_MESSAGES, VIEW_CHANNEL

if TYPE_CHECKING:
    from .server import FakeDiscord

SEND_MESSAGES = 1 << 11
ATTACH_FILES = 1 << 15
SEND_IN_THREADS = 1 << 38


class MessageRoutes:
    """Handlers; each runs on the stand-in's loop and takes the lock for state."""

    fake: FakeDiscord

    async def callback(self, request: web.Request) -> web.Response:
        fake = self.fake
        body = request[BODY] or {}
        files = request[FILES]
        with fake._lock:
            rec = fake._interactions.get(_sf(request, "interaction_id"))
            if rec is None or rec.token != request.match_info["token"] or rec.expired:
                if rec is not None:
                    rec.rejected_callbacks.append({"body": body, "code": 10062})
                raise ApiError(404, 10062, "Unknown interaction")
            if rec.response is not None:
                rec.rejected_callbacks.append({"body": body, "code": 40060})
                raise ApiError(400, 40060, "Interaction has already been acknowledged.")
            delay = time.monotonic() - rec.created
            if fake.ack_deadline is not None and delay > fake.ack_deadline:
                # Discord forgets an interaction not acknowledged within 3 s (follow-ups
                # then find no webhook: 404 10015).
                rec.rejected_callbacks.append({"body": body, "code": 10062, "late": True})
                fake._late_acks.append(
                    {
                        "interaction_id": rec.id,
                        "name": rec.name,
                        "type": rec.type,
                        "delay": delay,
                        "body": body,
                    }
                )
                raise ApiError(404, 10062, "Unknown interaction")
            cb_type = body.get("type")
            data = body.get("data") or {}
            if cb_type not in ix.ALLOWED_CALLBACKS.get(rec.type, set()) or (
                cb_type in (ix.DEFERRED_UPDATE_MESSAGE, ix.UPDATE_MESSAGE)
                and rec.source_message_id is None
            ):
                rec.rejected_callbacks.append({"body": body, "code": 50035})
                raise form_error(
                    [
                        (
                            "type",
                            "INTERACTION_RESPONSE_TYPE_INVALID",
                            f"Invalid interaction response type {cb_type!r}",
                        )
                    ]
                )
            store = fake._store
            meta = {"id": rec.id, "token": rec.token, "metadata": rec.metadata(fake._world)}
            msg_type = 20 if rec.type == ix.APPLICATION_COMMAND else 0
            message = None
            if cb_type == ix.CHANNEL_MESSAGE:
                message = store.create(
                    rec.channel_id,
                    data,
                    files,
                    kind="response",
                    interaction=meta,
                    msg_type=msg_type,
                )
                rec.original_id = message["id"]
            elif cb_type == ix.DEFERRED_CHANNEL_MESSAGE:
                flags = 128 | (int(data.get("flags") or 0) & 64)
                message = store.create(
                    rec.channel_id,
                    {},
                    [],
                    kind="deferred",
                    interaction=meta,
                    flags=flags,
                    allow_empty=True,
                    msg_type=msg_type,
                )
                rec.original_id = message["id"]
                rec.deferred_pending = True
            elif cb_type == ix.UPDATE_MESSAGE:
                message = store.get(rec.source_message_id or 0)
                if message is None or message["deleted"]:
                    raise unknown_message()
                store.edit(message, data, files)
                rec.original_id = message["id"]
            elif cb_type == ix.DEFERRED_UPDATE_MESSAGE:
                rec.original_id = rec.source_message_id
            elif cb_type == ix.MODAL:
                rec.modal = data
            rec.response = {
                "type": cb_type,
                "data": data,
                "files": [{"filename": f.filename, "size": len(f.data)} for f in files],
                "time": time.monotonic(),
            }
            wire = None if message is None else store.wire(message)
        if message is not None:
            fake._message_event(message, created=cb_type != ix.UPDATE_MESSAGE)
        fake._notify()
        if not _truthy(request.query.get("with_response")):
            return no_content()
        result: dict[str, Any] = {
            "interaction": {
                "id": str(rec.id),
                "type": rec.type,
                "response_message_loading": cb_type == ix.DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(message and message["ephemeral"]),
            },
            "resource": {"type": cb_type},
        }
        if message is not None:
            result["interaction"]["response_message_id"] = str(message["id"])
            result["resource"]["message"] = wire
        return json_response(result)

    def _webhook_interaction(self, request: web.Request) -> ix.InteractionRecord:
        """The interaction behind a webhook token; 401 50027 when expired, like Discord."""
        self._app_check(request)
        rec = self.fake._interaction_by_token(request.match_info["token"])
        if (
            rec is None
            or rec.expired
            or (time.monotonic() - rec.created > self.fake.token_lifetime)
        ):
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if rec.response is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        return rec

    async def followup(self, request: web.Request) -> web.Response:
        fake = self.fake
        body = request[BODY] or {}
        files = request[FILES]
        with fake._lock:
            rec = self._webhook_interaction(request)
            store = fake._store
            original = store.get(rec.original_id or 0)
            if rec.deferred_pending and original is not None and not original["deleted"]:
                # The first follow-up after a defer fills the thinking message and keeps its
                # visibility, whatever flags it asks for.
                message = store.edit(original, body, files)
                created = False
            else:
                meta = {"id": rec.id, "token": rec.token, "metadata": rec.metadata(fake._world)}
                msg_type = 20 if rec.type == ix.APPLICATION_COMMAND else 0
                message = store.create(
                    rec.channel_id,
                    body,
                    files,
                    kind="followup",
                    interaction=meta,
                    msg_type=msg_type,
                )
                created = True
            rec.deferred_pending = False
            rec.followup_ids.append(message["id"])
            wire = store.wire(message)
        fake._message_event(message, created=created)
        fake._notify()
        if not _truthy(request.query.get("wait")):
            return no_content()
        return json_response(wire)

    async def webhook_message(self, request: web.Request) -> web.Response:
        fake = self.fake
        with fake._lock:
            rec = self._webhook_interaction(request)
            store = fake._store
            mid = request.match_info["message_id"]
            if mid == "@original":
                message = store.get(rec.original_id or 0)
            else:
                message = store.get(int(mid)) if mid.isdigit() else None
                if message is not None and message["id"] not in (
                    rec.original_id,
                    *rec.followup_ids,
                ):
                    message = None
            if message is None or message["deleted"]:
                raise unknown_message()
            if request.method == "GET":
                return json_response(store.wire(message))
            if request.method == "DELETE":
                store.delete(message)
                result = None
            else:
                store.edit(message, request[BODY] or {}, request[FILES])
                if message["id"] == rec.original_id:
                    rec.deferred_pending = False
                result = store.wire(message)
        fake._message_event(message, created=False, deleted=result is None)
        fake._notify()
        return no_content() if result is None else json_response(result)

    # -- channels and messages --------------------------------------------------------------

    def _channel(self, request: web.Request, need: int = 0) -> Any:
        """The channel in the path, if the bot may see it (403 50001 otherwise) and has the
        permission bits ``need`` there (403 50013 otherwise), computed like Discord."""
        fake = self.fake
        channel = fake._world.channels.get(_sf(request, "channel_id"))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        if channel.id in fake._denied_channels:
            raise ApiError(403, 50013, "Missing Permissions")
        if channel.guild_id is not None:
            perms = fake._world.channel_permissions(channel.id, fake.bot_user_id)
            if not perms & VIEW_CHANNEL:
                raise ApiError(403, 50001, "Missing Access")
            if perms & need != need:
                raise ApiError(403, 50013, "Missing Permissions")
        return channel

    def _send_bit(self, request: web.Request) -> int:
        channel = self.fake._world.channels.get(_sf(request, "channel_id"))
        return SEND_IN_THREADS if channel is not None and channel.is_thread else SEND_MESSAGES

    def _channel_msg(self, request: web.Request) -> dict[str, Any]:
        channel = self._channel(request)
        mid = request.match_info["message_id"]
        message = self.fake._store.get(int(mid)) if mid.isdigit() else None
        if (
            message is None
            or message["deleted"]
            or message["ephemeral"]
            or message["channel_id"] != channel.id
        ):
            raise unknown_message()
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            return json_response(self._channel(request).payload(self.fake._world))

    async def channel_history(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            channel = self._channel(request)
            limit = int(request.query.get("limit", 50))
            found = [
                m
                for m in self.fake._store.records.values()
                if m["channel_id"] == channel.id and not m["deleted"] and not m["ephemeral"]
            ]
            found.sort(key=lambda m: m["id"], reverse=True)
            return json_response([self._wire(m) for m in found[:limit]])

    async def create_message(self, request: web.Request) -> web.Response:
        fake = self.fake
        body = request[BODY] or {}
        with fake._lock:
            need = self._send_bit(request) | (ATTACH_FILES if request[FILES] else 0)
            channel = self._channel(request, need)
            if channel.type == 1 and channel.recipient_id in fake._closed_dms:
                raise ApiError(403, 50007, "Cannot send messages to this user")
            ref = body.get("message_reference")
            target = None
            if ref:
                target = fake._store.get(int(ref.get("message_id") or 0))
                if target is None or target["deleted"] or target["ephemeral"]:
                    target = None
                    if ref.get("fail_if_not_exists", True):
                        raise form_error(
                            [
                                (
                                    "message_reference",
                                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                                    "Unknown message",
                                )
                            ]
                        )
            message = fake._store.create(
                channel.id,
                body,
                request[FILES],
                kind="channel",
                msg_type=19 if target is not None else 0,
            )
            if target is not None:
                message["message_reference"] = {
                    "message_id": target["id"],
                    "channel_id": target["channel_id"],
                    "guild_id": target["guild_id"],
                }
            wire = fake._store.wire(message)
        fake._message_event(message, created=True)
        fake._notify()
        return json_response(wire)

    async def channel_message(self, request: web.Request) -> web.Response:
        fake = self.fake
        with fake._lock:
            message = self._channel_msg(request)
            if request.method == "GET":
                return json_response(self._wire(message))
            mine = message["author_id"] == fake.bot_user_id
            if not mine and request.method == "PATCH":
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            if (
                not mine
                and request.method == "DELETE"
                and message["guild_id"] is not None
                and (
                    not fake._world.channel_permissions(message["channel_id"], fake.bot_user_id)
                    & MANAGE_MESSAGES
                )
            ):
                raise ApiError(403, 50013, "Missing Permissions")
            if request.method == "DELETE":
                fake._store.delete(message)
                result = None
            else:
                fake._store.edit(message, request[BODY] or {}, request[FILES])
                result = self._wire(message)
        fake._message_event(message, created=False, deleted=result is None)
        fake._notify()
        return no_content() if result is None else json_response(result)

    async def typing(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            self._channel(request)
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            self._channel_msg(request)
        return no_content()
