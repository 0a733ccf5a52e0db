"""The model runs in one separate process; the bot talks to it through a pipe.

Why a process: a diffusers call holds the GIL-heavy Python side of torch for seconds, and
a crash of the model (OOM, CUDA error, kill -9) must not take the bot down. The worker is
started with multiprocessing's *spawn* context, so the bot never imports torch (this module
doesn't either) and CUDA is initialised only in a fresh interpreter.

Child side: `worker_main` loads the `Engine`, says `Ready` (or `LoadFailed` and exits), then
runs one batch at a time. A listener thread reads commands while the main thread is inside
the diffusers call, so `Cancel` takes effect at the next denoising step.

Parent side: `WorkerClient` (asyncio). A reader thread turns pipe messages into events on an
`asyncio.Queue`, so the event loop never blocks on the pipe. Every submitted job gets
exactly one final event: `Finished`, `Failed` or `Cancelled`, or it is listed in a
`WorkerDied` when the process ends first (in `job_ids` if the worker had said `Started`
for it, else in `unstarted`, so the owner can run it again untouched).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pipeline.request import GenerationRequest, GenerationResult, InputError
from pipeline.worker_protocol import (
    BatchDone,
    Cancel,
    Cancelled,
    EngineInfo,
    Failed,
    Finished,
    LoadFailed,
    Progress,
    Ready,
    Run,
    Started,
    Stop,
    WorkerConfig,
    WorkerDied,
    WorkerEvent,
)

log = logging.getLogger(__name__)

ENGINE_REF = "pipeline.engine:Engine"
"""Where the worker finds the engine class (`module:attribute`)."""

PROGRESS_MIN_INTERVAL_S = 0.2
"""At most ~5 Progress messages a second; the first and the last step always go out."""

EXIT_OK = 0
EXIT_LOAD_FAILED = 1
EXIT_DEVICE_BROKEN = 70
"""The device is unusable after this error (e.g. a CUDA device-side assert): the worker
finishes the batch's events, then exits so that the owner restarts it."""

MAX_MESSAGE_CHARS = 300
EXIT_GRACE_S = 30.0
"""How long a worker that announced its exit (device broken) may take before it is killed."""

FAILED_MESSAGE = (
    "Something went wrong on our side while making this picture. Try again in a moment."
)
DEVICE_BROKEN_MESSAGE = (
    "The GPU hit an error while making this picture; the model is being restarted. "
    "Try again in a minute."
)
NO_IMAGE_MESSAGE = "The model returned no image for this job. Try again."

__all__ = [
    "EXIT_DEVICE_BROKEN",
    "BatchDone",
    "Cancel",
    "Cancelled",
    "EngineInfo",
    "Failed",
    "Finished",
    "LoadFailed",
    "Progress",
    "Ready",
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


class WorkerStartError(RuntimeError):
    """The worker could not be started: the model failed to load, loading timed out, or
    the process died first. The message says which, readable as is."""


# ======================================================================================
# Child side
# ======================================================================================


def worker_main(conn: Connection, config: WorkerConfig, engine_ref: str = ENGINE_REF) -> None:
    """Entry point of the worker process (spawn context). Exits when told or orphaned."""
    # Ctrl+C in a terminal reaches the whole process group; the bot decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s",
        )
    code = _Worker(conn, config).run(engine_ref)
    if code == EXIT_DEVICE_BROKEN:
        # Tearing down a broken CUDA context can hang; everything was sent already.
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


class _Worker:
    """State shared by the worker's main thread (generation) and listener thread (pipe)."""

    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.commands: queue.SimpleQueue[Run | None] = queue.SimpleQueue()
        self.cancelled: set[str] = set()
        self.cancel_lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.stopping = threading.Event()
        self.phase = "loading"  # loading | idle | running
        self.parent_pid = os.getppid()
        self.job_cancelled: type[BaseException] = _NeverRaised
        self.device_broken = False

    # -- main thread ------------------------------------------------------------------
    def run(self, engine_ref: str) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._listen, name="worker-listener", daemon=True).start()
        try:
            try:
                engine = self._load(engine_ref)
            except Exception as exc:
                log.exception("could not load model %r", self.config.model_id)
                self._send(LoadFailed(_load_message(self.config.model_id, exc)))
                return EXIT_LOAD_FAILED
            self.phase = "idle"
            if not self._send(Ready(engine.info)):
                return EXIT_OK
            log.info("ready: %s", engine.info)
            while not self.stopping.is_set():
                command = self.commands.get()
                if command is None:
                    break
                self.phase = "running"
                try:
                    self._run_batch(engine, command.batch)
                finally:
                    self.phase = "idle"
                if self.device_broken:
                    log.error("device unusable after an error; exiting so the bot restarts us")
                    return EXIT_DEVICE_BROKEN
            return EXIT_OK
        finally:
            self.stopping.set()
            with contextlib.suppress(OSError):
                self.conn.close()

    def _load(self, engine_ref: str) -> Any:
        module_name, _, attr = engine_ref.partition(":")
        module = importlib.import_module(module_name)
        self.job_cancelled = getattr(module, "JobCancelled", _NeverRaised)
        engine_cls = getattr(module, attr)
        c = self.config
        log.info("loading %r on %s (%s)", c.model_id, c.device, c.dtype)
        return engine_cls.load(
            c.model_id,
            device=c.device,
            dtype=c.dtype,
            resolution=c.resolution,
            compile=c.compile,
            channels_last=c.channels_last,
            safety_checker=c.safety_checker,
            safety_checker_id=c.safety_checker_id,
        )

    def _run_batch(self, engine: Any, batch: Sequence[GenerationRequest]) -> None:
        """Run one batch; every job gets exactly one final event, then BatchDone."""
        job_ids = tuple(r.job_id for r in batch)
        ended: set[str] = set()
        last_sent = -1.0

        def final(event: Finished | Failed | Cancelled) -> None:
            if event.job_id not in ended:
                ended.add(event.job_id)
                self._send(event)

        def on_progress(step: int, total: int) -> None:
            nonlocal last_sent
            now = time.monotonic()
            live = tuple(j for j in job_ids if j not in ended)
            if live and (
                last_sent < 0 or step >= total or now - last_sent >= PROGRESS_MIN_INTERVAL_S
            ):
                last_sent = now
                self._send(Progress(live, step, total))

        self._send(Started(job_ids))
        try:
            results: list[GenerationResult] = engine.generate(
                batch,
                on_progress=on_progress,
                is_cancelled=self._is_cancelled,
                on_cancelled=lambda job_id: final(Cancelled(job_id)),
                on_failed=lambda job_id, message: final(Failed(job_id, message)),
            )
        except self.job_cancelled:
            for job_id in job_ids:
                final(Cancelled(job_id))
        except Exception as exc:
            log.exception("batch %s failed", ", ".join(job_ids))
            message = self._failure_message(exc)
            for job_id in job_ids:
                final(Cancelled(job_id) if self._is_cancelled(job_id) else Failed(job_id, message))
        else:
            by_id = {r.job_id: r for r in results}
            for job_id in job_ids:
                if job_id in by_id:
                    final(Finished(by_id[job_id]))
                elif self._is_cancelled(job_id):
                    final(Cancelled(job_id))
                else:
                    final(Failed(job_id, NO_IMAGE_MESSAGE))
        finally:
            self._send(BatchDone(job_ids, worker_exiting=self.device_broken))

    def _failure_message(self, exc: BaseException) -> str:
        """Plain words for the user (the details are in the log); frees memory after an
        OOM and spots a broken device."""
        text = str(exc)
        if (
            isinstance(exc, MemoryError)
            or type(exc).__name__ == "OutOfMemoryError"
            or ("out of memory" in text.lower())
        ):
            _free_memory()
            return (
                f"Out of memory on {self.config.device} while generating. "
                "Try a smaller image or fewer images at once."
            )
        if any(s in text for s in ("CUDA error", "device-side assert", "CUBLAS_STATUS")):
            self.device_broken = True
            return DEVICE_BROKEN_MESSAGE
        if isinstance(exc, InputError):  # ours, written for the user
            return _describe(exc)
        return FAILED_MESSAGE

    def _is_cancelled(self, job_id: str) -> bool:
        if self.stopping.is_set():
            return True
        with self.cancel_lock:
            return job_id in self.cancelled

    def _send(self, message: object) -> bool:
        """Send to the parent; if it is gone, stop (nobody will read the results)."""
        try:
            with self.send_lock:
                self.conn.send(message)
            return True
        except (OSError, EOFError, ValueError):
            self._request_stop("parent connection lost")
            return False

    # -- signal handler (main thread) -------------------------------------------------
    def _on_sigterm(self, signum: int, frame: object) -> None:
        """Exit cleanly: at once while loading or idle, at the next step while running."""
        self.stopping.set()
        self.commands.put(None)  # SimpleQueue.put is safe in signal handlers
        if self.phase == "loading":
            raise SystemExit(EXIT_OK)

    # -- listener thread --------------------------------------------------------------
    def _listen(self) -> None:
        """Read commands so that Cancel/Stop arrive while the main thread generates."""
        while not self.stopping.is_set():
            try:
                if not self.conn.poll(1.0):
                    if os.getppid() != self.parent_pid:  # reparented: the bot is gone
                        self._request_stop("parent process exited")
                    continue
                command = self.conn.recv()
            except (EOFError, OSError, ValueError):
                self._request_stop("parent closed the connection")
                return
            if isinstance(command, Run):
                with self.cancel_lock:  # a late Cancel for an earlier batch must not linger
                    self.cancelled.clear()
                self.commands.put(command)
            elif isinstance(command, Cancel):
                with self.cancel_lock:
                    self.cancelled.add(command.job_id)
            elif isinstance(command, Stop):
                self._request_stop("asked to stop")
            else:
                log.warning("ignoring unknown command %r", command)

    def _request_stop(self, reason: str) -> None:
        if self.stopping.is_set():
            return
        log.info("stopping: %s", reason)
        self.stopping.set()
        self.commands.put(None)
        if self.phase == "loading":
            # Loading can take minutes inside C code; SIGTERM's handler ends it at once.
            os.kill(os.getpid(), signal.SIGTERM)


class _NeverRaised(Exception):
    """Stands in for `JobCancelled` when an engine module has none."""


def _describe(exc: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
    """First line of the exception, type-prefixed unless it is one of ours (already prose)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if not text:
        return type(exc).__name__
    if not type(exc).__module__.startswith("pipeline."):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _load_message(model_id: str, exc: BaseException) -> str:
    text = _describe(exc, limit=1000)  # for the operator: keep what was tried and why
    return text if model_id in text else f"Could not load model {model_id!r}: {text}"


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        if torch.backends.mps.is_available():
            torch.mps.empty_cache()


# ======================================================================================
# Parent side
# ======================================================================================


class WorkerClient:
    """Owns the worker process: start, submit one batch at a time, read events, restart.

    Use from one event loop. After a `WorkerDied` event call `restart()`.
    """

    _engine_ref: str = ENGINE_REF  # tests may point this at a stand-in engine

    def __init__(self, config: WorkerConfig, *, start_timeout: float = 600.0) -> None:
        self.config = config
        self.start_timeout = start_timeout
        self._ctx = multiprocessing.get_context("spawn")
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
        self._pending: dict[str, None] = {}  # submitted jobs without a final event, in order
        self._started: set[str] = set()  # … of which the worker said Started
        self._exitcode: int | None = None

    # -- properties -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A batch was submitted and its BatchDone (or WorkerDied) has not arrived yet, or
        the worker said it exits after its BatchDone and has not exited yet."""
        return self._busy

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
            args=(child_conn, self.config, self._engine_ref),
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
        log.info("worker pid %s ready in %.1f s: %s", proc.pid, time.monotonic() - started, info)
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
        self._busy = False
        log.info("worker stopped (exit code %s)", proc.exitcode)

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- jobs -------------------------------------------------------------------------
    def submit(self, batch: Sequence[GenerationRequest]) -> None:
        """Send one batch (jobs that share one diffusers call). One batch at a time.

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

    def cancel(self, job_id: str) -> None:
        """Ask the worker to drop this job at its next step. No-op unless it is running."""
        if job_id not in self._pending or self._conn is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(Cancel(job_id))

    async def next_event(self) -> WorkerEvent:
        """The next Started/Progress/Finished/Failed/Cancelled/BatchDone/WorkerDied."""
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
        elif isinstance(message, (Finished, Failed, Cancelled)):
            self._pending.pop(message.job_id, None)
            self._events.put_nowait(message)
        elif isinstance(message, BatchDone):
            self._pending = {}
            self._started = set()
            if message.worker_exiting:
                # Stay busy until the exit, so nothing is submitted into a dying worker.
                log.warning("worker pid %s exits after this batch", self.pid)
                asyncio.get_running_loop().call_later(EXIT_GRACE_S, self._kill_if_alive, generation)
            else:
                self._busy = False
            self._events.put_nowait(message)
        elif isinstance(message, Started):
            self._started.update(message.job_ids)
            self._events.put_nowait(message)
        elif isinstance(message, Progress):
            self._events.put_nowait(message)
        else:
            log.warning("ignoring unknown message from worker: %r", message)

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
        self._busy = False
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
