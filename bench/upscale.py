"""Section `upscale` of `make bench`: one Upscale ×2, its tiles batched in sets vs one at a time.

An upscale's tiles are ordinary img2img jobs at the working size (see `pipeline.tiling`), so
they are timed here as the bot serves them: through the full path (JobService, the fair
queue, the worker's step batcher), every tile a job of its own with the upscale's prompt,
strength and a `tile_seed`. A PARENT px picture enlarged ×2 and cut into RESOLUTION px
tiles (128 px tiles on the tiny model, so 49 of them), run with MAX_BATCH on (the tiles of
one upscale share UNet calls: rows of one set) and with MAX_BATCH=1 (the same tiles one at a
time) → ratio_upscale (≥ 1.25, wall-clock). Beside it, ratio_upscale_cpu: the worker's
CPU seconds for the tiles one at a time ÷ batched, which moves less than wall time when other
programs share the machine. Both modes' tiles are blended with `tiling.blend` and the two
pictures compared: they must be identical on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import psutil
from PIL import Image

from bench.fullpath import FullPath, FullRun
from bench.inputs import JobSpec, make_jobs
from bench.report import TARGETS, ratio, verdict
from bench.scenarios import Bench, ModeResult, Step, _rounds, image_steps, pixel_difference
from pipeline.tiling import blend, cut, enlarge, plan_tiles, tile_seed, upscaled_size

PARENT = 256
"""The picture's side before the upscale (its ×2 is cut into RESOLUTION px tiles)."""
RESOLUTION = 128
STRENGTH = 0.2  # the upscale's default: the guide's 0.1–0.2 for quality upscaling
SEED = 2027


def tile_jobs(full: FullPath, *, tag: str) -> tuple[list[JobSpec], list[Any], tuple[int, int]]:
    """The tiles of one upscale as the bot queues them: each tile's picture stored as an
    input under the data dir, the upscale's prompt, the tile's derived seed."""
    data_dir = full.settings.data_dir
    (parent,) = make_jobs(data_dir, PARENT, 1, tag=f"{tag}-parent", seed0=SEED)
    size = upscaled_size(PARENT, PARENT, 2, 2048)
    resolution = full.settings.resolution or RESOLUTION
    boxes = plan_tiles(*size, resolution)
    with Image.open(parent.image_path) as src:
        tiles = cut(enlarge(src, size), boxes)
    jobs = []
    for i, (tile, box) in enumerate(zip(tiles, boxes, strict=True)):
        rel = f"inputs/{tag}-tile-{i}.png"
        tile.save(data_dir / rel, format="PNG")
        jobs.append(
            replace(
                parent,
                name=f"{tag}-tile-{i}",
                image_path=str((data_dir / rel).resolve()),
                input_path=rel,
                width=box[2] - box[0],
                height=box[3] - box[1],
                seed=tile_seed(SEED, i),
                strength=STRENGTH,
            )
        )
    return jobs, boxes, size


def _blend(run: FullRun, jobs: list[JobSpec], boxes: list[Any], size: tuple[int, int]) -> Any:
    by_name = {spec.name: job_id for job_id, spec in run.specs.items()}
    tiles = []
    for spec in jobs:
        with Image.open(run.outputs[by_name[spec.name]]) as made:
            tiles.append(made.convert("RGB"))
    return blend(tiles, boxes, size)


async def upscale_section(
    bench: Bench, full: FullPath, rounds: int, max_batch: int
) -> dict[str, Any]:
    """Time the tiles of one upscale batched (MAX_BATCH=`max_batch`) and one at a time."""
    jobs, boxes, size = tile_jobs(full, tag="upscale")
    warm = jobs[:max_batch]
    bench.note(f"upscale: warming up ({len(jobs)} tiles of {jobs[0].width} px)")
    for b in sorted({1, max_batch}):
        started = time.perf_counter()
        await bench.run_full(full, warm, b, f"warm-upscale{b}")
        bench.warmups.setdefault(f"upscale b{b}", time.perf_counter() - started)
    modes = {"batched": ModeResult("batched"), "single": ModeResult("single")}
    last: dict[str, FullRun] = {}
    cpu = {"batched": 0.0, "single": 0.0}
    worker = psutil.Process(full.worker.pid)
    steps: list[Step] = []
    for name, b in (("batched", max_batch), ("single", 1)):

        async def go(name: str = name, b: int = b) -> None:
            before = worker.cpu_times()
            run = await bench.run_full(full, jobs, b, f"upscale-{name}")
            after = worker.cpu_times()
            cpu[name] += after.user + after.system - before.user - before.system
            modes[name].add_full(run)
            last[name] = run

        steps.append(go)
    bench.note(f"upscale: {rounds} rounds of {len(jobs)} tiles × (batched, one at a time)")
    await _rounds(rounds, steps)
    pictures = {}
    for name, run in last.items():
        path = full.settings.data_dir / f"upscale-{name}.png"
        _blend(run, jobs, boxes, size).save(path, format="PNG")
        pictures[name] = str(path)
    work = image_steps(jobs, bench.params) * rounds
    out: dict[str, Any] = {
        name: {**m.summary(), "image_steps_per_s": work / m.wall if m.wall else 0.0}
        for name, m in modes.items()
    }
    batched, single = modes["batched"], modes["single"]
    return out | {
        "tiles": len(jobs),
        "tile_px": jobs[0].width,
        "size": size,
        "max_batch": max_batch,
        "ratio_upscale": ratio(batched.ips_wall, single.ips_wall),
        "ratio_upscale_cpu": ratio(cpu["single"], cpu["batched"]),
        "pictures": pixel_difference(pictures["batched"], pictures["single"]),
    }


def render_upscale(
    u: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The section's report lines and figures (wall-clock rates, as for `mixed`)."""
    b, s, p = u["batched"], u["single"], u["pictures"]
    target = TARGETS["ratio_upscale"]
    same = (
        "identical"
        if p["max"] == 0
        else f"differ by at most {p['max']:.0f}/255 in {p['share']:.2%} of values"
    )
    lines = [
        *lines,
        "",
        f"[7] Upscale ×2 of a {PARENT} px picture to {u['size'][0]}×{u['size'][1]}: "
        f"{u['tiles']} tiles of {u['tile_px']} px at strength {STRENGTH}, MAX_BATCH="
        f"{u['max_batch']} vs one at a time",
        f"    batched  {b['ips_wall']:.3f} tiles/s  latency p50 {b['latency_p50_s']:.2f} s",
        f"    single   {s['ips_wall']:.3f} tiles/s  latency p50 {s['latency_p50_s']:.2f} s",
        f"    ratio         {u['ratio_upscale']:.3f}   target ≥ {target:.2f}  "
        f"{verdict(u['ratio_upscale'], target)}   (wall-clock: tiles leave a set one by one)",
        f"    worker CPU s for the tiles one at a time ÷ batched: {u['ratio_upscale_cpu']:.3f}",
        f"    blended pictures, batched vs one at a time: {same}",
    ]
    return lines, figures | {
        "ratio_upscale": u["ratio_upscale"],
        "ratio_upscale_cpu": u["ratio_upscale_cpu"],
        "upscale_tiles": u["tiles"],
        "upscale_pictures_max_diff": p["max"],
    }
