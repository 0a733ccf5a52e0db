"""Section `structure` of `make bench`: structure (ControlNet) rows sharing UNet calls with
free rows.

Runs in a process of its own (`python -m bench.structure MODEL`, one JSON line out), so the
bench process (the bot side) never imports torch. On the engine itself, the worker's code,
with the tiny model's ControlNets (`make-tiny` writes them beside it):
- ratio_structure_mixed: N jobs at SIZE px in fair order, half with `lines` (weight 1),
  interleaved with free ones, MAX_BATCH jobs a set: the step path mixing structure and
  free rows (`Engine.run_steps`) ÷ the call path, which batches only jobs of one structure
  kind and weight: the bot's call-path batch is a prefix of fair order sharing one key, so
  interleaved jobs make every call one job (`Engine.generate` per job here). Target ≥ 1.15.
- structure_overhead: the same N jobs on the step path, every one with `lines` ÷ none
  (reported: the ControlNet costs about the UNet's encoder half).
Each mixed job's PNG is also compared between the two paths (they must be equal on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.loras import MAX_BATCH, N_JOBS, SIZE, STEPS, _call, _pixels, _step

STRENGTH = 0.75
GUIDANCE = 7.5


def _jobs(folder: Path, image: str, controls: list[Any], tag: str) -> list[Any]:
    from pipeline.request import GenerationRequest

    return [
        GenerationRequest(
            job_id=f"{tag}-{i}",
            image_path=image,
            prompt=f"a lighthouse, picture {i}",
            strength=STRENGTH,
            seed=1000 + i,
            steps=STEPS,
            guidance=GUIDANCE,
            output_path=str(folder / f"{tag}-{i}.png"),
            control=controls[i % len(controls)],
        )
        for i in range(N_JOBS)
    ]


def _sketch(path: Path) -> None:
    """A floor-plan sketch: dark walls on light paper."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (238, 236, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((16, 16, SIZE - 16, SIZE - 16), outline=(35, 35, 35), width=4)
    draw.line((SIZE // 2, 16, SIZE // 2, SIZE * 2 // 3), fill=(35, 35, 35), width=4)
    draw.line((SIZE // 2, SIZE // 2, SIZE - 16, SIZE // 2), fill=(35, 35, 35), width=4)
    image.save(path)


def measure(model: str) -> dict[str, Any]:
    """Both figures on `model` (a diffusers folder of the tiny model's shape, with its
    `controlnet-lines` folder)."""
    import numpy as np
    import torch

    from pipeline.engine import Engine
    from pipeline.request import ControlRef
    from pipeline.tiny_controlnet import controlnet_dir

    with tempfile.TemporaryDirectory(prefix="bench-structure-") as tmp:
        folder = Path(tmp)
        image = folder / "in.png"
        _sketch(image)
        lines = {"lines": str(controlnet_dir(model, "lines"))}
        engine = Engine.load(
            model, device="cpu", resolution=SIZE, safety_checker="off", controlnets=lines
        )
        mixed: list[Any] = [ControlRef("lines", 1.0), None]
        warm = _jobs(folder, str(image), mixed, "warm")[:MAX_BATCH]
        _step(engine, warm)  # first calls paid outside the timings
        _call(engine, warm[:2])
        step_s, step_out = _step(engine, _jobs(folder, str(image), mixed, "step"))
        call_s, call_out = _call(engine, _jobs(folder, str(image), mixed, "call"))
        equal = all(
            np.array_equal(_pixels(step_out[f"step-{i}"]), _pixels(call_out[f"call-{i}"]))
            for i in range(N_JOBS)
        )
        plain_s, _ = _step(engine, _jobs(folder, str(image), [None], "plain"))
        lines_s, _ = _step(engine, _jobs(folder, str(image), [ControlRef("lines", 1.0)], "all"))
    return {
        "jobs": N_JOBS, "size": SIZE, "max_batch": MAX_BATCH, "steps": STEPS,
        "strength": STRENGTH, "threads": torch.get_num_threads(),
        "step_mixed_s": step_s, "call_grouped_s": call_s,
        "ratio_structure_mixed": call_s / step_s, "mixed_pixels_equal": equal,
        "step_plain_s": plain_s, "step_all_lines_s": lines_s,
        "structure_overhead": lines_s / plain_s,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.structure", description=__doc__)
    p.add_argument("model", help="a diffusers folder (the tiny model, with its ControlNets)")
    args = p.parse_args(argv)
    from pipeline.malloc_tuning import keep_freed_memory

    keep_freed_memory()  # as every worker process does at its start (see bench.loras)
    print(json.dumps(measure(args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


async def structure_section(model: str, note: Any) -> dict[str, Any]:
    """Run `measure` in a child process (the bench process never imports torch)."""
    from bench.child import child_json

    note(f"structure: {N_JOBS} jobs at {SIZE} px, half with lines, interleaved (engine process)")
    return await child_json("bench.structure", model)


def render_structure(
    st: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The section's report lines and figures."""
    from bench.report import TARGETS, verdict

    mixed, overhead = st["ratio_structure_mixed"], st["structure_overhead"]
    target = TARGETS["ratio_structure_mixed"]
    lines = [
        *lines,
        "",
        f"[10] Structure: {st['jobs']} jobs at {st['size']} px, {st['steps']} steps at strength "
        f"{st['strength']}, MAX_BATCH={st['max_batch']}, lines and free interleaved",
        f"    step path, structure and free rows in one call  {st['step_mixed_s']:.2f} s",
        f"    call path, one structure kind and weight a call (fair-order prefixes: one job "
        f"each)  {st['call_grouped_s']:.2f} s",
        f"    ratio_structure_mixed {mixed:.3f}   target ≥ {target:.2f}  "
        f"{verdict(mixed, target)}   (PNGs of both paths "
        f"{'identical' if st['mixed_pixels_equal'] else 'DIFFER'})",
        f"    step path: no structure {st['step_plain_s']:.2f} s, lines on every job "
        f"{st['step_all_lines_s']:.2f} s",
        f"    structure_overhead {overhead:.3f}   (reported: the ControlNet is about the "
        "UNet's encoder half)",
    ]
    return lines, figures | {
        "ratio_structure_mixed": mixed,
        "structure_overhead": overhead,
        "structure_pixels_equal": st["mixed_pixels_equal"],
    }
