"""The benchmark's options: flags, each with an environment variable of the same meaning."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

SECTIONS = (
    "big", "small", "burst", "sweep", "scaleout", "mixed", "mixedsweep", "fleet", "upscale",
    "loras", "swaps", "structure", "preview",
)  # fmt: skip


@dataclass
class Options:
    model: str | None  # None: build the tiny model in the working folder
    device: str
    dtype: str
    compile: bool
    channels_last: bool
    steps: int
    strength: float
    guidance: float
    size: int
    small_size: int
    n: int
    n_small: int
    rounds: int
    max_batch: int
    sweep: list[int]
    n_sweep: int
    only: set[str]
    out: Path | None
    strict: bool


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def parse_args(argv: list[str] | None, description: str) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--model", default=os.environ.get("MODEL_ID"), help="[MODEL_ID] default: tiny model")
    add("--device", default=_env("DEVICE", "auto"), help="[DEVICE] auto, cuda, mps or cpu")
    add("--dtype", default=_env("DTYPE", "auto"), help="[DTYPE] auto, fp16, bf16 or fp32")
    add(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=_flag("COMPILE", False),
        help="[COMPILE] torch.compile the UNet in the worker",
    )
    add(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=_flag("CHANNELS_LAST", True),
        help="[CHANNELS_LAST] channels_last in the worker (CUDA only)",
    )
    add("--steps", type=int, default=int(_env("BENCH_STEPS", "20")), help="[BENCH_STEPS]")
    add(
        "--strength",
        type=float,
        default=float(_env("BENCH_STRENGTH", "0.5")),
        help="[BENCH_STRENGTH]",
    )
    add(
        "--guidance",
        type=float,
        default=float(_env("BENCH_GUIDANCE", "7.5")),
        help="[BENCH_GUIDANCE]",
    )
    add("--size", type=int, default=int(_env("BENCH_SIZE", "512")), help="[BENCH_SIZE] px")
    add(
        "--small-size",
        type=int,
        default=int(_env("BENCH_SMALL_SIZE", "256")),
        help="[BENCH_SMALL_SIZE] px, scenario 2 and the burst",
    )
    add("--n", type=int, default=int(_env("BENCH_N", "8")), help="[BENCH_N] SIZE px jobs a round")
    add(
        "--n-small",
        type=int,
        default=int(_env("BENCH_N_SMALL", "16")),
        help="[BENCH_N_SMALL] SMALL_SIZE px jobs queued a round",
    )
    add("--rounds", type=int, default=int(_env("BENCH_ROUNDS", "2")), help="[BENCH_ROUNDS]")
    add("--max-batch", type=int, default=int(_env("MAX_BATCH", "4")), help="[MAX_BATCH] when on")
    add(
        "--sweep",
        default=_env("BENCH_SWEEP", ""),
        help="[BENCH_SWEEP] MAX_BATCH values to compare at SIZE px, e.g. 1,4,8 (default: none)",
    )
    add("--n-sweep", type=int, default=int(_env("BENCH_N_SWEEP", "16")), help="[BENCH_N_SWEEP]")
    add(
        "--only",
        default=_env(
            "BENCH_ONLY",
            "big,small,mixed,preview,upscale,loras,swaps,structure,burst,scaleout,fleet",
        ),
        help=f"[BENCH_ONLY] sections, of {','.join(SECTIONS)}; --sweep adds sweep",
    )
    add("--out", type=Path, default=os.environ.get("BENCH_OUT"), help="[BENCH_OUT] keep files here")
    add("--strict", action="store_true", help="exit 1 when a target is missed")
    a = p.parse_args(argv)
    only = {s for s in a.only.replace(" ", "").split(",") if s}
    sweep = _ints(a.sweep)
    if sweep:
        only.add("sweep")
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; use {', '.join(SECTIONS)}")
    if "sweep" in only and not sweep:
        p.error("the sweep section needs --sweep, e.g. --sweep 1,4,8")
    if min(a.n, a.n_small, a.rounds, a.max_batch, a.n_sweep) < 1:
        p.error("counts, rounds and MAX_BATCH must be at least 1")
    return Options(
        model=a.model,
        device=a.device,
        dtype=a.dtype,
        compile=a.compile,
        channels_last=a.channels_last,
        steps=a.steps,
        strength=a.strength,
        guidance=a.guidance,
        size=a.size,
        small_size=a.small_size,
        n=a.n,
        n_small=a.n_small,
        rounds=a.rounds,
        max_batch=a.max_batch,
        sweep=sweep,
        n_sweep=a.n_sweep,
        only=only,
        out=a.out,
        strict=a.strict,
    )
