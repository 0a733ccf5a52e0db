"""`python -m pipeline upscale`: the bot's Upscale ×2 without Discord.

The same steps as the bot, with the same functions: the input checked like an upload
(`load_input`), the size checked against UPSCALE_MAX_SIDE (`upscaled_size`), the picture
enlarged with Lanczos and cut into tiles at the model's working size (`plan_tiles` at the
loaded engine's resolution: RESOLUTION, else native), each tile run as an ordinary img2img
request (the upscale's prompt, negative prompt, strength, steps and guidance, seed
`tile_seed(seed, i)`) through the engine path a bot job takes (the step batcher when
BATCHING=step, so the tiles share UNet calls, else the pipeline call), the finished tiles
blended by `blend`. So for the same inputs and settings the PNG is pixel-equal to the bot's.

The safety checker sees every tile (each is an ordinary job) and the blended picture. Exit
codes as for `run`: 2 bad input (the bot's message on stderr), 1 model, 3 withheld.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

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
)
from pipeline.request import GenerationRequest, GenerationResult, InputError
from pipeline.tiling import Box, blend, cut, enlarge, plan_tiles, tile_seed, upscaled_size

SCALES = (2,)
DEFAULT_STRENGTH = 0.2
"""The guide's advice for quality upscaling is 0.1–0.2: enough to redraw detail at the new
size, too little to change what the picture shows."""


def add_parser(sub: Any) -> None:
    """Register the `upscale` subcommand on `python -m pipeline`'s subparsers."""
    p = sub.add_parser("upscale", help="enlarge one image ×2, redrawing detail tile by tile")
    p.add_argument("image", type=Path, help="input PNG, JPEG or WebP")
    p.add_argument("--scale", type=int, choices=SCALES, default=2, help="size factor")
    add_common_arguments(p, strength_default=DEFAULT_STRENGTH)


def tile_requests(
    upscale: GenerationRequest, picture: Image.Image, boxes: list[Box], folder: Path
) -> list[GenerationRequest]:
    """One ordinary img2img request per tile of the enlarged `picture`: the tile stored as
    a PNG in `folder` (lossless, as the bot stores a job's input), the upscale's options,
    the tile's own derived seed."""
    folder.mkdir(parents=True, exist_ok=True)
    requests = []
    for i, tile in enumerate(cut(picture, boxes)):
        source = folder / f"tile-{i}.png"
        tile.save(source, format="PNG")
        requests.append(
            dataclasses.replace(
                upscale,
                job_id=f"{upscale.job_id}-tile-{i}",
                image_path=str(source),
                seed=tile_seed(upscale.seed, i),
                output_path=str(folder / f"tile-{i}-out.png"),
            )
        )
    return requests


def run_tiles(
    engine: Any, requests: list[GenerationRequest], *, max_batch: int, step_path: bool
) -> list[GenerationResult]:
    """Each tile through the engine as the bot's worker runs jobs: rows of the step
    batcher (up to `max_batch` a UNet call) where `step_path`, else pipeline calls of up to
    `max_batch` tiles (they share size, step plan and guidance). Results in tile order."""
    if step_path:
        from pipeline.stepbatch import StepHooks

        def failed(job_id: str, message: str) -> None:
            raise InputError(message)

        done: dict[str, GenerationResult] = {}
        hooks = StepHooks(on_finished=lambda r: done.setdefault(r.job_id, r), on_failed=failed)
        engine.run_steps(requests, hooks, max_batch=max_batch)
        return [done[req.job_id] for req in requests]
    results: list[GenerationResult] = []
    for start in range(0, len(requests), max_batch):
        results.extend(engine.generate(requests[start : start + max_batch]))
    return results


def upscale_picture(
    engine: Any,
    upscale: GenerationRequest,
    parent: Image.Image,
    size: tuple[int, int],
    folder: Path,
    *,
    max_batch: int,
    step_path: bool,
) -> tuple[Image.Image | None, list[Box], list[GenerationResult]]:
    """Enlarge → cut → every tile through the engine → blend. The picture is None when the
    safety checker withheld a tile (its result says which)."""
    picture = enlarge(parent, size)
    boxes = plan_tiles(*size, engine.info.resolution)
    requests = tile_requests(upscale, picture, boxes, folder)
    results = run_tiles(engine, requests, max_batch=max_batch, step_path=step_path)
    if any(r.withheld for r in results):
        return None, boxes, results
    tiles = []
    for result in results:
        with Image.open(result.output_path) as made:
            tiles.append(made.convert("RGB"))
    return blend(tiles, boxes, size), boxes, results


def run(args: argparse.Namespace) -> int:
    """Validate like the bot, upscale, write the PNG; print what ran."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        options = check_options(args)
        parent = read_input(args.image, settings)
        size = upscaled_size(parent.width, parent.height, args.scale, settings.upscale_max_side)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from pipeline.engine import ModelLoadError
    from pipeline.results import store_result

    try:
        engine = load_engine(args, settings)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="upscale-") as tmp:
        source = Path(tmp) / "input.png"
        parent.save(source, format="PNG")
        upscale = build_request(args, settings, options, source)
        try:
            picture, boxes, results = upscale_picture(
                engine, upscale, parent, size, Path(tmp),
                max_batch=settings.max_batch,
                step_path=settings.batching == "step" and engine.steps_ok,
            )  # fmt: skip
        except InputError as exc:  # a tile the engine could not read back
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    tile = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
    print(f"seed: {upscale.seed}")
    print(f"tiles: {len(boxes)} of {tile[0]}x{tile[1]} px")
    print(f"steps: {results[0].steps_run} run (of {results[0].steps_total} scheduled) a tile")
    print(f"safety checker: {engine.info.safety_checker}")
    if picture is None:
        flagged = [i + 1 for i, r in enumerate(results) if r.withheld]
        print(
            f"withheld: the safety checker flagged tile {flagged[0]} of {len(results)}, so "
            "nothing was written. Try another prompt or seed, or a lower strength.",
            file=sys.stderr,
        )
        return EXIT_WITHHELD
    flagged = bool(engine.checker.flags([picture])[0]) if engine.checker else False
    result = store_result(
        upscale, picture, flagged or any(r.nsfw for r in results),
        checked=engine.checker is not None, steps_run=results[0].steps_run,
        steps_total=results[0].steps_total, seconds=time.perf_counter() - started,
    )  # fmt: skip
    print(f"time: {result.seconds:.2f} s")
    if result.withheld:
        print(
            "withheld: the safety checker flagged the upscaled picture, so it was not "
            "written. Try another prompt or seed, or a lower strength.",
            file=sys.stderr,
        )
        return EXIT_WITHHELD
    if result.nsfw:
        print("flagged: the safety checker flagged the picture (written: --allow-nsfw)")
    print(f"output: {result.output_path} ({result.width}x{result.height})")
    return 0
