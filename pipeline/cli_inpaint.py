"""`python -m pipeline inpaint`: the bot's /inpaint without Discord.

It prepares the input and the mask with the bot's own code (`load_input`,
`mask_from_upload`, `mask_from_alpha`, `check_coverage`), stores both as PNGs the way the
bot does and runs the same `Engine.generate`, so for the same inputs, seed and settings
(MASK_BLUR, MASK_THRESHOLD, MASK_DILATE, MODEL_ID …) the PNG is pixel-equal to the bot's.
What to repaint: `--mask FILE`, else `--region WORDS`, else the input's transparent pixels.
Exit codes as for `run`: 2 bad input (the bot's message on stderr), 1 model, 3 withheld.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

from config.settings import SettingsError, load_settings
from pipeline.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_MODEL,
    add_common_arguments,
    build_request,
    check_options,
    load_engine,
    or_default,
    read_file,
    run_request,
)
from pipeline.mask import CROP_MODES, check_coverage, mask_from_alpha, mask_from_upload
from pipeline.request import InputError


def add_parser(sub: Any) -> None:
    """Register the `inpaint` subcommand on `python -m pipeline`'s subparsers."""
    p = sub.add_parser("inpaint", help="regenerate only a masked region of one image")
    p.add_argument("image", type=Path, help="input PNG, JPEG or WebP")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--mask", type=Path, help="white repaints, black keeps, grey blends")
    what.add_argument("--region", help="words for the mask model, e.g. 'the sky'")
    p.add_argument("--crop", choices=CROP_MODES, default="auto", help="only-masked mode")
    p.add_argument("--mask-blur", type=int, default=None, help="default: MASK_BLUR")
    p.add_argument("--mask-model", default=None, help="CLIPSeg for --region (MASK_MODEL_ID)")
    p.add_argument("--inpaint-model", default=None, help="INPAINT_MODEL_ID")
    add_common_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Validate like the bot, inpaint, write the PNG; print what ran."""
    from PIL import Image

    from pipeline.prepare import load_input

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    max_bytes = settings.max_input_bytes
    try:
        options = check_options(args)
        data = read_file(args.image, "image", max_bytes)
        image = load_input(
            data,
            max_bytes=max_bytes,
            min_side=settings.min_input_side,
            max_side=settings.max_stored_side,
        )
        mask = None
        if args.mask is not None:
            mask = mask_from_upload(read_file(args.mask, "mask", max_bytes), image.size)
        elif not args.region:
            with Image.open(io.BytesIO(data)) as upload:
                mask = mask_from_alpha(upload, size=image.size)
            if mask is None:
                raise InputError(
                    "Nothing says what to repaint: give --mask (white repaints, black "
                    "keeps) or --region words, or an input with transparent areas."
                )
        if mask is not None:
            check_coverage(mask)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from pipeline.engine import ModelLoadError

    mask_model = or_default(args.mask_model, settings.mask_model_id) if args.region else None
    try:
        engine = load_engine(
            args,
            settings,
            mask_model_id=mask_model or None,
            inpaint_model_id=or_default(args.inpaint_model, settings.inpaint_model_id) or None,
            mask_threshold=settings.mask_threshold,
            mask_dilate=settings.mask_dilate,
        )
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    if args.region and not engine.info.region_masks:
        print(
            "error: the mask model could not be loaded, so --region cannot be used "
            "(see the warning above); give --mask instead.",
            file=sys.stderr,
        )
        return EXIT_MODEL
    with tempfile.TemporaryDirectory(prefix="inpaint-") as tmp:
        source = Path(tmp) / "input.png"
        image.save(source, format="PNG")
        mask_path = None
        if mask is not None:
            mask_path = Path(tmp) / "mask.png"
            mask.save(mask_path, format="PNG")
        request = build_request(
            args,
            settings,
            options,
            source,
            mode="inpaint",
            mask_path=str(mask_path) if mask_path else None,
            region=None if mask_path else args.region,
            crop=args.crop,
            mask_blur=or_default(args.mask_blur, settings.mask_blur),
        )
        return run_request(engine, request)
