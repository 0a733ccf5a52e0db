"""Structure on the command line: `run … --structure edges|lines --structure-weight W
--controlnet SOURCE` (the bot's pixels for a structure job), and `structure-map IMAGE --kind
edges|lines --output MAP.png` (the map the worker would hold that picture to)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from config.settings import Settings, SettingsError, load_settings
from pipeline.cli_common import EXIT_BAD_INPUT, or_default, read_input
from pipeline.request import (
    MAX_STRUCTURE_WEIGHT,
    MIN_STRUCTURE_WEIGHT,
    STRUCTURE_KINDS,
    InputError,
    check_structure,
)

DEFAULT_MAP_RESOLUTION = 512


def add_structure_arguments(p: argparse.ArgumentParser) -> None:
    """`run`'s structure options."""
    p.add_argument(
        "--structure", default="off", choices=["off", *STRUCTURE_KINDS],
        help="hold the input's structure: edges (a Canny map, photos) or lines (sketches)",
    )  # fmt: skip
    p.add_argument(
        "--structure-weight", type=float, default=1.0,
        help=f"how strongly ({MIN_STRUCTURE_WEIGHT:g}–{MAX_STRUCTURE_WEIGHT:g}, default 1)",
    )  # fmt: skip
    p.add_argument(
        "--controlnet", default=None, metavar="SOURCE",
        help="the ControlNet for --structure (default: CONTROLNET_EDGES_ID/_LINES_ID)",
    )  # fmt: skip


def structure_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """(request extras, engine extras) of `run`'s structure options: the control, and the
    ControlNet to load (--controlnet, else the setting for that kind)."""
    control = check_structure(args.structure, args.structure_weight)
    if control is None:
        return {"request": {}, "engine": {}}
    source = args.controlnet or getattr(settings, f"controlnet_{control.kind}")
    if not source:
        kind = control.kind.upper()
        raise InputError(f"--structure {control.kind} needs --controlnet or CONTROLNET_{kind}_ID.")
    return {"request": {"control": control}, "engine": {"controlnets": {control.kind: source}}}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("structure-map", help="write the structure map a job would use")
    p.add_argument("image", type=Path, help="input PNG, JPEG or WebP")
    p.add_argument("--kind", required=True, choices=list(STRUCTURE_KINDS))
    default = f"default RESOLUTION, else {DEFAULT_MAP_RESOLUTION}"
    p.add_argument("--resolution", type=int, default=None, help=f"long side in px ({default})")
    p.add_argument("--output", type=Path, required=True, help="where to write the map PNG")


def run_map(args: argparse.Namespace) -> int:
    """The map of the input as the bot stores it, at the size it would be generated at,
    with the thresholds of the settings."""
    from pipeline.prepare import fit_to_resolution
    from pipeline.structure import MapSettings, structure_map

    try:
        settings = load_settings()
        image = read_input(args.image, settings)
    except (SettingsError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    resolution = or_default(args.resolution, settings.resolution) or DEFAULT_MAP_RESOLUTION
    image = fit_to_resolution(image, int(resolution))
    maps = MapSettings(settings.structure_edges_low, settings.structure_edges_high,
                       settings.structure_lines_contrast)  # fmt: skip
    made = structure_map(image, args.kind, maps)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    made.save(args.output, format="PNG")
    print(f"output: {args.output} ({made.width}x{made.height})")
    return 0
