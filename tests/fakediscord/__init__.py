"""A local Discord stand-in for end-to-end tests of the real discord.py client.

An aiohttp server on 127.0.0.1 that speaks enough of Discord's REST API and gateway for a
``commands.Bot`` with app commands, buttons (DynamicItem), modals and file uploads, and
records what the bot sent. It runs in its own thread with its own event loop, so a stalled
bot loop cannot hide late heartbeats, and heartbeat arrival times are measured on that thread.
Wire facts it follows: /work/shared/docs/discord-wire.md (checked against discord.py 2.7.1).

Quick start::

    from tests.fakediscord import FakeDiscord, Upload

    async def test_something():
        async with FakeDiscord(heartbeat_interval=200) as fd:
            guild = fd.add_guild("g")
            channel = fd.add_channel(guild, "general")
            alice = fd.add_user("alice")
            fd.add_member(guild, alice)
            # The bot under test: settings DISCORD_API_BASE=fd.api_base and
            # DISCORD_GATEWAY_URL=fd.gateway_url (or ``with fd.patch_discord():``), token
            # fd.token, and a small ``guild_ready_timeout`` (e.g. 0.05) on the Bot, or on_ready
            # comes 2 s after the last GUILD_CREATE.
            task = asyncio.create_task(bot.start(fd.token))
            await fd.wait_ready()
            await bot.wait_until_ready()
            await fd.until(lambda: fd.commands(), what="command sync")
            h = await fd.send_slash(guild, channel, alice, "img2img", {"strength": 0.5},
                                    attachments={"image": ("in.png", png_bytes, "image/png")})
            assert (await h.response())["type"] == 5           # deferred
            msg = await h.wait_original(lambda m: not m["loading"])
            out = fd.attachment_bytes(msg)
            click = await fd.click(msg["id"], msg["components"][0]["components"][0]["custom_id"],
                                   alice)
            ...
            await fd.settle()          # let the bot read its last answers
            await bot.close(); await task                       # before the stand-in stops

Construction and lifetime
    ``FakeDiscord(token="test-token", *, bot_name="TestBot", bot_user_id=None,
    application_id=None (= bot user id), heartbeat_interval=41250 (ms), attachment_size_limit=
    10 MiB, host="127.0.0.1", port=0)``; ``start()``/``stop()`` (blocking, return quickly),
    ``await astart()``/``await astop()``, ``async with``/``with``. Stop the bot first.
    Attributes: ``token, bot_user_id, application_id, owner_id`` (the application owner user),
    ``heartbeat_interval`` (ms, per new connection), ``ack_heartbeats`` (False: no op 11),
    ``dispatch_message_events`` (MESSAGE_CREATE/UPDATE/DELETE for visible bot messages when
    the bot's intents include guild/DM messages; default True).
    Properties: ``api_base`` (http://127.0.0.1:PORT/api/v10), ``gateway_url``
    (ws://127.0.0.1:PORT/gateway), ``http_base``, ``port``, ``bot_user`` (payload dict).
    ``patch_discord()``: context manager setting discord.http.Route.BASE and
    DiscordWebSocket.DEFAULT_GATEWAY, restoring them afterwards.

World (ints in, ints out; strings on the wire)
    ``add_user(name, *, bot=False) -> user_id``;
    ``add_guild(name, owner_id=None, *, bot_permissions=DEFAULT_BOT_PERMISSIONS) -> guild_id``
    (roles: @everyone with id == guild id, and the bot's managed role; the owner, by default
    ``owner_id``, is a member with every permission); ``add_channel(guild_id, name, *, type=0,
    nsfw=False, hidden=False) -> channel_id`` (``nsfw``: age-restricted, ``channel.is_nsfw()``;
    ``hidden``: overwrite ``{id: GUILD_ID, type: 0, deny: VIEW_CHANNEL}`` for @everyone plus a
    member overwrite allowing the bot, like a private channel the bot was added to);
    ``allow_channel_view(channel_id, user_id)`` (member overwrite allowing View Channel);
    ``set_channel_permissions(channel_id, role_or_user_id, *, allow=0, deny=0)`` (any
    overwrite); ``channel_permissions(channel_id, user_id)`` (computed like Discord: roles,
    then @everyone/role/member overwrites; threads use their parent's);
    ``add_thread(parent_channel_id, name, *, private=False, owner_id=None) -> thread_id``
    (type 11/12 with ``parent_id``, in GUILD_CREATE ``threads``, THREAD_CREATE after READY;
    slash commands, clicks and channel routes work in it);
    ``add_role(guild_id, name, permissions=0) -> role_id``;
    ``add_member(guild_id, user_id, *, permissions=0, roles=None, nick=None)`` (``permissions``
    are extra bits, given through a role of the member's own so discord.py's
    ``permissions_for`` agrees with ``interaction.permissions``); ``dm_channel_id(user_id)``;
    ``close_dms(user_id, closed=True)`` (posting in their DM answers 403 50007);
    ``member_permissions(guild_id, user_id)``; ``deny_channel(channel_id, denied=True)``
    (channel routes answer 403 50013). Channel routes also check the bot's own channel
    permissions: no View Channel 403 50001, no Send Messages (in threads: Send Messages in
    Threads) or Attach Files 403 50013; deleting another user's message needs Manage
    Messages. Interaction payloads carry the member's and the app's permissions *in that
    channel*. Added after READY, they are dispatched (GUILD_CREATE, CHANNEL_CREATE/UPDATE,
    THREAD_CREATE, GUILD_ROLE_CREATE, GUILD_MEMBER_ADD). Without the members intent a
    GUILD_CREATE carries only the bot's own member, like Discord.

Commands
    ``commands(guild_id=None) -> list[dict]`` (as echoed: id, application_id, version,
    guild_id...), ``command(name, guild_id=None) -> dict | None``.

Messages (stored dicts; see ``messages.py`` for every key)
    ``id, channel_id, guild_id, author_id, content, embeds, components, attachments
    [{id, filename, size, content_type, url, proxy_url, description, width, height}], flags,
    ephemeral, loading, message_reference {message_id, channel_id, guild_id}, kind
    ("channel" | "response" | "deferred" | "followup" | "user"), interaction_id,
    interaction_token, history (earlier versions, oldest first), deleted, timestamp...``
    ``messages(channel_id=None, *, include_deleted=False)`` (ephemeral ones included),
    ``message(id)``, ``message_payload(id)`` (wire form), ``attachment_bytes(message_or_id,
    index=0)``, ``await wait_for_message(predicate=None, timeout=5.0, *, channel_id=None)``,
    ``upload_message(channel_id, user_id, content="", files=None, *, embeds=None) -> dict``
    (a member's own message, e.g. a photo; returns the stored message, ``["id"]`` its id; it
    can be the target of ``send_message_command``).
    ``message_bodies() -> [{method, path, body, message, allowed_mentions, status}]``: every
    request that creates or edits a message (callbacks type 4/7, webhook POST/PATCH,
    channel message POST/PATCH), refused ones too; ``message`` is the message part (a
    callback's ``data``), ``allowed_mentions`` its value or None when absent. E.g.
    ``assert all(b["allowed_mentions"]["parse"] == [] for b in fd.message_bodies())``.
    The bot may edit (PATCH) and DELETE its own messages through the channel routes,
    interaction responses and follow-ups included (not ephemeral ones).
    ``attachment://name`` in embeds is rewritten to the file's URL; the file stays in
    ``attachments``. Form checks like Discord's (content 2000, embed limits, custom_id 100,
    empty message 50006, file above attachment_size_limit 413 40005).

REST calls
    ``calls -> list[Call]``; ``Call(method, path, json, time, status, query, files)`` with
    ``path`` relative to api_base (e.g. "/channels/1/messages"; attachment downloads are
    "/attachments/..." on the same host), ``json`` the body or the
    multipart ``payload_json``. ``unknown_calls`` (routes the stand-in lacks, answered 404
    ``{"message": "404: Not Found", "code": 0}``), ``assert_no_unknown_routes()``,
    ``await wait_for(predicate, timeout=5.0) -> Call``,
    ``inject_error(method, path_regex, status, body=None, *, times=1, headers=None)``.
    A wrong ``Authorization`` answers 401 ``{"message": "401: Unauthorized", "code": 0}``
    (discord.py: LoginFailure at login).

Interactions
    ``await send_slash(guild_id, channel_id, user_id, name, options=None, attachments=None, *,
    locale="en-US", validate=True) -> InteractionHandle``: ``name`` like "img2img" or
    "settings show"; ``data.id`` is the synced command's id (the bot must have synced);
    option values typed by the registered option types (3 str, 4 int, 10 float, 5 bool,
    6 user / 7 channel / 8 role / 9 mentionable ids with ``resolved``, 11 attachment).
    ``attachments[name]`` is ``Upload(filename, data, content_type=None, size=None,
    width=None, height=None)`` or a tuple ``(filename, bytes[, content_type[, size]])``;
    ``size`` overrides the declared size. The file is served by the stand-in.
    ``await click(message_id, custom_id, user_id, guild_id=None, *, values=None,
    locale="en-US", validate=True) -> InteractionHandle`` (type 3 with the message payload).
    ``await send_message_command(guild_id, channel_id, user_id, name, target_message_id, *,
    locale="en-US", validate=True)`` (a message context menu, "Apps → name": type 2 with
    ``data {id, name, type 3, target_id, resolved {messages {ID: message}}}``; the target
    carries its attachments and embeds; ``channel_id`` None = the target's channel).
    ``validate`` also refuses a channel the user cannot view (PermissionError).
    ``await submit_modal(opened_by_handle, values, user_id=None)``: ``values`` keyed by
    custom_id or label (the Label (type 18) text or the input's own label); text inputs in
    action rows or Labels (left out: their prefilled ``value``; ``required``, min/max length
    checked), selects take lists, a ``FileUpload`` (type 19) takes ``Upload``s (resolved in
    ``data.resolved.attachments``); an unknown key raises LookupError; a modal opened from a
    button carries ``message``.
    ``await send_autocomplete(guild_id, channel_id, user_id, name, options, focused, *,
    locale="en-US")`` (type 4; choices in ``(await h.response())["data"]["choices"]``).
    ``expire_token(token)``: webhook routes then answer 401 ``{"message": "Invalid Webhook
    Token", "code": 50027}`` (discord.py raises HTTPException, status 401, code 50027) and
    the callback 404 10062 "Unknown interaction". A second callback answers 400 40060;
    a follow-up before any callback 404 10015 "Unknown Webhook". ``interactions()``.

InteractionHandle
    ``id, token, type, payload``; ``response_type``; ``response_now()``; ``original()``
    (thinking message after a defer, ``loading`` True until the first follow-up or edit;
    the type-4 message; the clicked message after 6/7); ``followups()`` (the first follow-up
    after a defer IS the original, same id, visibility kept even if sent ephemeral);
    ``messages()``; ``ephemeral`` (of the original; None without one); ``modal`` (the type-9
    data ``{custom_id, title, components}`` or None); ``await wait_modal(timeout=5.0) ->
    modal data`` (fails at once if answered otherwise); ``modal_inputs() -> {label:
    component}`` (prefilled ``value``, ``custom_id``...);
    ``rejected_callbacks``; ``expire()``; ``await response(timeout=5.0) -> {type, data,
    files, time}``; ``await wait_original(predicate=None, timeout=5.0)``; ``await
    wait_followup(predicate=None, timeout=5.0)``; ``await wait_message(predicate=None,
    timeout=5.0)``; ``await wait_for(predicate_on_handle, timeout=5.0)``.

Deadlines
    ``ack_deadline`` (3.0 s; None: off): a first callback later than that after dispatch is
    answered 404 10062 "Unknown interaction", like Discord, and listed in ``late_acks() ->
    [{interaction_id, name, type, delay, body}]``; ``assert_acks_in_time()``. The token then
    works for webhooks (follow-ups, @original) for ``token_lifetime`` (900 s).

Schema validation
    With ``validate_bodies`` (default True) every POST/PUT/PATCH JSON body (or multipart
    ``payload_json``) is checked with jsonschema against Discord's OpenAPI spec
    (``paths[route][method].requestBody.content["application/json"].schema``; the spec is
    vendored as ``discord-openapi.json.gz``, the same file as
    /work/shared/discord-api/openapi.json; ``FAKEDISCORD_OPENAPI`` may name another copy).
    Relaxed exactly where the spec is stricter than the API: snowflakes may be JSON
    integers, channel type 16 is valid. A body Discord would refuse is answered 400 50035
    "Invalid Form Body" with Discord's nested ``errors`` (e.g. ``data.title: Must be 45 or
    fewer in length (got 60).``) and listed in ``invalid_bodies() -> [{method, path, route,
    body, errors}]``; ``assert_valid_bodies()``. Loaded and compiled once per process.

Teardown
    ``assert_clean()`` = ``assert_no_unknown_routes()`` + ``assert_acks_in_time()`` +
    ``assert_valid_bodies()``; it runs by itself when an ``async with``/``with FakeDiscord``
    block ends without an exception (so the e2e ``fd`` fixture fails its test at teardown),
    unless ``strict`` is set False by a test that provokes these on purpose.

Gateway
    HELLO with ``heartbeat_interval``; op 1 answered with op 11; IDENTIFY -> READY then
    one GUILD_CREATE per guild; RESUME -> replay after ``seq`` then RESUMED; unknown session
    -> op 9 false; wrong token -> close 4004; op 8 -> GUILD_MEMBERS_CHUNK.
    ``await wait_ready(timeout=5.0)``, ``await disconnect(code=4000)`` (discord.py then
    resumes), ``await request_reconnect()`` (op 7; discord.py resumes), ``forget_sessions()``
    (the next RESUME gets op 9 and the client identifies again; discord.py waits 5 s before
    a re-IDENTIFY unless the bot overrides ``before_identify_hook``),
    ``await wait_resumed(count=1, timeout=10.0)``, ``identify_count``,
    ``resume_count``, ``identify_payloads``, ``session_id``, ``heartbeats`` (monotonic
    arrival times, all connections), ``connections -> list[ConnectionInfo]`` (id, query,
    opened, closed, close_code, heartbeats, identified, resumed, session_id),
    ``dispatched -> [(seq, event)]``, ``await dispatch(event, data) -> bool`` (any event).

Waiting in general
    The stand-in applies a request's effect and records its ``Call`` together (under one
    lock), before the bot has read the answer: ``await settle(quiet=0.05, timeout=5.0)``
    waits until no request is in flight and none came for ``quiet`` s (use it before
    ``bot.close()``). ``await until(condition, timeout=5.0, what="...")`` returns
    ``condition()``'s value once truthy; re-checked on every state change. Timeouts raise
    TimeoutError naming the last REST calls, unknown routes and stand-in errors. Predicates
    that raise LookupError/TypeError count as False. ``internal_errors``: tracebacks of
    requests the stand-in failed on (answered 400; ``assert_no_unknown_routes`` fails on them).
"""

from .gateway import ConnectionInfo
from .interactions import InteractionHandle, Upload
from .server import Call, FakeDiscord
from .world import ADMINISTRATOR, ALL_PERMISSIONS, DEFAULT_BOT_PERMISSIONS

__all__ = [
    "ADMINISTRATOR",
    "ALL_PERMISSIONS",
    "DEFAULT_BOT_PERMISSIONS",
    "Call",
    "ConnectionInfo",
    "FakeDiscord",
    "InteractionHandle",
    "Upload",
]
