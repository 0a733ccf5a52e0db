"""What `python -m pipeline run`, `inpaint` and `imagine` share: their common options, the bot's own
checks of them, loading the engine from options over settings, and running one request
with the same exit codes (2 bad input, 1 model, 3 withheld)."""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from config import Settings
from pipeline.request import (
    MAX_SEED,
    GenerationRequest,
    InputError,
    LoraRef,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
)

T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_MODEL = 1
EXIT_WITHHELD = 3


def or_default(value: T | None, default: T) -> T:
    return default if value is None else value


def add_common_arguments(
    p: argparse.ArgumentParser, *, strength: bool = True, strength_default: float | None = None
) -> None:
    """The options every command takes, after their own (`imagine` has no --strength: it
    starts from noise, strength 1; `upscale` has a default one)."""
    p.add_argument("--prompt", required=True)
    if strength and strength_default is not None:
        p.add_argument(
            "--strength", type=float, default=strength_default, help="0.05 (keep) to 1.0"
        )
    elif strength:
        p.add_argument("--strength", type=float, required=True, help="0.05 (keep) to 1.0")
    else:
        p.set_defaults(strength=1.0)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=None, help="default: random")
    p.add_argument("--steps", type=int, default=None, help="default: DEFAULT_STEPS")
    p.add_argument("--guidance", type=float, default=None, help="default: DEFAULT_GUIDANCE")
    p.add_argument("--model", default=None, help="hub id or diffusers folder (MODEL_ID)")
    p.add_argument(
        "--lora", action="append", default=[], metavar="SOURCE[:WEIGHT]",
        help="a LoRA (.safetensors file, folder or hub id; kohya or PEFT) at a weight "
        "(default 1); repeatable, in the order of the prompt's <lora:…> tags",
    )  # fmt: skip
    p.add_argument(
        "--lora-trigger", action="append", default=[], metavar="WORDS",
        help="the trigger words of the n-th --lora (put first in the prompt, as the bot does)",
    )  # fmt: skip
    p.add_argument("--resolution", type=int, default=None, help="long side in px")
    p.add_argument("--device", default=None, choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default=None, choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument("--output", type=Path, required=True, help="where to write the PNG")
    p.add_argument(
        "--safety-checker", default=None, choices=["auto", "on", "off"], help="SAFETY_CHECKER"
    )
    p.add_argument("--safety-checker-id", default=None, help="SAFETY_CHECKER_ID")
    p.add_argument(
        "--allow-nsfw", action="store_true", help="write a flagged image anyway (marked)"
    )


@dataclass(frozen=True)
class Options:
    """The common options, checked like the bot checks a slash command's."""

    prompt: str
    negative_prompt: str | None
    strength: float
    seed: int | None
    steps: int | None
    loras: tuple[LoraRef, ...] = ()


def check_options(args: argparse.Namespace) -> Options:
    """Raises `InputError` with the bot's message."""
    negative = check_prompt(args.negative_prompt, field="negative prompt", required=False)
    prompt = check_prompt(args.prompt)
    loras = parse_loras(getattr(args, "lora", []))
    prompt = with_cli_triggers(prompt, loras, getattr(args, "lora_trigger", []))
    return Options(
        loras=loras,
        prompt=prompt,
        negative_prompt=negative or None,
        strength=check_strength(args.strength),
        seed=check_seed(args.seed),
        steps=check_steps(args.steps),
    )


def build_request(
    args: argparse.Namespace,
    settings: Settings,
    options: Options,
    image_path: Path | str,
    **extra: Any,
) -> GenerationRequest:
    """The one request a command runs: its options over the settings, a random seed when
    none was given, `extra` for what only that command sets (inpainting's mask, a
    text-to-image start)."""
    return GenerationRequest(
        job_id="cli",
        image_path=str(image_path),
        prompt=options.prompt,
        strength=options.strength,
        seed=or_default(options.seed, secrets.randbelow(MAX_SEED + 1)),
        steps=or_default(options.steps, settings.default_steps),
        guidance=or_default(args.guidance, settings.default_guidance),
        output_path=str(args.output),
        negative_prompt=options.negative_prompt,
        allow_nsfw=args.allow_nsfw,
        loras=options.loras,
        **extra,
    )


def parse_loras(values: list[str]) -> tuple[LoraRef, ...]:
    """`--lora SOURCE[:WEIGHT]` values as the request's LoRAs; each is named after its
    file (or folder, or hub id) stem, as an adapter name. Raises `InputError`."""
    from config.catalogue import MAX_LORA_WEIGHT

    loras: list[LoraRef] = []
    for value in values:
        source, sep, weight_text = value.rpartition(":")
        if not sep or "/" in weight_text or "\\" in weight_text:
            source, weight_text = value, ""
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            source, weight = value, 1.0  # a colon inside the source itself
        if not (0.0 <= weight <= MAX_LORA_WEIGHT):
            raise InputError(
                f"--lora {value}: the weight must be a number from 0 to {MAX_LORA_WEIGHT:g}."
            )
        if not source.strip():
            raise InputError(f"--lora {value}: give a LoRA file, folder or hub id.")
        name = Path(source.rstrip("/")).stem.lower() or "lora"
        taken = {ref.name for ref in loras}
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}-{n}", n + 1
        loras.append(LoraRef(unique, source, weight))
    return tuple(loras)


def with_cli_triggers(prompt: str, loras: tuple[LoraRef, ...], triggers: list[str]) -> str:
    """The prompt as the model sees it: the n-th `--lora-trigger` is the n-th LoRA's
    trigger words, put first as the bot puts a catalogue LoRA's (`with_triggers`)."""
    if not triggers:
        return prompt
    if len(triggers) > len(loras):
        raise InputError("Give each --lora-trigger after the --lora it belongs to.")
    from dataclasses import replace

    from config.catalogue import LoraEntry, one_model
    from config.lora_tags import LoraUse, with_triggers

    entries = {
        ref.name: LoraEntry(ref.name, ref.source, trigger=" ".join(words.split()))
        for ref, words in zip(loras, triggers, strict=False)
    }
    catalogue = replace(one_model("cli"), loras=entries)
    uses = tuple(LoraUse(ref.name, ref.weight) for ref in loras)
    return with_triggers(prompt, uses, catalogue)


def read_file(path: Path, what: str, max_bytes: int) -> bytes:
    """A file's bytes, refused like an upload past MAX_INPUT_BYTES."""
    from pipeline.prepare import check_declared_size

    if not path.is_file():
        raise InputError(f"No such {what} file: {path}")
    check_declared_size(path.stat().st_size, max_bytes=max_bytes)
    return path.read_bytes()


def read_input(path: Path, settings: Settings) -> Any:
    """The picture at `path` checked and normalized as the bot stores an upload (the same
    limits); raises `InputError`."""
    from pipeline.prepare import load_input

    return load_input(
        read_file(path, "image", settings.max_input_bytes),
        max_bytes=settings.max_input_bytes,
        min_side=settings.min_input_side,
        max_side=settings.max_stored_side,
    )


def load_engine(args: argparse.Namespace, settings: Settings, **extra: Any) -> Any:
    """`Engine.load` with the options over the settings (as the bot's worker loads it);
    raises `ModelLoadError`."""
    from pipeline.engine import Engine

    return Engine.load(
        or_default(args.model, settings.model_id),
        device=or_default(args.device, settings.device),
        dtype=or_default(args.dtype, settings.dtype),
        resolution=or_default(args.resolution, settings.resolution),
        safety_checker=or_default(args.safety_checker, settings.safety_checker),
        safety_checker_id=or_default(args.safety_checker_id, settings.safety_checker_id),
        **extra,
    )


def run_request(engine: Any, request: GenerationRequest) -> int:
    """Generate one request through the engine, print what ran, return the exit code."""
    try:
        (result,) = engine.generate([request])
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"seed: {result.seed}")
    print(f"steps: {result.steps_run} run (of {result.steps_total} scheduled)")
    print(f"time: {result.seconds:.2f} s")
    print(f"safety checker: {engine.info.safety_checker}")
    if result.withheld:
        print(
            "withheld: the safety checker flagged the image, so it was not written. "
            "Try another prompt or seed, or a lower strength.",
            file=sys.stderr,
        )
        return EXIT_WITHHELD
    if result.nsfw:
        print("flagged: the safety checker flagged the image (written: --allow-nsfw)")
    print(f"output: {result.output_path} ({result.width}x{result.height})")
    return 0
