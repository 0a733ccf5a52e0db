"""The stream codec: requests, results and infos survive the trip as JSON; URLs are logged
without their password."""

from __future__ import annotations

import pytest

from pipeline import stream_codec as codec
from pipeline.request import (
    ControlRef,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    LoraRef,
)


def test_request_round_trip_keeps_every_field() -> None:
    request = GenerationRequest(
        "7", "/data/in.png", "a fox", 0.6, 123, 20, 7.5, "/data/out.png",
        negative_prompt="blurry", allow_nsfw=True, preview=True,
    )  # fmt: skip
    wire = codec.loads(codec.dumps(codec.encode_request(request)))
    assert codec.decode_request(wire) == request


def test_request_round_trip_keeps_its_loras() -> None:
    loras = (LoraRef("pixel", "/loras/pixel.safetensors", 0.8), LoraRef("ink", "a/b", 1.0))
    request = GenerationRequest("7", "/in.png", "a fox", 0.6, 1, 20, 7.5, "/o.png", loras=loras)
    decoded = codec.decode_request(codec.loads(codec.dumps(codec.encode_request(request))))
    assert decoded == request
    assert isinstance(decoded.loras[0], LoraRef)
    hash(decoded)  # still a frozen, hashable request


def test_request_and_info_round_trips_keep_the_model() -> None:
    request = GenerationRequest("7", "/in.png", "a fox", 0.6, 1, 20, 7.5, "/o.png", model="anime")
    decoded = codec.decode_request(codec.loads(codec.dumps(codec.encode_request(request))))
    assert (decoded, decoded.model) == (request, "anime")
    old = codec.encode_request(request)
    del old["model"]  # a bot one release older sends none: the worker's default model
    assert codec.decode_request(old).model == ""
    info = EngineInfo("m", "cpu", "fp32", 64, "P", models=("base", "anime"), resident=("base",))
    back = codec.decode_info(codec.loads(codec.dumps(codec.encode_info(info))))
    assert (back, back.models, back.resident) == (info, ("base", "anime"), ("base",))


def test_structure_round_trips_on_the_request_result_and_info() -> None:
    request = GenerationRequest(
        "7", "/in.png", "a fox", 0.6, 1, 20, 7.5, "/o.png", control=ControlRef("lines", 1.5)
    )
    decoded = codec.decode_request(codec.loads(codec.dumps(codec.encode_request(request))))
    assert decoded == request and isinstance(decoded.control, ControlRef)
    hash(decoded)
    free = GenerationRequest("8", "/in.png", "a fox", 0.6, 1, 20, 7.5, "/o.png")
    assert codec.decode_request(codec.loads(codec.dumps(codec.encode_request(free)))) == free
    result = GenerationResult("7", "/o.png", 1, 10, 20, 64, 64, 0.5, structure_map="/o.map")
    assert codec.decode_result(codec.encode_result(result)) == result
    info = EngineInfo("m", "cpu", "fp32", 512, "P", structures=("edges", "lines"))
    assert codec.decode_info(codec.loads(codec.dumps(codec.encode_info(info)))) == info


def test_unknown_fields_are_ignored_and_lists_become_tuples() -> None:
    data = codec.to_dict(EngineInfo("m", "cuda", "fp16", 512, "P"))
    data["from_a_newer_worker"] = [1, 2]
    assert codec.decode_info(data) == EngineInfo("m", "cuda", "fp16", 512, "P")
    result = GenerationResult("7", "/tmp/x.png", 1, 10, 20, 64, 64, 0.5, nsfw=True)
    assert codec.decode_result(codec.encode_result(result)) == result


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("redis://:s3cret@valkey:6379/0", "redis://***@valkey:6379/0"),
        ("rediss://user:s3cret@host/1", "rediss://user:***@host/1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redact_url_hides_the_password(url: str, logged: str) -> None:
    assert codec.redact_url(url) == logged
    assert "s3cret" not in codec.redact_url(url)


def test_keys_share_one_prefix() -> None:
    keys = codec.Keys("bot1")
    assert {keys.hello, keys.heartbeat("w"), keys.grants("w"), keys.events("w")} == {
        "bot1:hello", "bot1:worker:w", "bot1:grants:w", "bot1:events:w",
    }  # fmt: skip
