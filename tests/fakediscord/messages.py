"""Messages the bot creates and edits, their uploaded files, and Discord's checks on them.

A stored message is a plain dict with Python values (ids are ints); ``wire()`` renders the
payload Discord would send. Keys of a stored message:

``id, channel_id, guild_id, author_id, type, content, embeds, components, attachments,
flags, ephemeral, loading, tts, message_reference, kind, interaction_id, interaction_token,
webhook_id, timestamp, edited_timestamp, created, history, deleted``

``kind`` is ``"channel"`` (POST /channels/{id}/messages), ``"response"`` (interaction callback
type 4), ``"deferred"`` (the thinking message of callback type 5, until it is edited),
``"followup"`` (webhook POST), or ``"user"`` (made by the test). ``history`` holds the earlier
versions, oldest first, each ``{content, embeds, components, attachments, flags, time}``.
Attachments are ``{id, filename, size, content_type, url, proxy_url, description, width,
height}``; their bytes are kept by the store (``blob(attachment_id)``).
"""

from __future__ import annotations

import copy
import io
import mimetypes
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .world import World, iso_now

EPHEMERAL = 1 << 6
SUPPRESS_EMBEDS = 1 << 2
LOADING = 1 << 7
SUPPRESS_NOTIFICATIONS = 1 << 12
COMPONENTS_V2 = 1 << 15
SENDABLE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2
EDITABLE_FLAGS = SUPPRESS_EMBEDS | COMPONENTS_V2


class ApiError(Exception):
    """An error answer, with Discord's status and JSON body."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors:
            self.body["errors"] = errors


def form_error(problems: list[tuple[str, str, str]]) -> ApiError:
    """50035 Invalid Form Body with Discord's nested ``errors`` object."""
    errors: dict[str, Any] = {}
    for path, code, message in problems:
        node = errors
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})
    return ApiError(400, 50035, "Invalid Form Body", errors)


def unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


@dataclass
class UploadedFile:
    """One ``files[n]`` part of a multipart request."""

    index: int
    filename: str
    data: bytes
    content_type: str | None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height when the bytes are an image Pillow can read (as Discord reports)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


_LIMITS = {  # embed field -> most characters
    "title": 256,
    "description": 4096,
    "footer.text": 2048,
    "author.name": 256,
}


def validate_message(body: dict[str, Any], prefix: str = "") -> None:
    """Discord's form checks on content, embeds and components (raises 50035)."""
    problems: list[tuple[str, str, str]] = []
    content = body.get("content")
    if isinstance(content, str) and len(content) > 2000:
        problems.append(
            (prefix + "content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        )
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        problems.append(
            (prefix + "embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        )
    total = 0
    for i, embed in enumerate(embeds):
        where = f"{prefix}embeds.{i}."
        for key, limit in _LIMITS.items():
            node: Any = embed
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str):
                total += len(node)
                if len(node) > limit:
                    problems.append(
                        (
                            where + key,
                            "BASE_TYPE_MAX_LENGTH",
                            f"Must be {limit} or fewer in length.",
                        )
                    )
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append(
                (where + "fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
            )
        for j, fld in enumerate(fields):
            for key, limit, required in (("name", 256, True), ("value", 1024, True)):
                text = fld.get(key)
                if required and not text:
                    problems.append(
                        (f"{where}fields.{j}.{key}", "BASE_TYPE_REQUIRED", "This field is required")
                    )
                elif isinstance(text, str):
                    total += len(text)
                    if len(text) > limit:
                        problems.append(
                            (
                                f"{where}fields.{j}.{key}",
                                "BASE_TYPE_MAX_LENGTH",
                                f"Must be {limit} or fewer in length.",
                            )
                        )
    if total > 6000:
        problems.append(
            (
                prefix + "embeds",
                "MAX_EMBED_SIZE_EXCEEDED",
                "Embed size exceeds maximum size of 6000",
            )
        )
    rows = body.get("components") or []
    if not (body.get("flags") or 0) & COMPONENTS_V2 and len(rows) > 5:
        problems.append(
            (prefix + "components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        )
    seen: set[str] = set()
    for path, comp in walk_components(rows, prefix + "components"):
        custom_id = comp.get("custom_id")
        if isinstance(custom_id, str):
            if len(custom_id) > 100:
                problems.append(
                    (path + ".custom_id", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
                )
            if custom_id in seen:
                problems.append(
                    (
                        path + ".custom_id",
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                )
            seen.add(custom_id)
        label = comp.get("label")
        if comp.get("type") == 2 and isinstance(label, str) and len(label) > 80:
            problems.append(
                (path + ".label", "BASE_TYPE_MAX_LENGTH", "Must be 80 or fewer in length.")
            )
        if comp.get("type") == 1 and len(comp.get("components") or []) > 5:
            problems.append(
                (path + ".components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
            )
    if problems:
        raise form_error(problems)


def walk_components(components: Any, path: str = "components"):
    """Yield ``(path, component)`` for every component, nested ones included."""
    if isinstance(components, list):
        for i, comp in enumerate(components):
            yield from walk_components(comp, f"{path}.{i}")
    elif isinstance(components, dict):
        if "type" in components:
            yield path, components
        for key in ("components", "accessory", "component"):
            if key in components:
                yield from walk_components(components[key], f"{path}.{key}")


class MessageStore:
    """Every message and uploaded file. Callers hold the server's lock."""

    def __init__(self, world: World, bot_user_id: int, application_id: int) -> None:
        self.world = world
        self.bot_user_id = bot_user_id
        self.application_id = application_id
        self.http_base = ""  # set once the server listens
        self.attachment_size_limit = 10 * 1024 * 1024
        self.records: dict[int, dict[str, Any]] = {}
        self.blobs: dict[int, tuple[bytes, str]] = {}  # attachment id -> (bytes, content type)

    # -- files ------------------------------------------------------------------------------

    def host_file(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        content_type: str | None,
        *,
        size: int | None = None,
        description: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Keep bytes on the stand-in's CDN route and return the attachment record."""
        att_id = self.world.ids.next()
        guessed = mimetypes.guess_type(filename)[0]
        if content_type in (None, "", "application/octet-stream") and guessed:
            content_type = guessed
        content_type = content_type or "application/octet-stream"
        if width is None and content_type.startswith("image/"):
            dims = image_size(data)
            if dims:
                width, height = dims
        url = f"{self.http_base}/attachments/{channel_id}/{att_id}/{quote(filename)}"
        self.blobs[att_id] = (data, content_type)
        record: dict[str, Any] = {
            "id": att_id,
            "filename": filename,
            "size": len(data) if size is None else size,
            "content_type": content_type,
            "url": url,
            "proxy_url": url.replace("/attachments/", "/media/attachments/", 1),
            "description": description,
            "width": width,
            "height": height,
        }
        return record

    def blob(self, attachment_id: int) -> tuple[bytes, str] | None:
        return self.blobs.get(attachment_id)

    def _check_sizes(self, files: list[UploadedFile]) -> None:
        for f in files:
            if len(f.data) > self.attachment_size_limit:
                raise ApiError(413, 40005, "Request entity too large")

    def _attachments(
        self,
        body: dict[str, Any],
        files: list[UploadedFile],
        channel_id: int,
        existing: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        self._check_sizes(files)
        by_index = {f.index: f for f in files}
        old = {a["id"]: a for a in existing}
        entries = body.get("attachments")
        if entries is None:
            return [*existing, *(self._host_upload(channel_id, f, None) for f in files)]
        result: list[dict[str, Any]] = []
        for i, entry in enumerate(entries):
            try:
                att_id = int(entry["id"])
            except (KeyError, TypeError, ValueError):
                raise form_error(
                    [(f"attachments.{i}.id", "BASE_TYPE_REQUIRED", "This field is required")]
                ) from None
            if att_id in old:
                kept = dict(old[att_id])
                if "description" in entry:
                    kept["description"] = entry["description"]
                result.append(kept)
            elif att_id in by_index:
                result.append(self._host_upload(channel_id, by_index.pop(att_id), entry))
            else:
                raise form_error(
                    [(f"attachments.{i}", "ATTACHMENT_NOT_FOUND", "Unknown attachment")]
                )
        result.extend(self._host_upload(channel_id, f, None) for f in by_index.values())
        return result

    def _host_upload(
        self, channel_id: int, f: UploadedFile, entry: dict[str, Any] | None
    ) -> dict[str, Any]:
        filename = (entry or {}).get("filename") or f.filename
        return self.host_file(
            channel_id,
            filename,
            f.data,
            f.content_type,
            description=(entry or {}).get("description"),
        )

    def _rewrite_embed_urls(
        self, embeds: list[dict[str, Any]], attachments: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``attachment://name`` in embeds points at the uploaded file, as on Discord."""
        by_name = {a["filename"]: a for a in attachments}
        embeds = copy.deepcopy(embeds)
        for embed in embeds:
            for key, url_key in (
                ("image", "url"),
                ("thumbnail", "url"),
                ("author", "icon_url"),
                ("footer", "icon_url"),
            ):
                part = embed.get(key)
                if isinstance(part, dict) and str(part.get(url_key, "")).startswith(
                    "attachment://"
                ):
                    att = by_name.get(part[url_key][len("attachment://") :])
                    if att is not None:
                        part[url_key] = att["url"]
                        part["proxy_" + url_key] = att["proxy_url"]
                        if key in ("image", "thumbnail") and att.get("width"):
                            part["width"], part["height"] = att["width"], att["height"]
        return embeds

    # -- messages ---------------------------------------------------------------------------

    def create(
        self,
        channel_id: int,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        kind: str,
        interaction: dict[str, Any] | None = None,
        flags: int | None = None,
        allow_empty: bool = False,
        author_id: int | None = None,
        msg_type: int = 0,
    ) -> dict[str, Any]:
        """Store a new message from a create payload (already validated by the caller)."""
        validate_message(body)
        channel = self.world.channels.get(channel_id)
        attachments = self._attachments(body, files, channel_id, [])
        content = body.get("content") or ""
        embeds = body.get("embeds") or []
        components = body.get("components") or []
        if not allow_empty and not (
            content
            or embeds
            or attachments
            or components
            or body.get("sticker_ids")
            or body.get("poll")
        ):
            raise ApiError(400, 50006, "Cannot send an empty message")
        if flags is None:
            flags = int(body.get("flags") or 0) & SENDABLE_FLAGS
        msg_id = self.world.ids.next()
        rec: dict[str, Any] = {
            "id": msg_id,
            "channel_id": channel_id,
            "guild_id": channel.guild_id if channel is not None else None,
            "author_id": author_id if author_id is not None else self.bot_user_id,
            "type": msg_type,
            "content": content,
            "embeds": self._rewrite_embed_urls(embeds, attachments),
            "components": copy.deepcopy(components),
            "attachments": attachments,
            "flags": flags,
            "ephemeral": bool(flags & EPHEMERAL),
            "loading": bool(flags & LOADING),
            "tts": bool(body.get("tts")),
            "nonce": body.get("nonce"),
            "message_reference": None,
            "kind": kind,
            "interaction_id": None,
            "interaction_token": None,
            "interaction_metadata": None,
            "webhook_id": None,
            "timestamp": iso_now(),
            "edited_timestamp": None,
            "created": time.monotonic(),
            "history": [],
            "deleted": False,
        }
        if interaction is not None:
            rec["interaction_id"] = interaction["id"]
            rec["interaction_token"] = interaction["token"]
            rec["interaction_metadata"] = interaction["metadata"]
            rec["webhook_id"] = self.application_id
        self.records[msg_id] = rec
        return rec

    def edit(
        self, rec: dict[str, Any], body: dict[str, Any], files: list[UploadedFile]
    ) -> dict[str, Any]:
        """Apply a PATCH payload; the previous version goes to ``history``.

        Visibility never changes on an edit: the ephemeral bit stays as it was.
        """
        validate_message(body)
        attachments = self._attachments(body, files, rec["channel_id"], rec["attachments"])
        rec["history"].append(
            {
                "content": rec["content"],
                "embeds": copy.deepcopy(rec["embeds"]),
                "components": copy.deepcopy(rec["components"]),
                "attachments": copy.deepcopy(rec["attachments"]),
                "flags": rec["flags"],
                "time": time.monotonic(),
            }
        )
        if "content" in body:
            rec["content"] = body["content"] or ""
        if "components" in body:
            rec["components"] = copy.deepcopy(body["components"] or [])
        rec["attachments"] = attachments
        if "embeds" in body:
            rec["embeds"] = self._rewrite_embed_urls(body["embeds"] or [], attachments)
        flags = rec["flags"] & ~LOADING
        if "flags" in body and body["flags"] is not None:
            flags = (flags & ~EDITABLE_FLAGS) | (int(body["flags"]) & EDITABLE_FLAGS)
        rec["flags"] = flags
        rec["ephemeral"] = bool(flags & EPHEMERAL)
        rec["loading"] = False
        if rec["kind"] == "deferred":
            rec["kind"] = "response"
        rec["edited_timestamp"] = iso_now()
        return rec

    def delete(self, rec: dict[str, Any]) -> None:
        rec["deleted"] = True

    def get(self, message_id: int) -> dict[str, Any] | None:
        return self.records.get(message_id)

    # -- wire -------------------------------------------------------------------------------

    def wire_attachment(self, att: dict[str, Any], *, ephemeral: bool = False) -> dict[str, Any]:
        data = {
            "id": str(att["id"]),
            "filename": att["filename"],
            "size": att["size"],
            "content_type": att["content_type"],
            "url": att["url"],
            "proxy_url": att["proxy_url"],
        }
        if att.get("description") is not None:
            data["description"] = att["description"]
        if att.get("width") is not None:
            data["width"], data["height"] = att["width"], att["height"]
        if ephemeral:
            data["ephemeral"] = True
        return data

    def wire(
        self, rec: dict[str, Any], *, with_guild: bool = False, with_reference: bool = True
    ) -> dict[str, Any]:
        author = self.world.users[rec["author_id"]].payload()
        data: dict[str, Any] = {
            "id": str(rec["id"]),
            "channel_id": str(rec["channel_id"]),
            "type": rec["type"],
            "content": rec["content"],
            "author": author,
            "attachments": [self.wire_attachment(a) for a in rec["attachments"]],
            "embeds": copy.deepcopy(rec["embeds"]),
            "components": copy.deepcopy(rec["components"]),
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": rec["tts"],
            "timestamp": rec["timestamp"],
            "edited_timestamp": rec["edited_timestamp"],
            "flags": rec["flags"],
        }
        if rec["nonce"] is not None:
            data["nonce"] = rec["nonce"]
        if rec["webhook_id"] is not None:
            data["webhook_id"] = str(rec["webhook_id"])
            data["application_id"] = str(self.application_id)
        if rec["interaction_metadata"] is not None:
            data["interaction_metadata"] = copy.deepcopy(rec["interaction_metadata"])
        if with_guild and rec["guild_id"] is not None:
            data["guild_id"] = str(rec["guild_id"])
        ref = rec["message_reference"]
        if ref is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(ref["message_id"]),
                "channel_id": str(ref["channel_id"]),
                **({"guild_id": str(ref["guild_id"])} if ref.get("guild_id") else {}),
            }
            if with_reference:
                target = self.records.get(ref["message_id"])
                data["referenced_message"] = (
                    None
                    if target is None or target["deleted"]
                    else self.wire(target, with_reference=False)
                )
        return data
