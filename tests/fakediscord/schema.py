"""Request bodies checked against Discord's own OpenAPI spec, as Discord's form checks would.

The spec is ``discord-openapi.json.gz`` next to this file: ``specs/openapi.json`` of the public
discord/discord-api-spec repository (MIT licence, Discord Inc.), commit 74fda0f of 2026-07-18,
the same file as /work/shared/discord-api/openapi.json. ``FAKEDISCORD_OPENAPI`` may name
another copy (plain or gzipped JSON).

Two places where the spec is stricter than the API are relaxed, and nothing else: snowflakes
may be JSON integers (discord.py sends ints in ``allowed_mentions``), and channel type 16
(GUILD_MEDIA) is a channel type. The document is loaded and the validators compiled once per
process (it is over 1 MB), lazily per route.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import logging
import os
import re
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

SPEC_URI = "urn:discord-openapi"
_HERE = Path(__file__).with_name("discord-openapi.json.gz")
_lock = threading.Lock()

# jsonschema keyword -> Discord's error code in a 50035 answer
_CODES = {
    "maxLength": "BASE_TYPE_MAX_LENGTH",
    "maxItems": "BASE_TYPE_MAX_LENGTH",
    "minLength": "BASE_TYPE_MIN_LENGTH",
    "minItems": "BASE_TYPE_MIN_LENGTH",
    "required": "BASE_TYPE_REQUIRED",
    "maximum": "NUMBER_TYPE_MAX",
    "minimum": "NUMBER_TYPE_MIN",
    "const": "BASE_TYPE_CHOICES",
    "enum": "BASE_TYPE_CHOICES",
    "pattern": "STRING_TYPE_REGEX",
    "type": "BASE_TYPE_BAD_TYPE",
    "uniqueItems": "BASE_TYPE_UNIQUE",
}


def _load_document() -> dict[str, Any]:
    path = Path(os.environ.get("FAKEDISCORD_OPENAPI") or _HERE)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc: dict[str, Any] = json.loads(raw)
    schemas = doc["components"]["schemas"]
    # Relaxation 1: a snowflake may also be a non-negative JSON integer.
    snowflake = schemas["SnowflakeType"]
    schemas["SnowflakeType"] = {"anyOf": [snowflake, {"type": "integer", "minimum": 0}]}
    # Relaxation 2: channel type 16 (GUILD_MEDIA) is missing from ChannelTypes.
    channel_types = schemas["ChannelTypes"]
    if not any(o.get("const") == 16 for o in channel_types.get("oneOf", [])):
        channel_types["oneOf"].append({"title": "GUILD_MEDIA", "const": 16})
    return doc


class Spec:
    """Discord's request schemas by route; ``validate(method, path, body)``."""

    def __init__(self, doc: dict[str, Any]) -> None:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self._doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self._registry = Registry().with_resource(SPEC_URI, resource)
        self._validator_cls = Draft202012Validator
        self._validators: dict[tuple[str, str], Any] = {}
        routes = []
        for template in doc["paths"]:
            parts = template.strip("/").split("/")
            rx = "/".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
            params = sum(p.startswith("{") for p in parts)
            routes.append((params, re.compile(f"^/{rx}$"), template))
        routes.sort(key=lambda r: r[0])  # literal segments win: @original before {message_id}
        self._routes = routes

    def route(self, path: str) -> str | None:
        """The spec's path template for an API-relative request path."""
        return next((t for _, rx, t in self._routes if rx.match(path)), None)

    def _validator(self, template: str, method: str) -> Any | None:
        key = (template, method)
        with _lock:
            if key in self._validators:
                return self._validators[key]
            op = self._doc["paths"][template].get(method.lower()) or {}
            content = (op.get("requestBody") or {}).get("content") or {}
            validator = None
            if "application/json" in content:
                pointer = "/".join(
                    _escape(p)
                    for p in (
                        "paths",
                        template,
                        method.lower(),
                        "requestBody",
                        "content",
                        "application/json",
                        "schema",
                    )
                )
                schema = {"$ref": f"{SPEC_URI}#/{quote(pointer, safe='/~')}"}
                validator = self._validator_cls(schema, registry=self._registry)
            self._validators[key] = validator
            return validator

    def validate(self, method: str, path: str, body: Any) -> tuple[str | None, list[Any]]:
        """``(route, errors)``: the jsonschema errors of the most plausible reading."""
        template = self.route(path)
        if template is None:
            return None, []
        validator = self._validator(template, method)
        if validator is None:
            return template, []
        return template, [e for top in validator.iter_errors(body) for e in _explain(top)]


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _explain(error: Any) -> list[Any]:
    """The errors that say what is wrong: inside an anyOf/oneOf, the branch the body meant
    (branches refused for their discriminating ``type`` are dropped)."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    branches: dict[Any, list[Any]] = defaultdict(list)
    for sub in error.context:
        branches[sub.relative_schema_path[0]].append(sub)
    if len(branches) < len(error.validator_value):
        return [error]  # some branch matched (oneOf failing for several matches)

    def discriminated(errs: list[Any]) -> bool:
        return any(
            e.validator in ("const", "enum")
            and list(e.relative_path) in (["type"], ["component_type"], [])
            and not isinstance(e.instance, dict | list)
            for e in errs
        )

    plausible = [errs for errs in branches.values() if not discriminated(errs)]
    if len(plausible) == 1:
        return [e for sub in plausible[0] for e in _explain(sub)]
    if plausible:  # the branch that got furthest
        best = max(plausible, key=lambda errs: max(len(e.absolute_path) for e in errs))
        if max(len(e.absolute_path) for e in best) > len(error.absolute_path):
            return [e for sub in best for e in _explain(sub)]
    return [error]


def describe(error: Any) -> str:
    """``path: message``, in Discord's words where it has some, the value shortened."""
    where = ".".join(str(p) for p in error.absolute_path) or "(body)"
    limit, value = error.validator_value, error.instance
    if error.validator in ("maxLength", "maxItems") and isinstance(value, str | list):
        message = f"Must be {limit} or fewer in length (got {len(value)})."
    elif error.validator in ("minLength", "minItems") and isinstance(value, str | list):
        message = f"Must be {limit} or more in length (got {len(value)})."
    elif error.validator == "maximum":
        message = f"int value should be less than or equal to {limit} (got {value!r})."
    elif error.validator == "minimum":
        message = f"int value should be greater than or equal to {limit} (got {value!r})."
    else:
        message = error.message
        if len(message) > 300:
            message = message[:300] + "…"
    return f"{where}: {message}"


def discord_errors(errors: list[Any]) -> dict[str, Any]:
    """The nested ``errors`` object of a 50035 answer."""
    tree: dict[str, Any] = {}
    for error in errors:
        node = tree
        for part in error.absolute_path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append(
            {
                "code": _CODES.get(error.validator, "BASE_TYPE_INVALID"),
                "message": describe(error).split(": ", 1)[-1],
            }
        )
    return tree


@functools.cache
def spec() -> Spec:
    """The one Spec of this process (loaded on first use)."""
    return Spec(_load_document())


def validate_body(method: str, path: str, body: Any) -> tuple[str | None, list[Any]]:
    """``(route template, errors)`` for one request; ``errors`` empty when it is valid."""
    if body is None:
        return None, []
    return spec().validate(method, path, copy.deepcopy(body))
