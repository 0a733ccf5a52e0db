"""What the bot sent: REST calls, message bodies, late acknowledgements, refused bodies,
injected errors, and the checks a test runs on them (a part of ``FakeDiscord``)."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from . import interactions as ix
from .resthelpers import json_response

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


_MESSAGE_ROUTES = (
    ("POST", re.compile(r"^/webhooks/\d+/[^/]+$")),
    ("PATCH", re.compile(r"^/webhooks/\d+/[^/]+/messages/[^/]+$")),
    ("POST", re.compile(r"^/channels/\d+/messages$")),
    ("PATCH", re.compile(r"^/channels/\d+/messages/\d+$")),
)
_CALLBACK_ROUTE = re.compile(r"^/interactions/\d+/[^/]+/callback$")


def _message_part(method: str, path: str, body: Any) -> dict[str, Any] | None:
    """The message a request creates or edits (callback ``data`` for types 4 and 7)."""
    if method == "POST" and _CALLBACK_ROUTE.match(path):
        if isinstance(body, dict) and body.get("type") in (4, 7):
            data = body.get("data")
            return data if isinstance(data, dict) else {}
        return None
    if any(method == m and rx.match(path) for m, rx in _MESSAGE_ROUTES):
        return body if isinstance(body, dict) else {}
    return None


class Call(NamedTuple):
    """One REST request the bot made (``path`` is relative to the API base)."""

    method: str
    path: str
    json: Any  # the JSON body, or the multipart ``payload_json``
    time: float  # time.monotonic() when the answer was sent
    status: int
    query: dict[str, str]
    files: list[dict[str, Any]]  # [{index, filename, size, content_type}]


@dataclass
class _Injected:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    hits: int = 0


class Recording:
    """``FakeDiscord``'s record of the bot's requests (uses its lock and state)."""

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def api_calls(self, since: float = 0.0) -> list[Call]:
        """Requests to Discord's API answered at or after ``since`` (``time.monotonic()``):
        attachment downloads (Discord's CDN, not the API) left out."""
        with self._lock:
            return [
                c for c in self._calls if c.time >= since and not c.path.startswith("/attachments/")
            ]

    @staticmethod
    def calls_per_interaction(calls: list[Call]) -> dict[str, int]:
        """Requests per interaction token (its callback and its webhook), and ``""`` for
        every other request (channel messages, DMs, …)."""
        counts: dict[str, int] = {}
        for call in calls:
            parts = call.path.split("/")
            token = ""
            if len(parts) > 3 and parts[1] in ("interactions", "webhooks"):
                token = parts[3]
            counts[token] = counts.get(token, 0) + 1
        return counts

    @property
    def unknown_calls(self) -> list[Call]:
        """Requests to routes the stand-in does not know (answered 404/405)."""
        with self._lock:
            return list(self._unknown)

    def assert_no_unknown_routes(self) -> None:
        """Fails on routes the stand-in lacks and on errors inside the stand-in itself."""
        unknown = self.unknown_calls
        assert not unknown, "bot called routes the stand-in does not know: " + ", ".join(
            f"{c.method} {c.path}" for c in unknown
        )
        errors = self.internal_errors
        assert not errors, "the stand-in failed on a request:\n" + "\n".join(errors)

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of requests the stand-in itself failed on (answered 400)."""
        with self._lock:
            return list(self._internal_errors)

    def _record_internal_error(self, method: str, path: str, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        log.error("fakediscord failed on %s %s:\n%s", method, path, text)
        with self._lock:
            self._internal_errors.append(f"{method} {path}: {text}")

    async def wait_for(self, predicate: Callable[[Call], Any], timeout: float = 5.0) -> Call:
        """The first recorded REST call satisfying ``predicate``."""

        def check() -> Call | None:
            return next((c for c in self.calls if ix._holds(predicate, c)), None)

        return await self.until(check, timeout, "no matching REST call")

    def inject_error(
        self,
        method: str,
        path_pattern: str,
        status: int,
        body: Any = None,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` (or ``"*"``) and the regex
        ``path_pattern`` (searched in the API-relative path) with ``status`` and ``body``.

        A 429 gets ``retry_after`` 0.05 and the ``Via`` header unless given (discord.py only
        retries a 429 that carries ``Via``); a 5xx is retried by discord.py up to 5 times.
        """
        headers = dict(headers or {})
        if body is None:
            body = {"message": f"{status}: injected", "code": 0}
        if status == 429:
            if isinstance(body, dict):
                body.setdefault("retry_after", 0.05)
                body.setdefault("global", False)
            headers.setdefault("Via", "1.1 google")
        with self._lock:
            self._injected.append(
                _Injected(method.upper(), re.compile(path_pattern), status, body, headers, times)
            )

    def _take_injected(self, method: str, path: str) -> web.Response | None:
        with self._lock:
            for inj in self._injected:
                if (
                    inj.hits < inj.times
                    and inj.method in ("*", method)
                    and inj.pattern.search(path)
                ):
                    inj.hits += 1
                    return json_response(inj.body, inj.status, inj.headers)
        return None

    def _request_started(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._last_activity = time.monotonic()

    def _request_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last_activity = time.monotonic()
        self._notify()

    async def settle(self, quiet: float = 0.05, timeout: float = 5.0) -> None:
        """Until no REST request is in flight and none came for ``quiet`` seconds: let the
        bot finish reading its answers (e.g. before ``bot.close()``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                idle_for = time.monotonic() - self._last_activity
                busy = self._in_flight > 0
            if not busy and idle_for >= quiet:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the bot did not go quiet within {timeout}s; {self._recent()}")
            await asyncio.sleep(max(quiet - idle_for, 0.01) if not busy else 0.01)

    def _record_call(
        self,
        *,
        method: str,
        path: str,
        body: Any,
        status: int,
        query: dict[str, str],
        files: list[Any],
        unknown: bool,
    ) -> None:
        call = Call(
            method=method,
            path=path,
            json=body,
            time=time.monotonic(),
            status=status,
            query=query,
            files=[
                {
                    "index": f.index,
                    "filename": f.filename,
                    "size": len(f.data),
                    "content_type": f.content_type,
                }
                for f in files
            ],
        )
        message = _message_part(method, path, body)
        with self._lock:
            self._calls.append(call)
            if unknown:
                self._unknown.append(call)
            if message is not None:
                self._message_bodies.append(
                    {
                        "method": method,
                        "path": path,
                        "body": copy.deepcopy(body),
                        "message": copy.deepcopy(message),
                        "allowed_mentions": copy.deepcopy(message.get("allowed_mentions")),
                        "status": status,
                    }
                )
        self._notify()

    def message_bodies(self) -> list[dict[str, Any]]:
        """Every request that creates or edits a message (answered or refused), in order:
        ``{method, path, body, message, allowed_mentions, status}``. ``body`` is the JSON or
        ``payload_json`` as sent; ``message`` its message part (an interaction callback's
        ``data``, else the body); ``allowed_mentions`` that part's (None when absent).
        Covers callbacks of type 4 and 7, webhook POST/PATCH (follow-ups, @original) and
        channel message POST/PATCH (DMs included)."""
        with self._lock:
            return copy.deepcopy(self._message_bodies)

    def late_acks(self) -> list[dict[str, Any]]:
        """First callbacks that came after ``ack_deadline`` (3 s) and were refused with 404
        10062, like Discord: ``{interaction_id, name, type, delay, body}``."""
        with self._lock:
            return copy.deepcopy(self._late_acks)

    def assert_acks_in_time(self) -> None:
        """Fails when the bot acknowledged any interaction later than ``ack_deadline``."""
        late = self.late_acks()
        assert not late, "interactions acknowledged after the 3 s deadline: " + ", ".join(
            f"{a['name']!r} ({a['delay']:.2f} s)" for a in late
        )

    def invalid_bodies(self) -> list[dict[str, Any]]:
        """Request bodies Discord's OpenAPI schema rejects (answered 400 50035):
        ``{method, path, route, body, errors}`` (errors: readable strings)."""
        with self._lock:
            return copy.deepcopy(self._invalid_bodies)

    def assert_valid_bodies(self) -> None:
        """Fails when the bot sent any body Discord's schema rejects."""
        bad = self.invalid_bodies()
        assert not bad, "bodies Discord would refuse (400 50035):\n" + "\n".join(
            f"{b['method']} {b['path']}: {'; '.join(b['errors'])}\n  body: {b['body']!r}"[:3000]
            for b in bad
        )

    def assert_clean(self) -> None:
        """All of: no unknown routes, no stand-in errors, every ack in time, every body
        valid. Called when a ``with``/``async with`` block ends normally, unless
        ``strict`` is False (set that in a test that provokes these on purpose)."""
        self.assert_no_unknown_routes()
        self.assert_acks_in_time()
        self.assert_valid_bodies()
