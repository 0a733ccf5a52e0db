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
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from config.settings import SettingsError, load_settings
from pipeline.mask import CROP_MODES, check_coverage, mask_from_alpha, mask_from_upload
from pipeline.request import (
    MAX_SEED,
    GenerationRequest,
    InputError,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
)

T = TypeVar("T")
EXIT_BAD_INPUT = 2
EXIT_MODEL = 1
EXIT_WITHHELD = 3


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def add_parser(sub: Any) -> None:
    """Register the `inpaint` subcommand on `python -m pipeline`'s subparsers."""
    p = sub.add_parser("inpaint", help="regenerate only a masked region of one image")
    p.add_argument("image", type=Path, help="input PNG, JPEG or WebP")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--mask", type=Path, help="white repaints, black keeps, grey blends")
    what.add_argument("--region", help="words for the mask model, e.g. 'the sky'")
    p.add_argument("--prompt", required=True)
    p.add_argument("--strength", type=float, required=True, help="0.05 (keep) to 1.0")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=None, help="default: random")
    p.add_argument("--steps", type=int, default=None, help="default: DEFAULT_STEPS")
    p.add_argument("--guidance", type=float, default=None, help="default: DEFAULT_GUIDANCE")
    p.add_argument("--crop", choices=CROP_MODES, default="auto", help="only-masked mode")
    p.add_argument("--mask-blur", type=int, default=None, help="default: MASK_BLUR")
    p.add_argument("--model", default=None, help="hub id or diffusers folder (MODEL_ID)")
    p.add_argument("--mask-model", default=None, help="CLIPSeg for --region (MASK_MODEL_ID)")
    p.add_argument("--inpaint-model", default=None, help="INPAINT_MODEL_ID")
    p.add_argument("--resolution", type=int, default=None, help="long side in px")
    p.add_argument("--device", default=None, choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default=None, choices=["auto", "fp16", "bf16", "fp32"])
    p.add_argument(
        "--safety-checker", default=None, choices=["auto", "on", "off"], help="SAFETY_CHECKER"
    )
    p.add_argument("--safety-checker-id", default=None, help="SAFETY_CHECKER_ID")
    p.add_argument("--allow-nsfw", action="store_true", help="write a flagged image anyway")
    p.add_argument("--output", type=Path, required=True, help="where to write the PNG")


def _read(path: Path, what: str, max_bytes: int) -> bytes:
    from pipeline.prepare import check_declared_size

    if not path.is_file():
        raise InputError(f"No such {what} file: {path}")
    check_declared_size(path.stat().st_size, max_bytes=max_bytes)
    return path.read_bytes()


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
        prompt = check_prompt(args.prompt)
        negative = check_prompt(args.negative_prompt, field="negative prompt", required=False)
        strength = check_strength(args.strength)
        seed = check_seed(args.seed)
        steps = check_steps(args.steps)
        data = _read(args.image, "image", max_bytes)
        image = load_input(
            data,
            max_bytes=max_bytes,
            min_side=settings.min_input_side,
            max_side=settings.max_stored_side,
        )
        mask = None
        if args.mask is not None:
            mask = mask_from_upload(_read(args.mask, "mask", max_bytes), image.size)
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
            mask_model_id=(_or(args.mask_model, settings.mask_model_id) if args.region else None)
            or None,
            inpaint_model_id=_or(args.inpaint_model, settings.inpaint_model_id) or None,
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
            mode="inpaint",
            mask_path=str(mask_path) if mask_path else None,
            region=None if mask_path else args.region,
            crop=args.crop,
            mask_blur=_or(args.mask_blur, settings.mask_blur),
        )
        try:
            (result,) = engine.generate([request])
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"seed: {result.seed}")
    print(f"steps: {result.steps_run} run (of {result.steps_total} scheduled)")
    print(f"time: {result.seconds:.2f} s")
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
