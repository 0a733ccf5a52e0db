"""`python -m bench` (`make bench`): the bot's full job path against a plain diffusers loop.

Scenarios (same model, device and inputs for both paths, in one run):
  1. SIZE px, batching off (MAX_BATCH=1): full path vs direct loop → ratio_unbatched (≥ 0.90)
  2. N_SMALL same-shape SMALL_SIZE px jobs queued, MAX_BATCH on, vs the direct unbatched
     loop → ratio_batched (≥ 1.25)
  3. SIZE px, batching on vs off on the full path → ratio_on_off (≥ 0.95: never slower)
  5. (section `mixed`) N_SMALL SMALL_SIZE px jobs, iteration-level batching (BATCHING=step)
     vs same-key batching (BATCHING=call), MAX_BATCH both: strengths, steps and two aspect
     ratios mixed → ratio_mixed (≥ 1.20); one shape and step plan → ratio_uniform (≥ 0.95)
  6. (section `fleet`) one bot process, a Valkey, 100 fake workers, 1,000 servers, 500 jobs
     waiting (bench/fleet.py) → fleet_cpu_ms_per_job (≤ 8), fleet_rest_calls_per_job (≤ 10),
     fleet_lag_p99_ms (≤ 50), fleet_fairness (≤ workers × MAX_BATCH), intake_ms_per_upload
  7. (section `upscale`) one Upscale ×2 of a 256 px picture at RESOLUTION=128: its 49 tiles
     batched (MAX_BATCH) vs one at a time, through the full path → ratio_upscale (≥ 1.25)
  8. (section `loras`) 16 jobs at 256 px, LoRA sets none/A/B/A+B interleaved, MAX_BATCH=4,
     on the engine in its own process (bench/loras.py): step path with mixed-LoRA rows vs
     call path by LoRA set → ratio_lora_mixed (≥ 1.10); one rank-8 LoRA on every job vs
     none → lora_overhead (≥ 0.75)
  9. (section `swaps`) 16 jobs alternating two tiny models on one worker, RESIDENT_MODELS=1,
     through the bot's routing and swap rule (bench/swaps.py) → swaps_per_job (≤ 0.25), with
     the largest displacement from fair order
  10. (section `structure`) 16 jobs at 256 px, half with structure `lines`, interleaved,
      MAX_BATCH=4, on the engine in its own process (bench/structure.py, the tiny model's
      ControlNets): step path mixing structure and free rows vs call path by structure
      kind and weight → ratio_structure_mixed (≥ 1.15); lines on every job vs none →
      structure_overhead (reported)
  11. (section `preview`) the mixed workload (scenario 5's, BATCHING=step) with live previews
      (PREVIEW=taesd, the tiny autoencoder, one every 5 steps) vs PREVIEW=off, two workers,
      alternating rounds → ratio_preview (≥ 0.95) (bench/previews.py)
plus the event-loop lag while the worker is busy, peak RSS of each process, the order in
which a two-guild burst is served and, with --sweep, a MAX_BATCH sweep (for GPU runs;
section `mixedsweep`: the mixed workload at SIZE px, image-steps per second per MAX_BATCH).

Every flag has an environment variable (in brackets); flags win. The last line printed is
one JSON object with the headline figures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.direct import DirectRunner
from bench.fleet import fleet_section
from bench.fullpath import FullPath
from bench.logs import stderr_to
from bench.loras import loras_section
from bench.monitor import LagTicker, ProcessSampler
from bench.options import Options, parse_args
from bench.previews import EVERY_STEPS, preview_section
from bench.report import json_line, render
from bench.scaleout import scaleout
from bench.scenarios import (
    Bench,
    Lag,
    Params,
    batched_vs_direct,
    burst_order,
    mixed_sweep,
    step_vs_call,
    sweep,
    unbatched_and_batched,
)
from bench.structure import structure_section
from bench.swaps import swaps_section
from bench.upscale import RESOLUTION as UPSCALE_RESOLUTION
from bench.upscale import upscale_section

BURST_STEPS = 4  # the burst only shows an order: 2 denoising steps are plenty


def note(text: str) -> None:
    """Progress for the person waiting; on stderr, so stdout holds only the report."""
    print(f"… {text}", file=sys.stderr, flush=True)


class Run:
    """One benchmark run: owns the processes, the samplers and the working folder."""

    def __init__(self, opts: Options, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.log = work / "bench.log"
        self.procs = ProcessSampler()
        self.full: FullPath | None = None
        self.bench: Bench | None = None
        self.engine: object | None = None  # the first worker's EngineInfo
        self.starts: dict[str, float] = {}  # process start (model load) seconds
        self.ticker = LagTicker(self._busy)

    def _busy(self) -> bool:
        """The lag ticker counts only while a timed full-path batch is in the worker."""
        return bool(
            self.bench is not None
            and self.bench.measuring
            and self.full is not None
            and self.full.worker.generating
        )

    async def model(self) -> str:
        if self.opts.model:
            return self.opts.model
        path = self.work / "tiny-model"
        note(f"building the tiny model in {path}")
        with self.log.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pipeline", "make-tiny", str(path), stdout=log, stderr=log
            )
            if await proc.wait() != 0:
                raise RuntimeError(f"make-tiny failed; see {self.log}")
        return str(path)

    async def start_full(
        self, model: str, resolution: int, batching: str = "step", **extra: Any
    ) -> FullPath:
        o = self.opts
        tag = "-".join(str(v) for v in extra.values())
        settings = FullPath.settings_for(
            self.work / f"data-{resolution}-{batching}{'-' + tag if tag else ''}",
            batching=batching,
            model_id=model,
            device=o.device,
            dtype=o.dtype,
            compile=o.compile,
            channels_last=o.channels_last,
            resolution=resolution,
            max_batch=max([o.max_batch, *o.sweep]),  # step batching: the running set's size
            **extra,
        )
        full = FullPath(settings)
        note(f"starting the worker ({resolution} px)")
        started = time.perf_counter()
        with stderr_to(self.log):
            await full.start()
        if batching != "step" or extra:  # a section's second worker, for comparison only
            label = f"worker {resolution}px {batching}{' ' + tag if tag else ''}"
            self.starts[label] = time.perf_counter() - started
            return full
        self.starts[f"worker {resolution}px"] = time.perf_counter() - started
        self.procs.watch("worker", full.worker.pid)
        self.full = full
        return full

    async def stop_full(self) -> None:
        if self.full is not None:
            self.procs.note_hwm("worker", self.full.worker.pid)
            await self.full.stop()
            self.full = None

    async def sections(self, model: str, r: dict[str, Any]) -> None:
        """Run the chosen sections, storing each one's results in `r` as it finishes.

        The headline scenarios come first, so a run cut short by a time limit still has
        them; the worker is restarted when the resolution changes (the engine's is fixed).
        """
        o, bench = self.opts, self.bench
        assert bench is not None
        if "big" in o.only:
            full = await self.use_full(model, o.size)
            r["big"] = await unbatched_and_batched(bench, full, o.size, o.n, o.rounds, o.max_batch)
        if "small" in o.only:
            full = await self.use_full(model, o.small_size)
            r["small"] = await batched_vs_direct(
                bench, full, o.small_size, o.n_small, o.rounds, o.max_batch
            )
        if "burst" in o.only:
            full = await self.use_full(model, o.small_size)
            note("two-guild burst")
            params = Params(BURST_STEPS, o.strength, o.guidance)
            r["burst"] = await burst_order(full, params, o.small_size, o.max_batch)
        if "mixed" in o.only:
            step = await self.use_full(model, o.small_size)
            note(f"starting a second worker with BATCHING=call ({o.small_size} px)")
            call = await self.start_full(model, o.small_size, batching="call")
            try:
                r["mixed"] = await step_vs_call(
                    bench, step, call, o.small_size, o.n_small, o.rounds, o.max_batch
                )
            finally:
                await call.stop()
        if "preview" in o.only:
            off = await self.use_full(model, o.small_size)
            note(f"starting a second worker with PREVIEW=taesd ({o.small_size} px)")
            on = await self.start_full(
                model, o.small_size, preview="taesd", preview_every_steps=EVERY_STEPS,
                preview_model_id=str(Path(model) / "taesd") if (Path(model) / "taesd").is_dir()
                else "",  # the tiny model's own (make-tiny writes it), else the family's
            )  # fmt: skip
            try:
                r["preview"] = await preview_section(
                    bench, on, off, o.small_size, o.n_small, o.rounds, o.max_batch
                )
            finally:
                await on.stop()
        if "upscale" in o.only:
            full = await self.use_full(model, UPSCALE_RESOLUTION)
            r["upscale"] = await upscale_section(bench, full, o.rounds, o.max_batch)
        if "loras" in o.only:  # the engine in its own process (bench/loras.py)
            r["loras"] = await loras_section(model, note)
        if "swaps" in o.only:  # the bot side and a worker with two tiny models (bench/swaps.py)
            r["swaps"] = await swaps_section(note)
        if "structure" in o.only:  # the engine in its own process (bench/structure.py)
            r["structure"] = await structure_section(model, note)
        if "mixedsweep" in o.only:
            full = await self.use_full(model, o.size)
            r["mixedsweep"] = await mixed_sweep(
                bench, full, o.size, o.n_sweep, o.rounds, o.sweep or [1, o.max_batch]
            )
        if "sweep" in o.only:
            full = await self.use_full(model, o.size)
            r["sweep"] = await sweep(bench, full, o.size, o.n_sweep, o.rounds, o.sweep)
        if "fleet" in o.only:  # no model: its own processes (bench/fleet.py)
            r["fleet"] = await fleet_section(note)
        if "scaleout" in o.only:
            full = await self.use_full(model, o.size)
            r["scaleout"] = await scaleout(
                bench, full, self.work, self.log, size=o.size, n=o.n, rounds=o.rounds, note=note
            )

    async def use_full(self, model: str, resolution: int) -> FullPath:
        """The running full path if it has this resolution, else a fresh one."""
        if self.full is not None and self.full.settings.resolution == resolution:
            return self.full
        await self.stop_full()
        full = await self.start_full(model, resolution)
        self.engine = self.engine or full.worker.info
        return full

    async def execute(self) -> dict[str, Any]:
        o = self.opts
        started = time.perf_counter()
        model = await self.model()
        self.procs.watch("bot", os.getpid(), started_in_window=False)
        self.procs.start()
        self.ticker.start()
        direct = DirectRunner(model, device=o.device, dtype=o.dtype)
        note("starting the direct loop's process")
        t = time.perf_counter()
        with stderr_to(self.log):
            info = await direct.start()
        self.starts["direct"] = time.perf_counter() - t
        self.procs.watch("direct", direct.pid)
        lag = Lag(lambda: self.ticker.samples_ms)
        self.bench = Bench(direct, Params(o.steps, o.strength, o.guidance), lag, self.work, note)
        r: dict[str, Any] = {"model": model, "direct_info": info, "cpus": psutil.cpu_count()}
        quick = False
        try:
            await self.sections(model, r)
        except asyncio.CancelledError:
            # Ctrl+C or gpu.sh's time limit: report the sections that finished.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            r["interrupted"] = True
            quick = True
            note("interrupted: reporting the sections that finished")
        finally:
            if quick and self.full is not None:
                await self.full.worker.stop(timeout=2.0)
            await self.stop_full()
            self.procs.note_hwm("direct", direct.pid)
            await direct.stop(quick=quick)
            await self.ticker.stop()
            self.procs.note_hwm("bot", os.getpid())
            self.procs.stop()
        bot_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r["rss"] = {**self.procs.peaks, "bot": max(self.procs.peaks.get("bot", 0), bot_peak)}
        r["others_cores"] = self.procs.others_cores
        r["engine"] = self.engine
        r["starts"] = self.starts
        r["warmups"] = self.bench.warmups if self.bench is not None else {}
        r["bot_side_torch"] = "torch" in sys.modules  # must stay False: the bot never loads it
        r["lag"] = lag.all()
        r["seconds"] = time.perf_counter() - started
        return r


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv, __doc__ or "")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = opts.out or Path(tempfile.mkdtemp(prefix="img2img-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(opts, work)
    try:
        results = asyncio.run(run.execute())
    except Exception as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if run.log.exists():
            tail = run.log.read_text(errors="replace").splitlines()[-25:]
            print(f"last lines of {run.log}:", *tail, sep="\n  ", file=sys.stderr)
        print(f"files kept in {work}", file=sys.stderr)
        return 1
    lines, figures = render(opts, results)
    print("\n".join(lines), flush=True)
    if opts.out is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"outputs and logs in {work}")
    print(json_line(figures), flush=True)
    return 1 if opts.strict and figures["targets_missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
