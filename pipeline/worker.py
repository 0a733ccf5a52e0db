"""The model runs in one separate process; the bot talks to it through a pipe.

Why a process: a diffusers call holds the GIL-heavy Python side of torch for seconds, and
a crash of the model (OOM, CUDA error, kill -9) must not take the bot down. The worker is
started from a fresh interpreter (a fork server that imported torch once, else spawn: see
`start_context`), so the bot never imports torch (this module doesn't either) and CUDA is
initialised only in the worker.

Child side: `pipeline.worker_child` (`worker_main`, re-exported here).

Parent side, here: `WorkerClient` (asyncio). A reader thread turns pipe messages into events on an
`asyncio.Queue`, so the event loop never blocks on the pipe. Every submitted job gets
exactly one final event: `Finished`, `Failed` or `Cancelled`, or it is listed in a
`WorkerDied` when the process ends first (in `job_ids` if the worker had said `Started`
for it, else in `unstarted`, so the owner can run it again untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.context
import os
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pipeline.request import GenerationRequest
from pipeline.worker_child import (
    DEVICE_BROKEN_MESSAGE,
    ENGINE_REF,
    EXIT_DEVICE_BROKEN,
    EXIT_LOAD_FAILED,
    EXIT_OK,
    FAILED_MESSAGE,
    NO_IMAGE_MESSAGE,
    worker_main,
)
from pipeline.worker_protocol import (
    BatchDone,
    Cancel,
    Cancelled,
    EngineInfo,
    Exiting,
    Failed,
    Finished,
    LoadFailed,
    ModelLoaded,
    ModelLoading,
    Progress,
    Ready,
    Recall,
    Recalled,
    Run,
    Started,
    Stop,
    WorkerConfig,
    WorkerDied,
    WorkerEvent,
)

log = logging.getLogger(__name__)

EXIT_GRACE_S = 30.0
"""How long a worker that announced its exit (device broken) may take before it is killed."""

__all__ = [
    "DEVICE_BROKEN_MESSAGE",
    "ENGINE_REF",
    "EXIT_DEVICE_BROKEN",
    "EXIT_LOAD_FAILED",
    "EXIT_OK",
    "FAILED_MESSAGE",
    "NO_IMAGE_MESSAGE",
    "BatchDone",
    "Cancel",
    "Cancelled",
    "EngineInfo",
    "Failed",
    "Finished",
    "LoadFailed",
    "ModelLoaded",
    "ModelLoading",
    "Progress",
    "Ready",
    "Recall",
    "Recalled",
    "Run",
    "Started",
    "Stop",
    "WorkerClient",
    "WorkerConfig",
    "WorkerDied",
    "WorkerEvent",
    "WorkerStartError",
    "worker_main",
]


PRELOAD = ["pipeline.worker_preload"]


def start_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: forkserver where the platform has it, spawn elsewhere.

    Both start the worker from a fresh interpreter, never from the bot (which holds no torch
    and must not share its threads or sockets with a child). The fork server is that fresh
    interpreter, started once per bot process, with the worker's heavy imports done
    (`pipeline.worker_preload`), so each worker (the first, each restart after a crash, and
    the many short-lived ones of the test suite) costs a fork instead of seconds of imports.
    The worker gets the bot's environment as it is when the worker starts, as with spawn
    (`worker_main`'s `environ`); what torch and friends read at import comes from the
    environment the fork server started with.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class WorkerStartError(RuntimeError):
    """The worker could not be started: the model failed to load, loading timed out, or
    the process died first. The message says which, readable as is."""


# ======================================================================================
# Parent side
# ======================================================================================


class WorkerClient:
    """Owns the worker process: start, submit one batch at a time, read events, restart.

    Use from one event loop. After a `WorkerDied` event call `restart()`.
    """

    _engine_ref: str = ENGINE_REF  # tests may point this at a stand-in engine

    def __init__(
        self, config: WorkerConfig, *, start_timeout: float = 600.0, max_batch: int = 1
    ) -> None:
        self.max_batch = max(1, max_batch)
        # Step batching sizes its running set by the same number (see WorkerConfig.batching).
        self.config = dataclasses.replace(config, max_batch=self.max_batch)
        self.start_timeout = start_timeout
        self._ctx = start_context()
        self._events: asyncio.Queue[WorkerEvent] = asyncio.Queue()
        self._proc: Any = None  # multiprocessing.process.BaseProcess
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._generation = 0
        self._ready: asyncio.Future[EngineInfo] | None = None
        self._exited = asyncio.Event()
        self._alive = False
        self._stopping = False
        self._info: EngineInfo | None = None
        self._busy = False
        self._exiting = False  # the worker said it exits (device broken): submit nothing
        self._pending: dict[str, None] = {}  # submitted jobs without a final event, in order
        self._started: set[str] = set()  # … of which the worker said Started
        self._recalling: set[str] = set()  # … asked back, no answer yet
        self._exitcode: int | None = None

    # -- properties -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A batch was submitted and its BatchDone (or WorkerDied) has not arrived yet, or
        the worker said it exits after its BatchDone and has not exited yet."""
        return self._busy

    @property
    def step_slots(self) -> int:
        """>0: the worker batches per denoising step (`EngineInfo.step_slots`) and takes
        new jobs while others run; 0: one batch at a time."""
        info = self.info
        return int(getattr(info, "step_slots", 0) or 0) if info is not None else 0

    @property
    def step_capacity(self) -> int:
        """Step batching: jobs the worker may hold, running or ready to join. Twice the
        running set when it holds several: with one size running, a finished job's place is
        taken at the very next step by a job already in the worker, not after a round trip
        through the bot; with two sizes, both running sets can fill (the price: up to one
        set of jobs leaves the fair queue one set early)."""
        slots = self.step_slots
        return 2 * slots if slots > 1 else slots

    @property
    def free_slots(self) -> int:
        """`WorkerBackend`: none while not ready. Step batching: `step_capacity` − jobs in
        flight. Otherwise one batch at a time: none while busy, else `max_batch` (the
        batch size the owner configured)."""
        if self.info is None:
            return 0
        if self.step_slots:
            return 0 if self._exiting else max(0, self.step_capacity - len(self._pending))
        return 0 if self._busy else self.max_batch

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._alive and self._proc is not None else None

    @property
    def info(self) -> EngineInfo | None:
        """What the running worker loaded; None until ready and after it ended."""
        return self._info if self._alive else None

    @property
    def exitcode(self) -> int | None:
        """Exit code of the last worker process that ended (negative: killed by a signal)."""
        return self._exitcode

    @property
    def running(self) -> tuple[str, ...]:
        """Jobs of the current batch that have not had their final event yet."""
        return tuple(self._pending)

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> EngineInfo:
        """Spawn the worker and wait until the model is loaded."""
        if self._proc is not None:
            raise RuntimeError("worker already started; use restart()")
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation
        self._ready = loop.create_future()
        self._exited = asyncio.Event()
        self._stopping = False
        self._info = None
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self.config, self._engine_ref, dict(os.environ)),
            name="img2img-worker",
            daemon=True,  # multiprocessing terminates it if the bot exits without stop()
        )
        self._proc, self._conn = proc, parent_conn
        started = time.monotonic()
        try:
            await asyncio.to_thread(proc.start)
        except BaseException:
            self._proc = self._conn = None
            parent_conn.close()
            child_conn.close()
            raise
        child_conn.close()  # else we never see EOF when the child dies
        self._alive = True
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(parent_conn, proc, generation, loop),
            name=f"worker-reader-{proc.pid}",
            daemon=True,
        )
        self._reader.start()
        log.info("worker pid %s starting, loading %r", proc.pid, self.config.model_id)
        try:
            info = await asyncio.wait_for(asyncio.shield(self._ready), self.start_timeout)
        except TimeoutError:
            await self.stop(timeout=2.0)
            raise WorkerStartError(
                f"Loading model {self.config.model_id!r} took longer than "
                f"{self.start_timeout:g} s; the worker was stopped."
            ) from None
        except BaseException:  # LoadFailed, early death, or the caller gave up
            await self.stop(timeout=2.0)
            raise
        # what it loaded is the bot's one "worker ready: …" line (bot.jobs.dispatch)
        log.info("worker pid %s ready in %.1f s", proc.pid, time.monotonic() - started)
        return info

    async def restart(self) -> EngineInfo:
        """Stop whatever runs (or clean up a dead worker) and start a fresh one."""
        await self.stop()
        return await self.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; terminate, then kill it if it does not within `timeout`.

        Jobs still running get `Cancelled` if the worker manages to say so, else they are
        listed in a final `WorkerDied`.
        """
        proc, conn, reader = self._proc, self._conn, self._reader
        if proc is None:
            return
        self._stopping = True
        if not self._exited.is_set():
            if conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(Stop())
            if not await self._wait_exit(timeout):
                log.warning("worker pid %s did not stop in %g s; terminating", proc.pid, timeout)
                proc.terminate()
                if not await self._wait_exit(3.0):
                    log.warning("worker pid %s ignored SIGTERM; killing", proc.pid)
                    proc.kill()
                    if not await self._wait_exit(10.0):
                        log.error("worker pid %s did not die after SIGKILL", proc.pid)
        if reader is not None:
            await asyncio.to_thread(reader.join, 5.0)
        if conn is not None:
            conn.close()
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        self._proc = self._conn = self._reader = None
        self._alive = False
        self._busy = self._exiting = False
        log.info("worker stopped (exit code %s)", proc.exitcode)

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- jobs -------------------------------------------------------------------------
    def submit(self, batch: Sequence[GenerationRequest]) -> None:
        """Send one batch (jobs that share one diffusers call). One batch at a time, or
        with step batching any number of batches up to `free_slots` jobs in all.

        Never raises for a dead worker: the jobs then come back at once as the `unstarted`
        of a `WorkerDied` event. Raises only for a caller's mistake (an empty batch,
        duplicate ids, or a batch while `busy`)."""
        batch = tuple(batch)
        if not batch:
            raise ValueError("empty batch")
        job_ids = [r.job_id for r in batch]
        if len(set(job_ids)) != len(job_ids):
            raise ValueError(f"duplicate job ids in batch: {job_ids}")
        if not self._alive or self._info is None or self._conn is None:
            log.warning("worker is not running; jobs %s handed back unstarted", job_ids)
            self._events.put_nowait(WorkerDied(self._exitcode, (), unstarted=tuple(job_ids)))
            return
        if self.step_slots:
            if len(job_ids) > self.free_slots or any(j in self._pending for j in job_ids):
                raise RuntimeError(
                    f"{len(job_ids)} jobs for {self.free_slots} free slots"
                    f" (running: {', '.join(self._pending) or 'nothing'})"
                )
            self._busy = True
            self._pending.update(dict.fromkeys(job_ids))
        else:
            if self._busy:
                raise RuntimeError(f"worker is busy with {', '.join(self._pending) or 'a batch'}")
            self._busy = True
            self._pending = dict.fromkeys(job_ids)
            self._started = set()
        try:
            self._conn.send(Run(batch))
        except (OSError, ValueError) as exc:
            # The worker just died; the reader's EOF turns these jobs into a WorkerDied
            # (as unstarted: no Started came for them).
            log.warning("could not send batch to worker: %s", exc)

    def recall(self, job_id: str) -> None:
        """Step batching: ask the worker to hand back a job it holds but has not started
        (a fairer job should take its place). It comes back as `Recalled`, or starts
        anyway if its `Started` crossed the request. No-op for a started or unknown job."""
        if (
            not self.step_slots
            or job_id not in self._pending
            or job_id in self._started
            or job_id in self._recalling
            or self._conn is None
        ):
            return
        self._recalling.add(job_id)
        log.info("recalling job %s from the worker: a fairer job takes its place", job_id)
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(Recall(job_id))

    def cancel(self, job_id: str) -> None:
        """Ask the worker to drop this job at its next step. No-op unless it is running."""
        if job_id not in self._pending or self._conn is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(Cancel(job_id))

    async def next_event(self) -> WorkerEvent:
        """The next Started/Progress/Finished/Failed/Cancelled/BatchDone/WorkerDied, or
        ModelLoading/ModelLoaded (a served model being swapped in)."""
        return await self._events.get()

    # -- reader thread → event loop ---------------------------------------------------
    def _read_loop(
        self, conn: Connection, proc: Any, generation: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Runs in a thread: blocking reads here keep the event loop free."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message must not kill the reader
                log.exception("unreadable message from worker")
                continue
            if not _call_soon(loop, self._on_message, generation, message):
                return
        # EOF: the child closed its end, i.e. it is exiting. Reap it for the exit code.
        proc.join(30.0)
        if proc.exitcode is None:
            log.warning("worker pid %s closed its pipe but lives on; killing", proc.pid)
            proc.kill()
            proc.join()
        _call_soon(loop, self._on_exit, generation, proc.exitcode)

    def _on_message(self, generation: int, message: object) -> None:
        if generation != self._generation:
            return
        if isinstance(message, Ready):
            self._info = message.info
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message.info)
        elif isinstance(message, LoadFailed):
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WorkerStartError(message.message))
        elif isinstance(message, (Finished, Failed, Cancelled, Recalled)):
            self._pending.pop(message.job_id, None)
            self._started.discard(message.job_id)
            self._recalling.discard(message.job_id)
            self._events.put_nowait(message)
        elif isinstance(message, Exiting):
            self._exit_announced(generation)
        elif isinstance(message, BatchDone) and self.step_slots:
            # One Run of several in flight is done. Its jobs' final events came first and
            # ended them here; a job of it sent back to run again may be pending anew.
            if message.worker_exiting:
                self._exit_announced(generation)
            self._busy = bool(self._pending) or self._exiting
            self._events.put_nowait(message)
        elif isinstance(message, BatchDone):
            self._pending = {}
            self._started = set()
            if message.worker_exiting:
                self._exit_announced(generation)
            self._busy = self._exiting
            self._events.put_nowait(message)
        elif isinstance(message, Started):
            self._started.update(message.job_ids)
            self._recalling.difference_update(message.job_ids)  # too late: it runs
            self._events.put_nowait(message)
        elif isinstance(message, Progress | ModelLoading):
            self._events.put_nowait(message)
        elif isinstance(message, ModelLoaded):
            if self._info is not None:  # what `info` says is resident follows the worker
                self._info = dataclasses.replace(self._info, resident=message.resident)
            self._events.put_nowait(message)
        else:
            log.warning("ignoring unknown message from worker: %r", message)

    def _exit_announced(self, generation: int) -> None:
        """The device broke and the worker exits: busy until then, so nothing is
        submitted into it, and killed if it lingers."""
        if self._exiting:
            return
        self._exiting = self._busy = True
        log.warning("worker pid %s exits after this batch", self.pid)
        asyncio.get_running_loop().call_later(EXIT_GRACE_S, self._kill_if_alive, generation)

    def _kill_if_alive(self, generation: int) -> None:
        """The worker announced its exit long ago but lives on: end it."""
        proc = self._proc
        if generation == self._generation and self._alive and proc is not None:
            log.warning(
                "worker pid %s did not exit in %g s as announced; killing", proc.pid, EXIT_GRACE_S
            )
            proc.kill()

    def _on_exit(self, generation: int, exitcode: int | None) -> None:
        if generation != self._generation:
            return
        self._alive = False
        self._exitcode = exitcode
        self._exited.set()
        lost = tuple(j for j in self._pending if j in self._started)
        unstarted = tuple(j for j in self._pending if j not in self._started)
        self._pending = {}
        self._started = set()
        self._recalling = set()
        self._busy = False
        self._exiting = False
        if self._info is None:  # died while loading: start() reports it, not an event
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(
                    WorkerStartError(
                        f"The worker exited (code {exitcode}) before model "
                        f"{self.config.model_id!r} was loaded."
                    )
                )
                # start() may have been cancelled (the bot is closing): nobody else will
                # read it, and asyncio would log it as never retrieved.
                self._ready.exception()
            return
        if self._stopping and not lost and not unstarted:
            return
        if not self._stopping:
            log.error(
                "worker died (exit code %s) while running %s; not started: %s",
                exitcode, lost or "nothing", unstarted or "nothing",
            )  # fmt: skip
        self._events.put_nowait(WorkerDied(exitcode, lost, unstarted))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> bool:
    """call_soon_threadsafe that tolerates a closed loop (the bot is shutting down)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        return False
    return True
