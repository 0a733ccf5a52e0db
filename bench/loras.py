"""Section `loras` of `make bench`: jobs with different LoRA sets sharing UNet calls.

Runs in a process of its own (`python -m bench.loras MODEL`, one JSON line out), so the
bench process (the bot side) never imports torch. On the engine itself, the worker's code,
in a process set up as a worker's (`keep_freed_memory`: without it the denoising loop's
freed activations go back to the OS and come back as freshly zeroed pages each step):
- ratio_lora_mixed: N jobs at SIZE px in fair order, four LoRA sets interleaved (none, A,
  B, A+B), MAX_BATCH jobs a set: the step path with mixed-LoRA rows (`Engine.run_steps`) ÷
  the call path grouped by LoRA set. The bot's call-path batch is a prefix of fair order
  sharing one key (`FairQueue.pop_batch`), so interleaved sets make every call one job
  (`Engine.generate` per job here). Target ≥ 1.10.
- lora_overhead: the same N jobs on the step path, all with one rank-8 LoRA ÷ none. Target
  ≥ 0.75 on the tiny model, whose UNet is small next to its LoRA layers; on real models
  the LoRA layers are a few per cent of a step's work. Each mode runs ROUNDS times in the
  order none, LoRA, LoRA, none (the bench's rounds convention) and the best run of each
  counts: on a shared 2-core machine one run of the same jobs took 6 s or 130 s with the
  load of the moment, and a single run in fixed order measured the load, not the LoRA.
Each mixed job's PNG is also compared between the two paths (they must be equal on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N_JOBS = 16
SIZE = 256
MAX_BATCH = 4
STEPS = 20
STRENGTH = 0.5
GUIDANCE = 7.5
ROUNDS = 2


def _jobs(folder: Path, image: str, sets: list[tuple[Any, ...]], tag: str) -> list[Any]:
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
            loras=sets[i % len(sets)],
        )
        for i in range(N_JOBS)
    ]


def _step(engine: Any, jobs: list[Any]) -> tuple[float, dict[str, str]]:
    from pipeline.stepbatch import StepHooks

    done: dict[str, str] = {}
    started = time.perf_counter()
    engine.run_steps(
        jobs, StepHooks(on_finished=lambda r: done.__setitem__(r.job_id, r.output_path)),
        max_batch=MAX_BATCH,
    )  # fmt: skip
    return time.perf_counter() - started, done


def _call(engine: Any, jobs: list[Any]) -> tuple[float, dict[str, str]]:
    done: dict[str, str] = {}
    started = time.perf_counter()
    for job in jobs:  # interleaved sets: every fair-order prefix of one key is one job
        for result in engine.generate([job]):
            done[result.job_id] = result.output_path
    return time.perf_counter() - started, done


def _pixels(path: str) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


def measure(model: str) -> dict[str, Any]:
    """Both figures on `model` (a diffusers folder of the tiny model's shape)."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.engine import Engine
    from pipeline.request import LoraRef
    from pipeline.tiny_lora import make_tiny_lora

    with tempfile.TemporaryDirectory(prefix="bench-loras-") as tmp:
        folder = Path(tmp)
        image = folder / "in.png"
        pixels = np.random.default_rng(7).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(image)
        a = LoraRef("a", str(make_tiny_lora(folder / "a.safetensors", model, seed=1)), 0.8)
        b = LoraRef("b", str(make_tiny_lora(folder / "b.safetensors", model, seed=2,
                                            fmt="peft")), 1.0)  # fmt: skip
        engine = Engine.load(model, device="cpu", resolution=SIZE, safety_checker="off")
        sets: list[tuple[Any, ...]] = [(), (a,), (b,), (a, b)]
        # warm-up: both LoRAs loaded, first calls paid, outside the timings
        warm = _jobs(folder, str(image), sets, "warm")[:MAX_BATCH]
        _step(engine, warm)
        _call(engine, warm[-1:])
        step_s, step_out = _step(engine, _jobs(folder, str(image), sets, "step"))
        call_s, call_out = _call(engine, _jobs(folder, str(image), sets, "call"))
        equal = all(
            np.array_equal(_pixels(step_out[f"step-{i}"]), _pixels(call_out[f"call-{i}"]))
            for i in range(N_JOBS)
        )
        runs: dict[str, list[float]] = {"plain": [], "lora": []}
        for r in range(ROUNDS):
            for tag in ("plain", "lora") if r % 2 == 0 else ("lora", "plain"):
                sets_r: list[tuple[Any, ...]] = [()] if tag == "plain" else [(a,)]
                runs[tag].append(_step(engine, _jobs(folder, str(image), sets_r, f"{tag}{r}"))[0])
        plain_s, lora_s = min(runs["plain"]), min(runs["lora"])
    return {
        "jobs": N_JOBS, "size": SIZE, "max_batch": MAX_BATCH, "steps": STEPS,
        "strength": STRENGTH, "threads": torch.get_num_threads(),
        "step_mixed_s": step_s, "call_grouped_s": call_s, "ratio_lora_mixed": call_s / step_s,
        "mixed_pixels_equal": equal, "step_plain_s": plain_s, "step_one_lora_s": lora_s,
        "lora_overhead": plain_s / lora_s, "rounds": ROUNDS,
        "step_plain_runs_s": runs["plain"], "step_one_lora_runs_s": runs["lora"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loras", description=__doc__)
    p.add_argument("model", help="a diffusers folder (the tiny model)")
    args = p.parse_args(argv)
    from pipeline.malloc_tuning import keep_freed_memory

    keep_freed_memory()  # as every worker process does at its start
    print(json.dumps(measure(args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


async def loras_section(model: str, note: Any) -> dict[str, Any]:
    """Run `measure` in a child process (the bench process never imports torch)."""
    from bench.child import child_json

    note(f"loras: {N_JOBS} jobs at {SIZE} px, four LoRA sets interleaved (engine process)")
    return await child_json("bench.loras", model)


def _runs(lo: dict[str, Any], key: str) -> str:
    return " / ".join(f"{s:.2f}" for s in lo.get(key, [])) or "one run"


def render_loras(
    lo: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The section's report lines and figures."""
    from bench.report import TARGETS, verdict

    mixed, overhead = lo["ratio_lora_mixed"], lo["lora_overhead"]
    t_mixed, t_over = TARGETS["ratio_lora_mixed"], TARGETS["lora_overhead"]
    lines = [
        *lines,
        "",
        f"[8] LoRAs: {lo['jobs']} jobs at {lo['size']} px, {lo['steps']} steps at strength "
        f"{lo['strength']}, MAX_BATCH={lo['max_batch']}, sets none/A/B/A+B interleaved",
        f"    step path, mixed-LoRA rows  {lo['step_mixed_s']:.2f} s",
        f"    call path, one LoRA set a call (fair-order prefixes: one job each)  "
        f"{lo['call_grouped_s']:.2f} s",
        f"    ratio_lora_mixed {mixed:.3f}   target ≥ {t_mixed:.2f}  {verdict(mixed, t_mixed)}"
        f"   (PNGs of both paths {'identical' if lo['mixed_pixels_equal'] else 'DIFFER'})",
        f"    step path: no LoRA {lo['step_plain_s']:.2f} s, one rank-8 LoRA on every job "
        f"{lo['step_one_lora_s']:.2f} s (best of {_runs(lo, 'step_plain_runs_s')} and "
        f"{_runs(lo, 'step_one_lora_runs_s')} s)",
        f"    lora_overhead {overhead:.3f}   target ≥ {t_over:.2f}  {verdict(overhead, t_over)}"
        "   (tiny UNet: on real models LoRA layers are a few per cent of a step)",
    ]
    return lines, figures | {
        "ratio_lora_mixed": mixed,
        "lora_overhead": overhead,
        "lora_pixels_equal": lo["mixed_pixels_equal"],
    }
