"""The small explicit codec for what crosses Valkey/Redis streams between bot and workers.

Stream entries are flat maps of bytes. Requests, results and engine infos go as JSON of
their dataclass fields (never pickle: unpickling data from a network server would run
whatever code it names); images go as raw bytes fields beside them. Unknown fields are
ignored on decode, so a bot and a worker one release apart still understand each other.

Key layout (`Keys`): one heartbeat key per worker (`…:worker:<id>`, with a TTL) and a set
of worker ids (`…:workers`), one shared `…:hello` stream where a worker says it is ready,
one grants stream per worker (the bot's runs, cancels and refusals for it) and one events
stream per worker (its events for the bot; the entries that carry PNG bytes are deleted
once read).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from pipeline.request import (
    ControlRef,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    LoraRef,
    NoiseStart,
)

T = TypeVar("T")

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Keys:
    """Every key name the bot and the workers share, under one prefix."""

    prefix: str = "img2img"

    @property
    def hello(self) -> str:
        return f"{self.prefix}:hello"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    @property
    def scheduler(self) -> str:
        """The one-scheduler lock (its value names the bot that holds it)."""
        return f"{self.prefix}:scheduler"

    @property
    def scheduler_token(self) -> str:
        """The fencing token of the latest lock holder; a grant with a lower one is stale."""
        return f"{self.prefix}:scheduler:token"

    @property
    def workers(self) -> str:
        """The set of worker ids that may be alive (added on each beat, removed on drop),
        so the bot reads their heartbeats without scanning the keyspace."""
        return f"{self.prefix}:workers"

    def grants(self, worker_id: str) -> str:
        return f"{self.prefix}:grants:{worker_id}"

    def events(self, worker_id: str) -> str:
        return f"{self.prefix}:events:{worker_id}"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def loads(raw: bytes | str | None) -> Any:
    return json.loads(raw) if raw else None


def text(entry: Fields, name: str, default: str = "") -> str:
    raw = entry.get(name.encode())
    return raw.decode() if raw is not None else default


def number(entry: Fields, name: str, default: int = 0) -> int:
    raw = entry.get(name.encode())
    return int(raw) if raw else default


def to_dict(value: object) -> dict[str, Any]:
    """A frozen dataclass as JSON-ready builtins (tuples become lists)."""
    return asdict(value)  # type: ignore[call-overload, no-any-return]


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from `to_dict` output, ignoring unknown keys and turning the lists of
    tuple-valued fields back into tuples (frozen dataclasses must stay hashable)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return cls(**values)


def preview_fields(previews: dict[str, bytes]) -> dict[str, bytes]:
    """A progress entry's live previews: one raw bytes field per job (`pv:<job id>`)."""
    return {f"pv:{job_id}": data for job_id, data in previews.items()}


def previews_of(entry: Fields, job_ids: tuple[str, ...]) -> dict[str, bytes]:
    """The live previews a progress entry carries for these jobs."""
    found = {job_id: entry.get(f"pv:{job_id}".encode()) for job_id in job_ids}
    return {job_id: data for job_id, data in found.items() if data is not None}


def encode_request(request: GenerationRequest) -> dict[str, Any]:
    return to_dict(request)


def decode_request(data: dict[str, Any]) -> GenerationRequest:
    request = from_dict(GenerationRequest, data)
    if isinstance(request.start, dict):  # a text-to-image job's start, nested
        request = replace(request, start=from_dict(NoiseStart, request.start))
    if any(isinstance(lora, dict) for lora in request.loras):  # LoRAs, nested
        loras = tuple(from_dict(LoraRef, lora) for lora in request.loras)
        request = replace(request, loras=loras)  # type: ignore[arg-type]
    if isinstance(request.control, dict):  # a structure job's control, nested
        request = replace(request, control=from_dict(ControlRef, request.control))
    return request


def encode_result(result: GenerationResult) -> bytes:
    return dumps(to_dict(result))


def decode_result(raw: bytes) -> GenerationResult:
    return from_dict(GenerationResult, loads(raw))


def encode_info(info: EngineInfo) -> dict[str, Any]:
    return to_dict(info)


def decode_info(data: dict[str, Any]) -> EngineInfo:
    return from_dict(EngineInfo, data)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if user else f"{scheme}://***@{host}"
