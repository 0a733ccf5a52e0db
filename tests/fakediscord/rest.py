"""The REST side: routes under /api/v10, the CDN route for attachments, call recording."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import schema
from .message_routes import MessageRoutes
from .messages import ApiError, UploadedFile, form_error
from .resthelpers import _FILE_FIELD, API_PREFIX, BODY, FILES, _sf, json_response, no_content

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger(__name__)


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


class RestApi(MessageRoutes):
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
        r.add_get(p + "/guilds/{guild_id}/threads/active", self.get_active_threads)
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

    async def get_active_threads(self, request: web.Request) -> web.Response:
        with self.fake._lock:
            world = self.fake._world
            guild = world.guilds[self._guild_id(request)]
            threads = [world.channels[t].payload() for t in guild.threads]
            return json_response({"threads": threads, "members": []})

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
