"""Command line for the pipeline, without Discord: `python -m pipeline run|inpaint|make-tiny`.

`run` goes through the same input checks, engine and safety checker (SAFETY_CHECKER,
SAFETY_CHECKER_ID) as the bot, so it is the quickest way to try a model or an image. Bad
input prints the bot's message to stderr and exits 2; an image the safety checker withheld
is not written, says so on stderr and exits 3.

`inpaint` regenerates only a masked region (see `pipeline.cli_inpaint`).

`make-tiny` writes the tiny random-weight test model (and a tiny CLIPSeg in its `clipseg/`
folder, for MASK_MODEL_ID), optionally shipping a tiny safety checker; `make-tiny-checker`
writes a standalone tiny checker folder (for SAFETY_CHECKER_ID).
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
EXIT_WITHHELD = 3


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
    run.add_argument(
        "--safety-checker", default=None, choices=["auto", "on", "off"], help="SAFETY_CHECKER"
    )
    run.add_argument("--safety-checker-id", default=None, help="SAFETY_CHECKER_ID")
    run.add_argument(
        "--allow-nsfw", action="store_true", help="write a flagged image anyway (marked)"
    )

    from pipeline.cli_inpaint import add_parser as add_inpaint
    from pipeline.tiny_checker import CHECKER_MODES

    add_inpaint(sub)

    tiny = sub.add_parser("make-tiny", help="write a tiny random-weight test model")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument(
        "--safety-checker",
        choices=[m for m in CHECKER_MODES if m != "like"],
        default=None,
        help="ship a tiny checker that flags every image (all), none, or dark images",
    )
    checker = sub.add_parser(
        "make-tiny-checker", help="write a standalone tiny safety checker folder"
    )
    checker.add_argument("dir", type=Path)
    worker = sub.add_parser(
        "worker", help="serve as one GPU worker of a bot with WORKER_BACKEND=redis"
    )
    worker.add_argument("--redis", default="", help="server URL (default: REDIS_URL)")
    worker.add_argument("--id", default=None, help="worker name (default: WORKER_ID or host-pid)")
    checker.add_argument("--flags", choices=CHECKER_MODES, required=True)
    checker.add_argument(
        "--like", type=Path, action="append", default=[], help="(like) flag images like this"
    )
    checker.add_argument(
        "--unlike", type=Path, action="append", default=[], help="(like) … but not like this"
    )
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
        image = load_input(
            args.image.read_bytes(),
            max_bytes=max_bytes,
            min_side=min_side,
            max_side=settings.max_stored_side,
        )
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
            safety_checker=_or(args.safety_checker, settings.safety_checker),
            safety_checker_id=_or(args.safety_checker_id, settings.safety_checker_id),
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
            allow_nsfw=args.allow_nsfw,
        )
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


def _worker(args: argparse.Namespace) -> int:
    """Settings come from the environment like the bot's (MODEL_ID, DEVICE, MAX_BATCH…)."""
    from pipeline.remote_worker import main as worker_main

    try:
        level = load_settings().log_level
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=level, format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    return worker_main(args.redis, args.id)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "worker":
        return _worker(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "make-tiny":
        from pipeline.tiny import make_tiny
        from pipeline.tiny_clipseg import save_tiny_clipseg

        print(f"wrote tiny model to {make_tiny(args.dir, safety_checker=args.safety_checker)}")
        print(f"wrote tiny CLIPSeg (MASK_MODEL_ID) to {save_tiny_clipseg(args.dir / 'clipseg')}")
        return 0
    if args.command == "make-tiny-checker":
        from pipeline.tiny_checker import save_tiny_checker

        try:
            out = save_tiny_checker(args.dir, args.flags, like=args.like, unlike=args.unlike)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"wrote tiny safety checker ({args.flags}) to {out}")
        return 0
    if args.command == "inpaint":
        from pipeline.cli_inpaint import run as run_inpaint

        return run_inpaint(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
