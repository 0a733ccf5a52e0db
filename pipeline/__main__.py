"""Command line for the pipeline, without Discord: `python -m pipeline run|make-tiny`.

`run` goes through the same input checks and engine as the bot, so it is the quickest way
to try a model or an image. Bad input prints the bot's message to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import tempfile
from pathlib import Path
from typing import TypeVar

from config.settings import SettingsError, load_settings
from pipeline.request import (
    MAX_SEED,
    GenerationRequest,
    InputError,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_MODEL = 1


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="transform one image")
    run.add_argument("image", type=Path, help="input PNG, JPEG or WebP")
    run.add_argument("--prompt", required=True)
    run.add_argument("--strength", type=float, required=True, help="0.05 (keep) to 1.0")
    run.add_argument("--negative-prompt", default=None)
    run.add_argument("--seed", type=int, default=None, help="default: random")
    run.add_argument("--steps", type=int, default=None, help="default: DEFAULT_STEPS")
    run.add_argument("--guidance", type=float, default=None, help="default: DEFAULT_GUIDANCE")
    run.add_argument("--model", default=None, help="hub id or diffusers folder (MODEL_ID)")
    run.add_argument("--resolution", type=int, default=None, help="long side in px")
    run.add_argument("--device", default=None, choices=["auto", "cuda", "mps", "cpu"])
    run.add_argument("--dtype", default=None, choices=["auto", "fp16", "bf16", "fp32"])
    run.add_argument("--output", type=Path, required=True, help="where to write the PNG")

    tiny = sub.add_parser("make-tiny", help="write a tiny random-weight test model")
    tiny.add_argument("dir", type=Path)
    return parser


def _run(args: argparse.Namespace) -> int:
    from pipeline.prepare import check_declared_size, load_input

    try:
        settings = load_settings()  # the defaults of every option, as for the bot
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    max_bytes, min_side = settings.max_input_bytes, settings.min_input_side
    try:
        prompt = check_prompt(args.prompt)
        negative = check_prompt(args.negative_prompt, field="negative prompt", required=False)
        strength = check_strength(args.strength)
        seed = check_seed(args.seed)
        steps = check_steps(args.steps)
        if not args.image.is_file():
            raise InputError(f"No such image file: {args.image}")
        check_declared_size(args.image.stat().st_size, max_bytes=max_bytes)
        image = load_input(args.image.read_bytes(), max_bytes=max_bytes, min_side=min_side)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from pipeline.engine import Engine, ModelLoadError

    seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
    try:
        engine = Engine.load(
            _or(args.model, settings.model_id),
            device=_or(args.device, settings.device),
            dtype=_or(args.dtype, settings.dtype),
            resolution=_or(args.resolution, settings.resolution),
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL

    with tempfile.TemporaryDirectory(prefix="img2img-") as tmp:
        source = Path(tmp) / "input.png"
        image.save(source, format="PNG")
        request = GenerationRequest(
            job_id="cli",
            image_path=str(source),
            prompt=prompt,
            strength=strength,
            seed=seed,
            steps=_or(steps, settings.default_steps),
            guidance=_or(args.guidance, settings.default_guidance),
            output_path=str(args.output),
            negative_prompt=negative or None,
        )
        try:
            (result,) = engine.generate([request])
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"seed: {result.seed}")
    print(f"steps: {result.steps_run} run (of {result.steps_total} scheduled)")
    print(f"time: {result.seconds:.2f} s")
    print(f"output: {result.output_path} ({result.width}x{result.height})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "make-tiny":
        from pipeline.tiny import make_tiny

        print(f"wrote tiny model to {make_tiny(args.dir)}")
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
