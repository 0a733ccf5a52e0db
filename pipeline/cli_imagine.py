"""`python -m pipeline imagine`: the bot's /imagine (text-to-image) without Discord.

The same checks of the options, the same size for the aspect (`aspect_size` at the loaded
model's resolution) and the same `Engine.generate`, so for the same prompt, seed, steps and
settings the PNG is pixel-equal to the bot's. Exit codes as for `run`: 2 bad input (the
bot's message on stderr), 1 model, 3 withheld.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config.settings import SettingsError, load_settings
from pipeline.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_MODEL,
    add_common_arguments,
    build_request,
    check_options,
    load_engine,
    run_request,
)
from pipeline.request import ASPECTS, InputError, NoiseStart, aspect_size


def add_parser(sub: Any) -> None:
    """Register the `imagine` subcommand on `python -m pipeline`'s subparsers."""
    p = sub.add_parser("imagine", help="make a picture from a prompt (text-to-image)")
    p.add_argument("--aspect", choices=list(ASPECTS), default="1:1", help="width:height")
    add_common_arguments(p, strength=False)


def run(args: argparse.Namespace) -> int:
    """Validate like the bot, generate from noise, write the PNG; print what ran."""
    try:
        settings = load_settings()
        options = check_options(args)
    except (SettingsError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from pipeline.engine import ModelLoadError

    try:
        engine = load_engine(args, settings)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    start = NoiseStart(*aspect_size(args.aspect, engine.info.resolution))
    return run_request(engine, build_request(args, settings, options, "", start=start))
