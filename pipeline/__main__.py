"""Command line for the pipeline, without Discord: `python -m pipeline run|inpaint|imagine|…`.

`run` goes through the same input checks, engine and safety checker (SAFETY_CHECKER,
SAFETY_CHECKER_ID) as the bot, so it is the quickest way to try a model or an image. Bad
input prints the bot's message to stderr and exits 2; an image the safety checker withheld
is not written, says so on stderr and exits 3.

`inpaint` regenerates only a masked region (see `pipeline.cli_inpaint`); `imagine` makes a
picture from a prompt alone (text-to-image, see `pipeline.cli_imagine`); `upscale` enlarges
one ×2, redrawing it tile by tile (see `pipeline.cli_upscale`).

`make-tiny` writes the tiny random-weight test model (and a tiny CLIPSeg in its `clipseg/`
folder, for MASK_MODEL_ID, and a tiny AutoencoderTiny in its `taesd/` folder, for
PREVIEW_MODEL_ID), optionally shipping a tiny safety checker (`--seed`: another
model of the same shape); `make-tiny-lora` a tiny random LoRA for it (kohya or PEFT keys);
`make-tiny-checker` writes a standalone tiny checker folder (for SAFETY_CHECKER_ID).

Every generating command takes `--lora SOURCE[:WEIGHT]` (repeatable) and `--lora-trigger
WORDS`, giving the bot's pixels for a prompt with `<lora:…>` tags.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from config.settings import SettingsError, load_settings
from pipeline.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_MODEL,
    EXIT_WITHHELD,
    add_common_arguments,
    build_request,
    check_options,
    load_engine,
    read_input,
    run_request,
)
from pipeline.cli_structure import add_structure_arguments, structure_options
from pipeline.request import InputError

log = logging.getLogger(__name__)

__all__ = ["EXIT_BAD_INPUT", "EXIT_MODEL", "EXIT_WITHHELD", "main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="transform one image")
    run.add_argument("image", type=Path, help="input PNG, JPEG or WebP")
    add_common_arguments(run)
    add_structure_arguments(run)

    from pipeline.cli_imagine import add_parser as add_imagine
    from pipeline.cli_inpaint import add_parser as add_inpaint
    from pipeline.cli_structure import add_parser as add_structure_map
    from pipeline.cli_upscale import add_parser as add_upscale
    from pipeline.tiny_checker import CHECKER_MODES

    add_inpaint(sub)
    add_imagine(sub)
    add_upscale(sub)
    add_structure_map(sub)

    tiny = sub.add_parser("make-tiny", help="write a tiny random-weight test model")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0, help="another seed: other weights")
    tiny.add_argument(
        "--single-file", type=Path, default=None, metavar="OUT.safetensors",
        help="also write the model as one original-layout checkpoint file",
    )  # fmt: skip
    tiny.add_argument(
        "--safety-checker",
        choices=[m for m in CHECKER_MODES if m != "like"],
        default=None,
        help="ship a tiny checker that flags every image (all), none, or dark images",
    )
    lora = sub.add_parser("make-tiny-lora", help="write a tiny random LoRA for a tiny model")
    lora.add_argument("out", type=Path, help="the .safetensors file to write")
    lora.add_argument("--model", type=Path, required=True, help="the model's diffusers folder")
    lora.add_argument("--seed", type=int, default=0)
    lora.add_argument("--format", choices=["kohya", "peft"], default="kohya")
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
    try:
        settings = load_settings()  # the defaults of every option, as for the bot
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        options = check_options(args)
        structure = structure_options(args, settings)
        image = read_input(args.image, settings)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from pipeline.engine import ModelLoadError

    try:
        engine = load_engine(args, settings, **structure["engine"])
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    with tempfile.TemporaryDirectory(prefix="img2img-") as tmp:
        source = Path(tmp) / "input.png"
        image.save(source, format="PNG")
        request = build_request(args, settings, options, source, **structure["request"])
        return run_request(engine, request)


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

        out = make_tiny(args.dir, safety_checker=args.safety_checker, seed=args.seed)
        print(f"wrote tiny model to {out}")
        if args.single_file is not None:
            from pipeline.tiny_single import write_single_file

            single = write_single_file(out, args.single_file)
            print(f"wrote it as one checkpoint file to {single} (load with config={out})")
        print(f"wrote tiny CLIPSeg (MASK_MODEL_ID) to {save_tiny_clipseg(args.dir / 'clipseg')}")
        print(f"wrote tiny AutoencoderTiny (PREVIEW_MODEL_ID) to {out / 'taesd'}")
        return 0
    if args.command == "make-tiny-lora":
        from pipeline.tiny_lora import make_tiny_lora

        try:
            out = make_tiny_lora(args.out, args.model, seed=args.seed, fmt=args.format)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"wrote tiny {args.format} LoRA to {out}")
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
    if args.command == "imagine":
        from pipeline.cli_imagine import run as run_imagine

        return run_imagine(args)
    if args.command == "structure-map":
        from pipeline.cli_structure import run_map

        return run_map(args)
    if args.command == "upscale":
        from pipeline.cli_upscale import run as run_upscale

        return run_upscale(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
