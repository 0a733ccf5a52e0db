"""Small HTTP helpers shared by the REST route modules."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from .messages import form_error

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
