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


class RssSampler:
    """Samples the RSS of named processes every 50 ms; keeps each name's peak.

    A name may point at several processes over time (a restarted worker): the peak is
    the largest seen. `note_hwm` adds the kernel's own peak just before a process ends.
    """

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int | None) -> None:
        if pid is None:
            return
        with self._lock, contextlib.suppress(psutil.Error):
            self._procs[name] = psutil.Process(pid)

    def note_hwm(self, name: str, pid: int | None) -> None:
        """Fold in the kernel's peak RSS of `pid` (call before it exits)."""
        peak = vm_hwm_bytes(pid) if pid is not None else None
        if peak is not None:
            with self._lock:
                self.peaks[name] = max(self.peaks.get(name, 0), peak)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                procs = list(self._procs.items())
            for name, proc in procs:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                with self._lock:
                    self.peaks[name] = max(self.peaks.get(name, 0), rss)
