"""What the bot side feels while the worker generates: event-loop lag and memory.

The lag ticker asks the loop for a 10 ms sleep and records how late it wakes: that lateness
is how long a Discord heartbeat or an interaction reply would wait. RSS is sampled from a
thread so the samples do not depend on the loop being responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

TICK_S = 0.010
SAMPLE_S = 0.05


class LagTicker:
    """Records the overshoot of a 10 ms asyncio sleep whenever `active()` is true."""

    def __init__(self, active: Callable[[], bool], tick: float = TICK_S) -> None:
        self.active = active
        self.tick = tick
        self.samples_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            was_active = self.active()
            started = time.perf_counter()
            await asyncio.sleep(self.tick)
            late = time.perf_counter() - started - self.tick
            if was_active and self.active():
                self.samples_ms.append(max(0.0, late) * 1000)


def vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's exact peak RSS of a live process (Linux), or None."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class ProcessSampler:
    """Samples named processes every 50 ms: peak RSS per name, CPU seconds per process.

    A name may point at several processes over time (a restarted worker): the peak is the
    largest seen. `note_hwm` adds the kernel's own peak just before a process ends. The CPU
    figures tell how much of the machine *other* programs used during the run, since on a
    shared machine that is what makes timings wobble.
    """

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._cpu: dict[int, tuple[float, float]] = {}  # pid → (first, last) CPU seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._started = 0.0
        self._system_start = 0.0
        self.elapsed = 0.0
        self.others_cores = float("nan")

    def watch(self, name: str, pid: int | None, *, started_in_window: bool = True) -> None:
        """Sample `pid` as `name`; `started_in_window`: all its CPU time counts as ours."""
        if pid is None:
            return
        with self._lock, contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            self._procs[name] = proc
            now = _cpu_seconds(proc)
            self._cpu.setdefault(pid, (0.0 if started_in_window else now, now))

    def note_hwm(self, name: str, pid: int | None) -> None:
        """Fold in the kernel's peak RSS of `pid` (call before it exits)."""
        peak = vm_hwm_bytes(pid) if pid is not None else None
        if peak is not None:
            with self._lock:
                self.peaks[name] = max(self.peaks.get(name, 0), peak)
        self._sample()

    def start(self) -> None:
        self._started = time.monotonic()
        self._system_start = _system_busy()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sample()
        self.elapsed = time.monotonic() - self._started
        ours = sum(last - first for first, last in self._cpu.values())
        others = _system_busy() - self._system_start - ours
        self.others_cores = max(0.0, others) / self.elapsed if self.elapsed > 0 else float("nan")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            procs = list(self._procs.items())
        for name, proc in procs:
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    cpu = _cpu_seconds(proc)
            except psutil.Error:
                continue
            with self._lock:
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
                first, _ = self._cpu.get(proc.pid, (cpu, cpu))
                self._cpu[proc.pid] = (first, cpu)


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _system_busy() -> float:
    """CPU seconds all cores spent on anything but idling since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
