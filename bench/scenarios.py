"""The benchmark's scenarios, each timing the full path against the direct loop.

Every scenario warms both paths up first (the first call at a shape or batch size costs
allocation, and on a GPU kernel selection or compilation), then runs `rounds` rounds. In a
round each mode gets the same jobs; the modes' order flips every round (A B C, C B A …) so
that a slow drift of the machine's load touches every mode alike. Rates come from the
median seconds per image over all rounds (see `ModeResult`); wall-clock rates are kept too.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.direct import DirectRun, DirectRunner
from bench.fullpath import FullPath, FullRun
from bench.inputs import JobSpec, make_jobs, make_mixed_jobs
from bench.report import percentile, rate, ratio
from pipeline.request import plan_steps

GUILD_A, GUILD_B = 1001, 2002


@dataclass
class Params:
    """What every job asks for (the same on both paths)."""

    steps: int
    strength: float
    guidance: float


@dataclass
class Lag:
    """Collects the ticker's samples of the full-path runs, per label."""

    samples: Callable[[], list[float]]
    by_label: dict[str, list[float]] = field(default_factory=dict)

    def mark(self) -> int:
        return len(self.samples())

    def add(self, label: str, since: int) -> None:
        self.by_label.setdefault(label, []).extend(self.samples()[since:])

    def all(self) -> list[float]:
        return [s for values in self.by_label.values() for s in values]


@dataclass
class ModeResult:
    """One mode (a path at a batch size) over all rounds.

    Two rates: `ips_wall` is images over summed wall time; `ips` is one over the median
    seconds per image of the calls (see `FullRun.unit_times`). On a machine shared with
    other work the median shrugs off the calls that another process slowed down, so the
    headline ratios use it; both are printed.
    """

    name: str
    images: int = 0
    wall: float = 0.0
    unit_times: list[float] = field(default_factory=list)  # seconds per image, per image
    latencies: list[float] = field(default_factory=list)  # full path: queued → delivered
    service: list[float] = field(default_factory=list)  # full path: dispatched → delivered
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def ips(self) -> float:
        return 1 / percentile(self.unit_times, 50) if self.unit_times else math.nan

    @property
    def ips_wall(self) -> float:
        return rate(self.images, self.wall)

    def add_direct(self, run: DirectRun) -> None:
        self.images += run.images
        self.wall += run.wall
        self.unit_times.extend(run.unit_times)

    def add_full(self, run: FullRun) -> None:
        self.images += run.images
        self.wall += run.wall
        self.unit_times.extend(run.unit_times)
        self.latencies.extend(run.latencies)
        self.service.extend(run.service_times)
        self.batch_sizes.extend(len(b) for b in run.batches)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "images": self.images,
            "wall_s": self.wall,
            "ips": self.ips,
            "ips_wall": self.ips_wall,
            "per_image_p50_s": percentile(self.unit_times, 50),
        }
        if self.latencies:
            out |= {
                "latency_p50_s": percentile(self.latencies, 50),
                "latency_p95_s": percentile(self.latencies, 95),
                "service_p50_s": percentile(self.service, 50),
                "batch_sizes": sorted(set(self.batch_sizes)),
            }
        return out


Step = Callable[[], Any]


async def _rounds(rounds: int, steps: Sequence[Step]) -> None:
    """Run `steps` `rounds` times, reversing their order every other round."""
    for r in range(rounds):
        for step in steps if r % 2 == 0 else list(reversed(steps)):
            await step()


class Bench:
    """Shared pieces of every scenario: the direct runner, the params, lag bookkeeping."""

    def __init__(
        self,
        direct: DirectRunner,
        params: Params,
        lag: Lag,
        out_dir: Path,
        note: Callable[[str], None],
    ) -> None:
        self.direct = direct
        self.params = params
        self.lag = lag
        self.out_dir = out_dir
        self.note = note
        self.measuring = False  # a timed full-path run is in progress (the lag ticker's cue)
        self.warmups: dict[str, float] = {}  # first call's seconds, per path, size and batch

    async def run_direct(self, jobs: Sequence[JobSpec], batch: int, label: str) -> DirectRun:
        folder = self.out_dir / "direct" / label
        folder.mkdir(parents=True, exist_ok=True)
        p = self.params
        return await self.direct.run(
            jobs,
            batch=batch,
            steps=p.steps,
            strength=p.strength,
            guidance=p.guidance,
            out_dir=str(folder),
        )

    async def run_full(
        self, full: FullPath, jobs: Sequence[JobSpec], max_batch: int, label: str
    ) -> FullRun:
        since = self.lag.mark()
        self.measuring = True
        try:
            p = self.params
            run = await full.run(
                jobs, max_batch=max_batch, steps=p.steps, strength=p.strength, guidance=p.guidance
            )
        finally:
            self.measuring = False
        self.lag.add(label, since)
        return run

    async def warm(
        self,
        full: FullPath,
        jobs: Sequence[JobSpec],
        batches: Sequence[int],
        direct_batches: Sequence[int] = (1,),
    ) -> None:
        """One call per batch size each path will be timed at, outside the timings.

        Their durations are kept in `warmups` (first-call costs: allocation, cuDNN
        autotuning, torch.compile of a new shape).
        """
        p = self.params
        size = jobs[0].width
        for b in direct_batches:
            run = await self.direct.run(
                jobs[:b],
                batch=b,
                steps=p.steps,
                strength=p.strength,
                guidance=p.guidance,
                out_dir=str(self._warm_dir()),
            )
            self.warmups.setdefault(f"direct {size}px b{b}", run.wall)
        for b in batches:
            full_run = await full.run(
                jobs[:b], max_batch=b, steps=p.steps, strength=p.strength, guidance=p.guidance
            )
            self.warmups.setdefault(f"full {size}px b{b}", full_run.wall)

    def _warm_dir(self) -> Path:
        folder = self.out_dir / "direct" / "warm"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def pixel_difference(a: str, b: str) -> dict[str, float]:
    """How far two PNGs are apart: largest channel difference and share of values that differ."""
    with Image.open(a) as ia, Image.open(b) as ib:
        x = np.asarray(ia.convert("RGB"), dtype=np.int16)
        y = np.asarray(ib.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"max": math.inf, "share": 1.0}
    diff = np.abs(x - y)
    return {"max": float(diff.max()), "share": float((diff > 0).mean())}


async def unbatched_and_batched(
    bench: Bench, full: FullPath, size: int, n: int, rounds: int, max_batch: int
) -> dict[str, Any]:
    """Scenarios 1 and 3 at `size`: direct loop, full path MAX_BATCH=1, full path batched."""
    data_dir = full.settings.data_dir
    warm = make_jobs(data_dir, size, max_batch, tag=f"warm{size}", seed0=500)
    jobs = make_jobs(data_dir, size, n, tag=f"big{size}")
    bench.note(f"{size} px: warming up (batch 1 and {max_batch})")
    await bench.warm(full, warm, sorted({1, max_batch}))
    direct, unbatched, batched = ModeResult("direct"), ModeResult("full"), ModeResult("batched")
    first_pair: dict[str, str] = {}

    async def d() -> None:
        run = await bench.run_direct(jobs, 1, f"big{size}")
        direct.add_direct(run)
        first_pair.setdefault("direct", run.outputs[0])

    async def f1() -> None:
        run = await bench.run_full(full, jobs, 1, "unbatched")
        unbatched.add_full(run)
        first = next(j for j, s in run.specs.items() if s.name == jobs[0].name)
        first_pair.setdefault("full", run.outputs[first])

    async def fb() -> None:
        batched.add_full(await bench.run_full(full, jobs, max_batch, "batched"))

    bench.note(f"{size} px: {rounds} rounds of {n} images × (direct, full, full batched)")
    await _rounds(rounds, [d, f1, fb])
    return {
        "direct": direct.summary(),
        "full": unbatched.summary(),
        "batched": batched.summary(),
        "ratio_unbatched": ratio(unbatched.ips, direct.ips),
        "ratio_on_off": ratio(batched.ips, unbatched.ips),
        "ratio_unbatched_wall": ratio(unbatched.ips_wall, direct.ips_wall),
        "ratio_on_off_wall": ratio(batched.ips_wall, unbatched.ips_wall),
        "outputs": pixel_difference(first_pair["direct"], first_pair["full"]),
    }


async def batched_vs_direct(
    bench: Bench, full: FullPath, size: int, n: int, rounds: int, max_batch: int
) -> dict[str, Any]:
    """Scenario 2: `n` same-shape jobs queued, full path batched vs the direct loop."""
    data_dir = full.settings.data_dir
    warm = make_jobs(data_dir, size, max_batch, tag=f"warm{size}", seed0=500)
    jobs = make_jobs(data_dir, size, n, tag=f"small{size}")
    bench.note(f"{size} px: warming up (direct 1, full path {max_batch})")
    await bench.warm(full, warm, [max_batch])
    direct, batched = ModeResult("direct"), ModeResult("batched")

    async def d() -> None:
        direct.add_direct(await bench.run_direct(jobs, 1, f"small{size}"))

    async def fb() -> None:
        batched.add_full(await bench.run_full(full, jobs, max_batch, "batched-small"))

    bench.note(f"{size} px: {rounds} rounds of {n} queued images × (direct, full batched)")
    await _rounds(rounds, [d, fb])
    return {
        "direct": direct.summary(),
        "batched": batched.summary(),
        "ratio_batched": ratio(batched.ips, direct.ips),
        "ratio_batched_wall": ratio(batched.ips_wall, direct.ips_wall),
    }


async def burst_order(
    full: FullPath, params: Params, size: int, max_batch: int, a: int = 6, b: int = 2
) -> dict[str, str]:
    """Guild A queues `a` jobs, then guild B `b`, behind a busy worker: who is served when."""
    jobs = make_jobs(full.settings.data_dir, size, a + b, tag="burst")
    jobs = [
        dataclasses.replace(j, guild_id=GUILD_A if i < a else GUILD_B) for i, j in enumerate(jobs)
    ]
    letters = {GUILD_A: "A", GUILD_B: "B"}
    out = {}
    for label, mb in (("unbatched", 1), ("batched", max_batch)):
        run = await full.run(
            jobs,
            max_batch=mb,
            steps=params.steps,
            strength=params.strength,
            guidance=params.guidance,
        )
        groups = [[letters[s.guild_id] for s in batch] for batch in run.served()]
        if mb == 1:
            out[label] = ",".join(g[0] for g in groups)
        else:
            out[label] = " ".join("[" + ",".join(g) + "]" for g in groups)
    return out


async def sweep(
    bench: Bench, full: FullPath, size: int, n: int, rounds: int, batches: Sequence[int]
) -> dict[str, Any]:
    """Full path at each MAX_BATCH in `batches` against the direct loop unbatched (and, for
    reference, the direct loop calling diffusers with the same batch size)."""
    data_dir = full.settings.data_dir
    warm = make_jobs(data_dir, size, max(batches), tag=f"warmsweep{size}", seed0=700)
    jobs = make_jobs(data_dir, size, n, tag=f"sweep{size}")
    bench.note(f"sweep at {size} px: warming up batch sizes {list(batches)}")
    await bench.warm(full, warm, sorted({1, *batches}), sorted({1, *batches}))
    direct1 = ModeResult("direct")
    modes: dict[int, tuple[ModeResult, ModeResult]] = {
        b: (ModeResult(f"full{b}"), ModeResult(f"direct{b}")) for b in batches
    }
    steps: list[Step] = []

    async def d1() -> None:
        direct1.add_direct(await bench.run_direct(jobs, 1, "sweep"))

    steps.append(d1)
    for b in batches:

        async def fb(b: int = b) -> None:
            modes[b][0].add_full(await bench.run_full(full, jobs, b, f"sweep{b}"))

        async def db(b: int = b) -> None:
            modes[b][1].add_direct(await bench.run_direct(jobs, b, f"sweep{b}"))

        steps.append(fb)
        if b > 1:
            steps.append(db)
    bench.note(f"sweep at {size} px: {rounds} rounds of {n} images per mode")
    started = time.perf_counter()
    await _rounds(rounds, steps)
    result: dict[str, Any] = {"direct": direct1.summary()}
    for b, (f, db_) in modes.items():
        lag = bench.lag.by_label.get(f"sweep{b}", [])
        result[str(b)] = {
            **f.summary(),
            "ratio": ratio(f.ips, direct1.ips),
            "direct_batched_ips": db_.ips if b > 1 else direct1.ips,
            "lag_p99_ms": percentile(lag, 99),
        }
    result["seconds"] = time.perf_counter() - started
    return result


def image_steps(jobs: Sequence[JobSpec], params: Params) -> int:
    """Denoising steps the jobs run in all (steps × strength each): the work done."""
    return sum(plan_steps(j.steps or params.steps, j.strength or params.strength)[1] for j in jobs)


async def step_vs_call(
    bench: Bench,
    step: FullPath,
    call: FullPath,
    size: int,
    n: int,
    rounds: int,
    max_batch: int,
) -> dict[str, Any]:
    """Iteration-level batching (BATCHING=step) against today's same-key batching
    (BATCHING=call), both on the full path at MAX_BATCH=`max_batch`:

    - mixed: `n` jobs with strengths, step counts and two aspect ratios mixed → ratio_mixed
    - uniform: `n` same-shape jobs with one step plan (scenario 2's) → ratio_uniform

    Rates are wall-clock (images over summed wall time): with step batching jobs leave the
    running set one by one, so there is no per-call time to take a median of."""
    data_dir = step.settings.data_dir
    mixed = make_mixed_jobs(data_dir, size, n, tag=f"mixed{size}")
    uniform = make_jobs(data_dir, size, n, tag=f"uniform{size}", seed0=4000)
    warm = make_mixed_jobs(data_dir, size, max_batch, tag=f"warmmixed{size}", seed0=600)
    for spec in [*mixed, *uniform, *warm]:  # the call path has a data dir of its own
        target = call.settings.data_dir / spec.input_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / spec.input_path, target)
    bench.note(f"{size} px: warming up both batching paths")
    for full in (step, call):
        await bench.run_full(full, warm, max_batch, "warm-mixed")
    modes = {
        (path, load): ModeResult(f"{path}-{load}")
        for path in ("step", "call")
        for load in ("mixed", "uniform")
    }
    jobs = {"mixed": mixed, "uniform": uniform}
    steps: list[Step] = []
    for path, full in (("step", step), ("call", call)):
        for load in ("mixed", "uniform"):

            async def go(path: str = path, full: FullPath = full, load: str = load) -> None:
                run = await bench.run_full(full, jobs[load], max_batch, f"{path}-{load}")
                modes[path, load].add_full(run)

            steps.append(go)
    bench.note(f"{size} px: {rounds} rounds of {n} images × (step, call) × (mixed, uniform)")
    await _rounds(rounds, steps)
    out: dict[str, Any] = {}
    for (path, load), m in modes.items():
        work = image_steps(jobs[load], bench.params) * rounds
        out[f"{path}_{load}"] = {**m.summary(), "image_steps_per_s": rate(work, m.wall)}
    for load in ("mixed", "uniform"):
        s, c = modes["step", load], modes["call", load]
        out[f"ratio_{load}"] = ratio(s.ips_wall, c.ips_wall)
        out[f"ratio_{load}_median"] = ratio(s.ips, c.ips)
    return out


async def mixed_sweep(
    bench: Bench, full: FullPath, size: int, n: int, rounds: int, batches: Sequence[int]
) -> dict[str, Any]:
    """The mixed workload on one full path at each MAX_BATCH in `batches`: image-steps per
    second per batch size (for GPU runs: where iteration-level batching pays)."""
    data_dir = full.settings.data_dir
    jobs = make_mixed_jobs(data_dir, size, n, tag=f"mixedsweep{size}")
    warm = make_mixed_jobs(data_dir, size, max(batches), tag=f"warmmixsw{size}", seed0=800)
    bench.note(f"mixed sweep at {size} px: warming up batch sizes {list(batches)}")
    for b in batches:
        started = time.perf_counter()
        await bench.run_full(full, warm, b, f"warm-mixed{b}")
        bench.warmups.setdefault(f"mixed {size}px b{b}", time.perf_counter() - started)
    modes = {b: ModeResult(f"mixed{b}") for b in batches}
    steps: list[Step] = []
    for b in batches:

        async def go(b: int = b) -> None:
            modes[b].add_full(await bench.run_full(full, jobs, b, f"mixed{b}"))

        steps.append(go)
    bench.note(f"mixed sweep at {size} px: {rounds} rounds of {n} images per MAX_BATCH")
    await _rounds(rounds, steps)
    work = image_steps(jobs, bench.params) * rounds
    result: dict[str, Any] = {
        str(b): {**m.summary(), "image_steps_per_s": rate(work, m.wall)} for b, m in modes.items()
    }
    base = modes[batches[0]].ips_wall
    for b, m in modes.items():
        result[str(b)]["ratio_to_first"] = ratio(m.ips_wall, base)
    return result
