"""Section `preview` (issue 29): what live previews cost the worker.

The mixed workload of section `mixed` (strengths, step counts and two aspect ratios mixed,
BATCHING=step, MAX_BATCH) through the full path twice: one worker with PREVIEW=taesd (the
tiny model's tiny autoencoder, `DIR/taesd`) and a preview every PREVIEW_EVERY_STEPS=5 steps
(tiny jobs end inside PREVIEW_INTERVAL_S, so steps, not seconds), one with PREVIEW=off.
ratio_preview = previews' wall-clock image rate ÷ off's (target ≥ 0.95). The statuses the
bench's delivery received count the previews that reached the bot.
"""

from __future__ import annotations

import shutil
from typing import Any

from bench.fullpath import FullPath
from bench.inputs import make_mixed_jobs
from bench.report import TARGETS, ratio, verdict
from bench.scenarios import Bench, ModeResult, Step, _rounds, image_steps

EVERY_STEPS = 5


async def preview_section(
    bench: Bench, on: FullPath, off: FullPath, size: int, n: int, rounds: int, max_batch: int
) -> dict[str, Any]:
    """Time the mixed workload with previews (`on`) and without (`off`), alternating."""
    data_dir = on.settings.data_dir
    jobs = make_mixed_jobs(data_dir, size, n, tag=f"preview{size}", seed0=7000)
    warm = make_mixed_jobs(data_dir, size, max_batch, tag=f"warmpreview{size}", seed0=7600)
    for spec in [*jobs, *warm]:  # the other worker has a data dir of its own
        target = off.settings.data_dir / spec.input_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / spec.input_path, target)
    bench.note(f"preview: {size} px, warming up both workers")
    for full in (on, off):
        await bench.run_full(full, warm, max_batch, "warm-preview")
    modes = {"taesd": ModeResult("taesd"), "off": ModeResult("off")}
    steps: list[Step] = []
    for name, full in (("taesd", on), ("off", off)):

        async def go(name: str = name, full: FullPath = full) -> None:
            modes[name].add_full(await bench.run_full(full, jobs, max_batch, f"preview-{name}"))

        steps.append(go)
    bench.note(f"preview: {rounds} rounds of {n} images × (PREVIEW=taesd, PREVIEW=off)")
    await _rounds(rounds, steps)
    work = image_steps(jobs, bench.params) * rounds
    out: dict[str, Any] = {
        name: {**m.summary(), "image_steps_per_s": work / m.wall if m.wall else 0.0}
        for name, m in modes.items()
    }
    return out | {
        "every_steps": EVERY_STEPS,
        "previews_shown": on.delivery.previews,
        "ratio_preview": ratio(modes["taesd"].ips_wall, modes["off"].ips_wall),
        "ratio_preview_median": ratio(modes["taesd"].ips, modes["off"].ips),
    }


def render_preview(
    p: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The section's report lines and figures (wall-clock rates, as for `mixed`)."""
    on, off = p["taesd"], p["off"]
    target = TARGETS["ratio_preview"]
    lines = [
        *lines,
        "",
        f"[11] live previews: the mixed workload with PREVIEW=taesd (tiny), a preview every "
        f"{p['every_steps']} steps, vs PREVIEW=off",
        f"    taesd  {on['ips_wall']:.3f} img/s  {on['image_steps_per_s']:.2f} image-steps/s"
        f"  ({p['previews_shown']} previews reached the bot's status edits)",
        f"    off    {off['ips_wall']:.3f} img/s  {off['image_steps_per_s']:.2f} image-steps/s",
        f"    ratio         {p['ratio_preview']:.3f}   target ≥ {target:.2f}  "
        f"{verdict(p['ratio_preview'], target)}   (median {p['ratio_preview_median']:.3f})",
    ]
    return lines, figures | {
        "ratio_preview": p["ratio_preview"],
        "ratio_preview_median": p["ratio_preview_median"],
    }
