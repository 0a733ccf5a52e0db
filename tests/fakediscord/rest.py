"""The REST side: routes under /api/v10, the CDN route for attachments, call recording."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import interactions as ix
from . import schema
from .messages import ApiError, UploadedFile, form_error, unknown_message
from .world import MANAGE_MESSAGES, VIEW_CHANNEL

SEND_MESSAGES = 1 << 11
ATTACH_FILES = 1 << 15
SEND_IN_THREADS = 1 << 38

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
_RequestKey = getattr(web, "RequestKey", None)  # aiohttp >= 3.13 wants typed keys
BODY: Any = _RequestKey("body", object) if _RequestKey else "body"
FILES: Any = _RequestKey("files", list) if _RequestKey else "files"
_FILE_FIELD = re.compile(r"^files\[(\d+)\]$|^file(\d*)$")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with the content type exactly ``application/json`` (discord.py compares it)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _sf(request: web.Request, key: str) -> int:
    """A snowflake from the path; Discord answers 400 for anything else."""
    value = request.match_info[key]
    if not value.isdigit():
        raise form_error([(key, "NUMBER_TYPE_COERCE", f'Value "{value}" is not snowflake.')])
    return int(value)


def no_content() -> web.Response:
    return web.Response(status=204)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


async def parse_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    """JSON body, or multipart ``payload_json`` plus ``files[n]`` parts."""
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        form = await request.post()
        body: Any = None
        files: list[UploadedFile] = []
        for name, value in form.items():
            if isinstance(value, web.FileField):
                match = _FILE_FIELD.match(name)
                index = int(next((g for g in match.groups() if g), 0)) if match else len(files)
                files.append(
                    UploadedFile(
                        index=index,
                        filename=value.filename,
                        data=value.file.read(),
                        content_type=value.content_type,
                    )
                )
            elif name == "payload_json":
                raw = value if isinstance(value, str) else bytes(value).decode()
                body = json.loads(raw)
        return body, files
    raw = await request.read()
    if not raw:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from None


class RestApi:
    """Route handlers; each runs on the stand-in's loop and takes the lock for state."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=512 * 1024 * 1024)
        r = app.router
        p = API_PREFIX
        r.add_get("/gateway", self.fake._gateway.handle)
        r.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.cdn)
        r.add_get("/media/attachments/{channel_id}/{attachment_id}/{filename}", self.cdn)
        r.add_get(p + "/gateway", self.get_gateway)
        r.add_get(p + "/gateway/bot", self.get_gateway)
        r.add_get(p + "/users/@me", self.get_me)
        r.add_post(p + "/users/@me/channels", self.create_dm)
        r.add_get(p + "/users/{user_id}", self.get_user)
        r.add_get(p + "/oauth2/applications/@me", self.get_app)
        r.add_get(p + "/applications/@me", self.get_app)
        for scope in ("", "/guilds/{guild_id}"):
            base = p + "/applications/{app_id}" + scope + "/commands"
            r.add_get(base, self.get_commands)
            r.add_put(base, self.put_commands)
            r.add_post(base, self.post_command)
            r.add_get(base + "/{command_id}", self.get_command)
            r.add_patch(base + "/{command_id}", self.patch_command)
            r.add_delete(base + "/{command_id}", self.delete_command)
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self.callback)
        hook = p + "/webhooks/{app_id}/{token}"
        r.add_post(hook, self.followup)
        r.add_get(hook + "/messages/{message_id}", self.webhook_message)
        r.add_patch(hook + "/messages/{message_id}", self.webhook_message)
        r.add_delete(hook + "/messages/{message_id}", self.webhook_message)
        r.add_get(p + "/channels/{channel_id}", self.get_channel)
        r.add_get(p + "/channels/{channel_id}/messages", self.channel_history)
        r.add_post(p + "/channels/{channel_id}/messages", self.create_message)
        r.add_post(p + "/channels/{channel_id}/typing", self.typing)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self.channel_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self.channel_message)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self.channel_message)
        r.add_put(
            p + "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
            self.add_reaction,
        )
        r.add_get(p + "/guilds/{guild_id}", self.get_guild)
        r.add_get(p + "/guilds/{guild_id}/channels", self.get_guild_channels)
        r.add_get(p + "/guilds/{guild_id}/roles", self.get_guild_roles)
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self.get_member)
        return app

    # -- plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Parse the body, check auth, run the handler, record the call.

        The handler runs and the call is recorded under the stand-in's lock, so a test never
        sees the effect of a request without its ``Call`` (or the reverse). Handlers therefore
        never await: everything they need was read before.
        """
        path = request.path
        if path == "/gateway":
            return await handler(request)
        fake = self.fake
        api = path.startswith(API_PREFIX + "/")
        short = path[len(API_PREFIX) :] if api else path
        fake._request_started()
        try:
            response = await self._handle(request, handler, api, short)
            # Written here so ``settle()`` knows when the answer has left.
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            fake._request_finished()

    async def _handle(
        self, request: web.Request, handler: Any, api: bool, short: str
    ) -> web.StreamResponse:
        fake = self.fake
        body: Any = None
        files: list[UploadedFile] = []
        parse_error: ApiError | None = None
        try:
            body, files = await parse_body(request)
        except ApiError as exc:
            parse_error = exc
        except web.HTTPRequestEntityTooLarge:
            parse_error = ApiError(413, 40005, "Request entity too large")
        except Exception as exc:
            parse_error = ApiError(400, 50109, f"The request body is not valid: {exc!r}")
        request[BODY], request[FILES] = body, files
        with fake._lock:
            unknown = False
            try:
                route_error = getattr(request.match_info, "http_exception", None)
                if route_error is not None:
                    raise route_error
                injected = fake._take_injected(request.method, short)
                if parse_error is not None:
                    raise parse_error
                if injected is not None:
                    response = injected
                elif (
                    api
                    and not self._public(short)
                    and (request.headers.get("Authorization") != f"Bot {fake.token}")
                ):
                    response = json_response({"message": "401: Unauthorized", "code": 0}, 401)
                else:
                    self._check_schema(request.method, short, body, api)
                    response = await handler(request)
            except ApiError as exc:
                response = json_response(exc.body, exc.status)
            except web.HTTPNotFound:
                unknown = True
                response = json_response({"message": "404: Not Found", "code": 0}, 404)
            except web.HTTPMethodNotAllowed:
                unknown = True
                response = json_response({"message": "405: Method Not Allowed", "code": 0}, 405)
            except Exception as exc:  # a bug in the stand-in: tell the bot and the test
                fake._record_internal_error(request.method, short, exc)
                response = json_response(
                    {"message": f"fakediscord internal error: {exc!r}", "code": 0}, 400
                )
            fake._record_call(
                method=request.method,
                path=short,
                body=body,
                status=response.status,
                query=dict(request.query),
                files=files,
                unknown=unknown,
            )
        return response

    def _check_schema(self, method: str, short: str, body: Any, api: bool) -> None:
        """400 50035 for a body Discord's OpenAPI schema rejects; recorded for the test."""
        fake = self.fake
        if not (api and fake.validate_bodies and method in ("POST", "PUT", "PATCH")):
            return
        route, errors = schema.validate_body(method, short, body)
        if not errors:
            return
        fake._invalid_bodies.append(
            {
                "method": method,
                "path": short,
                "route": route,
                "body": body,
                "errors": [schema.describe(e) for e in errors],
            }
        )
        log.warning(
            "fakediscord: %s %s refused by the spec: %s",
            method,
            short,
            "; ".join(schema.describe(e) for e in errors),
        )
        raise ApiError(400, 50035, "Invalid Form Body", schema.discord_errors(errors))

    @staticmethod
    def _public(short: str) -> bool:
        """Webhook and interaction routes carry their token in the path, not a bot token."""
        return short.startswith(("/webhooks/", "/interactions/"))

    def _app_check(self, request: web.Request) -> None:
        if _sf(request, "app_id") != self.fake.application_id:
            raise ApiError(403, 50001, "Missing Access")

    def _wire(self, rec: dict[str, Any]) -> dict[str, Any]:
        return self.fake._store.wire(rec)

    # -- gateway, users, application --------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        data: dict[str, Any] = {"url": self.fake.gateway_url}
        if request.path.endswith("/bot"):
            data.update(
                shards=1,
                session_start_limit={
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            )
        return json_response(data)

    async def get_me(self, request: web.Request) -> web.Response:
        data = self.fake.bot_user
        data.update(verified=True, mfa_enabled=False, email=None, locale="en-US")
        return json_response(data)

    async def get_user(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            user = self.fake._world.users.get(_sf(request, "user_id"))
            if user is None:
                raise ApiError(404, 10013, "Unknown User")
            return json_response(user.payload())

    async def get_app(self, request: web.Request) -> web.Response:
        return json_response(self.fake._app_info())

    async def create_dm(self, request: web.Request) -> web.Response:
        body = request[BODY] or {}
        with self.fake._lock:
            try:
                channel = self.fake._world.dm_channel(int(body.get("recipient_id") or 0))
            except KeyError:
                raise ApiError(400, 50007, "Cannot send messages to this user") from None
            return json_response(channel.payload(self.fake._world))

    # -- application commands ---------------------------------------------------------------

    def _scope(self, request: web.Request) -> int | None:
        self._app_check(request)
        gid = request.match_info.get("guild_id")
        if gid is None:
            return None
        if _sf(request, "guild_id") not in self.fake._world.guilds:
            raise ApiError(403, 50001, "Missing Access")
        return int(gid)

    async def get_commands(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            return json_response(list(self.fake._commands.get(self._scope(request), [])))

    async def put_commands(self, request: web.Request) -> web.Response:
        body = request[BODY]
        if not isinstance(body, list):
            raise form_error([("_root", "BASE_TYPE_ARRAY", "Must be an array.")])
        with self.fake._lock:
            scope = self._scope(request)
            old = {(c["name"], c.get("type", 1)): c for c in self.fake._commands.get(scope, [])}
            result = [
                self.fake._stored_command(cmd, scope, old.get((cmd["name"], cmd.get("type", 1))))
                for cmd in body
            ]
            self.fake._commands[scope] = result
        self.fake._notify()
        return json_response(result)

    async def post_command(self, request: web.Request) -> web.Response:
        cmd = request[BODY] or {}
        with self.fake._lock:
            scope = self._scope(request)
            existing = self.fake._commands.setdefault(scope, [])
            key = (cmd.get("name"), cmd.get("type", 1))
            old = next((c for c in existing if (c["name"], c.get("type", 1)) == key), None)
            stored = self.fake._stored_command(cmd, scope, old)
            if old is not None:
                existing[existing.index(old)] = stored
            else:
                existing.append(stored)
        self.fake._notify()
        return json_response(stored, 200 if old is not None else 201)

    def _find_command(self, request: web.Request) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        scope = self._scope(request)
        existing = self.fake._commands.setdefault(scope, [])
        cid = request.match_info["command_id"]
        cmd = next((c for c in existing if c["id"] == cid), None)
        if cmd is None:
            raise ApiError(404, 10063, "Unknown application command")
        return existing, cmd

    async def get_command(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            return json_response(self._find_command(request)[1])

    async def patch_command(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            existing, cmd = self._find_command(request)
            merged = {**cmd, **(request[BODY] or {})}
            stored = self.fake._stored_command(merged, self._scope(request), cmd)
            existing[existing.index(cmd)] = stored
            return json_response(stored)

    async def delete_command(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            existing, cmd = self._find_command(request)
            existing.remove(cmd)
        return no_content()

    # -- interactions -----------------------------------------------------------------------

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
                # Discord forgets an interaction not acknowledged within 3 s.
                rec.expired = True
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

    # -- guilds -----------------------------------------------------------------------------

    def _guild_id(self, request: web.Request) -> int:
        gid = _sf(request, "guild_id")
        if gid not in self.fake._world.guilds:
            raise ApiError(404, 10004, "Unknown Guild")
        return gid

    async def get_guild(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            world = self.fake._world
            gid = self._guild_id(request)
            data = world.guild_payload(gid)
            data["approximate_member_count"] = len(world.guilds[gid].members)
            return json_response(data)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            world = self.fake._world
            guild = world.guilds[self._guild_id(request)]
            return json_response([world.channels[c].payload() for c in guild.channels])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            world = self.fake._world
            guild = world.guilds[self._guild_id(request)]
            return json_response([world.roles[r].payload() for r in guild.roles])

    async def get_member(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            world = self.fake._world
            gid = self._guild_id(request)
            uid = _sf(request, "user_id")
            if uid not in world.guilds[gid].members:
                raise ApiError(404, 10007, "Unknown Member")
            return json_response(world.member_payload(gid, uid))

    # -- CDN --------------------------------------------------------------------------------

    async def cdn(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            blob = self.fake._store.blob(_sf(request, "attachment_id"))
        if blob is None:
            return web.Response(status=404, text="Not Found")
        data, content_type = blob
        return web.Response(body=data, content_type=content_type)
