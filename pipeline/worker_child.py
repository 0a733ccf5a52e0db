"""The child side of the worker process: load the engine, then run one batch at a time.

`worker_main` is the worker's entry point (see `pipeline.worker` for why a process). It loads the
`Engine`, says `Ready` (or `LoadFailed` and exits), then runs batches: `Started`, progress,
exactly one final event per job, `BatchDone`. A listener thread reads commands while the
main thread is inside the diffusers call, so `Cancel` takes effect at the next denoising
step. With step batching (`EngineInfo.step_slots`, see `pipeline.worker_steps`) a Run that
arrives while others run joins them at the next step instead of waiting for a BatchDone.
Imports no torch itself: the engine module does, in the child only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from pipeline.malloc_tuning import keep_freed_memory
from pipeline.request import GenerationRequest, GenerationResult, InputError
from pipeline.structure import MapSettings
from pipeline.worker_protocol import (
    BatchDone,
    Cancel,
    Cancelled,
    Exiting,
    Failed,
    Finished,
    LoadFailed,
    ModelSpec,
    Progress,
    Ready,
    Recall,
    Run,
    Started,
    Stop,
    WorkerConfig,
)
from pipeline.worker_steps import PROGRESS_MIN_INTERVAL_S, StepServer, step_run

log = logging.getLogger(__name__)

ENGINE_REF = "pipeline.engine:Engine"
"""Where the worker finds the engine class (`module:attribute`)."""

EXIT_OK = 0
EXIT_LOAD_FAILED = 1
EXIT_DEVICE_BROKEN = 70
"""The device is unusable after this error (e.g. a CUDA device-side assert): the worker
finishes the batch's events, then exits so that the owner restarts it."""

MAX_MESSAGE_CHARS = 300
FAILED_MESSAGE = (
    "Something went wrong on our side while making this picture. Try again in a moment."
)
DEVICE_BROKEN_MESSAGE = (
    "The GPU hit an error while making this picture; the model is being restarted. "
    "Try again in a minute."
)
NO_IMAGE_MESSAGE = "The model returned no image for this job. Try again."


def worker_main(
    conn: Connection,
    config: WorkerConfig,
    engine_ref: str = ENGINE_REF,
    environ: dict[str, str] | None = None,
) -> None:
    """Entry point of the worker process. Exits when told or orphaned. `environ`: the bot's
    environment when it started this worker (a fork server's child would otherwise keep the
    server's, from when the server started)."""
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    # Ctrl+C in a terminal reaches the whole process group; the bot decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()
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
        self.recalled: set[str] = set()  # step batching: hand back if not started
        self.cancel_lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.stopping = threading.Event()
        self.phase = "loading"  # loading | failed (to load) | idle | running
        self.parent_pid = os.getppid()
        self.job_cancelled: type[BaseException] = _NeverRaised
        self.device_broken = False
        self.step_slots = 0
        """>0: iteration-level batching (`pipeline.worker_steps`) with this many jobs."""

    # -- main thread ------------------------------------------------------------------
    def run(self, engine_ref: str) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._listen, name="worker-listener", daemon=True).start()
        try:
            try:
                engine = self._load(engine_ref)
            except Exception as exc:
                # No longer loading: the Stop that answers LoadFailed must not SIGTERM us out
                # of the load (exit 0) while we return the load-failure exit code.
                self.phase = "failed"
                log.exception("could not load model %r", self.config.model_id)
                self._send(LoadFailed(_load_message(self.config.model_id, exc)))
                return EXIT_LOAD_FAILED
            self.phase = "idle"
            info = engine.info
            if self.config.batching == "step" and getattr(engine, "steps_ok", False):
                self.step_slots = max(1, self.config.max_batch)
                info = dataclasses.replace(info, step_slots=self.step_slots)
            if not self._send(Ready(info)):
                return EXIT_OK
            log.debug("ready: %s", info)  # the parent logs it once, in words
            while not self.stopping.is_set():
                command = self.commands.get()
                if command is None:
                    break
                self.phase = "running"
                runs = [command]
                try:
                    while runs and not self.device_broken:
                        run = runs.pop(0)
                        if self.step_slots and step_run(run, engine):
                            # Runs that arrive meanwhile join; a call-path one comes back.
                            runs[:0] = StepServer(self, engine, self.step_slots).serve(run)
                        else:
                            self._run_batch(engine, run.batch)
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
        if c.models:  # catalogue models: the default now, the others when a job needs them
            from pipeline.models import ModelPool

            def load(spec: ModelSpec) -> Any:
                log.info("loading model %s (%r) on %s", spec.name, spec.source, c.device)
                default = spec.name == c.models[0].name  # a dedicated inpaint model: its only
                return self._with_previews(engine_cls.load(
                    spec.source, **self._load_kwargs(), resolution=spec.resolution,
                    single_file_config=spec.config,
                    inpaint_model_id=c.inpaint_model_id if default else None,
                    controlnets={"edges": spec.controlnet_edges, "lines": spec.controlnet_lines},
                ))  # fmt: skip

            return ModelPool(
                c.models, load, resident_models=c.resident_models, notify=self._send,
                job_cancelled=self.job_cancelled,
            ).start()  # fmt: skip
        log.info("loading %r on %s (%s)", c.model_id, c.device, c.dtype)
        engine = engine_cls.load(
            c.model_id,
            **self._load_kwargs(),
            resolution=c.resolution,
            inpaint_model_id=c.inpaint_model_id,
            single_file_config=c.single_file_config,
            controlnets={"edges": c.controlnet_edges, "lines": c.controlnet_lines},
        )
        return self._with_previews(engine)

    def _with_previews(self, engine: Any) -> Any:
        """PREVIEW: the live previewer next to each loaded model (step path only); an
        unloaded model's goes with it."""
        c = self.config
        if c.preview == "off" or not getattr(engine, "steps_ok", False):
            return engine
        from pipeline.previews import setup_previews

        engine.previews = setup_previews(
            engine.pipe, engine.checker, mode=c.preview, model_id=c.preview_model_id,
            interval_s=c.preview_interval_s, every_steps=c.preview_every_steps,
        )  # fmt: skip
        return engine

    def _load_kwargs(self) -> dict[str, Any]:
        """`Engine.load`'s arguments every served model shares."""
        c = self.config
        return {
            "device": c.device,
            "dtype": c.dtype,
            "compile": c.compile,
            "channels_last": c.channels_last,
            "safety_checker": c.safety_checker,
            "safety_checker_id": c.safety_checker_id,
            "mask_model_id": c.mask_model_id,
            "mask_threshold": c.mask_threshold,
            "mask_dilate": c.mask_dilate,
            "max_loras_loaded": c.max_loras_loaded,
            "structure_maps": MapSettings(
                c.structure_edges_low, c.structure_edges_high, c.structure_lines_contrast
            ),
        }

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
        OOM, and spots a broken device and says so (`Exiting`) before any job's end."""
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
            if not self.device_broken:
                self.device_broken = True
                self._send(Exiting())
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
                if not self.step_slots:  # (step mode forgets a Cancel at the job's end)
                    with self.cancel_lock:  # a late Cancel for an earlier batch must not linger
                        self.cancelled.clear()
                self.commands.put(command)
            elif isinstance(command, Recall):
                with self.cancel_lock:
                    self.recalled.add(command.job_id)
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
