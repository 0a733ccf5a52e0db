"""`python -m pipeline worker --redis URL`: one GPU worker that the bot reaches through
Valkey/Redis streams, started anywhere, as many as you like.

It runs batches exactly like the local worker process: it *is* `worker_child._Worker` (same
engine loading, same batch running, same failure messages), with the pipe swapped for
streams. The bot stays the only scheduler: the worker announces itself (a heartbeat key
with a TTL carrying its id, model and free slots, and a hello when its model is loaded),
the bot grants jobs into the worker's own grants stream, and the worker answers on its own
events stream, tagging every event with (job, attempt) so the bot can drop a late answer
for a job it already gave to another worker.

Input images travel inside the grant and the PNG inside the result (files here are only
scratch copies), so a worker needs no shared disk with the bot. The synchronous redis
client is fine here: three threads (generation, grants listener, heartbeat) each block on
their own calls. Every write is retried with backoff while the server is away, so a
restart of the server loses no event. SIGTERM gives running jobs back to the bot (they run
again elsewhere, same seed) and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import redis

from config.catalogue import DEFAULT_MODEL_NAME
from pipeline import stream_codec as codec
from pipeline.malloc_tuning import keep_freed_memory
from pipeline.request import EngineInfo, GenerationRequest
from pipeline.served_models import served_specs
from pipeline.worker_child import ENGINE_REF, _Worker
from pipeline.worker_metrics import WorkerMetrics, health_of, serve
from pipeline.worker_protocol import (
    BatchDone,
    Cancelled,
    Failed,
    Finished,
    LoadFailed,
    ModelLoaded,
    ModelLoading,
    Progress,
    Ready,
    Run,
    Started,
    WorkerConfig,
)

log = logging.getLogger(__name__)

EXIT_REFUSED = 3
"""The bot refused this worker (another model): restarting it would not help."""
GRANT_BLOCK_MS = 1000
EVENTS_MAXLEN = 10_000
RESULTS_KEPT_S = 3600.0
"""Events (results with their PNGs) no bot read for this long are deleted from the server."""
BACKOFF_MAX_S = 5.0


@dataclass
class _Held:
    """A granted job this worker has not sent a final event for yet."""

    attempt: int
    scratch: list[Path]


class _NoPipe:
    """`_Worker` closes its pipe on exit; a remote worker has none."""

    def close(self) -> None:
        pass


class RemoteWorker(_Worker):
    """`_Worker` with the pipe replaced by a grants stream in and an events stream out."""

    def __init__(
        self,
        client: redis.Redis,
        config: WorkerConfig,
        *,
        worker_id: str,
        max_batch: int,
        heartbeat_s: float,
        keys: codec.Keys | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__(_NoPipe(), config)  # type: ignore[arg-type]
        self.metrics = metrics
        self.r = client
        self.worker_id = worker_id
        self.max_batch = max(1, max_batch)
        self.heartbeat_s = heartbeat_s
        self.keys = keys or codec.Keys()
        self.info: EngineInfo | None = None
        self.held: dict[str, _Held] = {}
        self.held_lock = threading.Lock()
        self.epoch = ""
        self.seen = 0
        self.nonce = secrets.token_hex(8)
        """Drawn once per process: a restart under the same id is a new holder to the bot."""
        self.status_v = 0
        self._said: tuple[int, int, str] | None = None  # the last ask's (free, seen, epoch)
        self.last_step: float | None = None
        self.refused = False
        self.resident: tuple[str, ...] = ()
        """The served models loaded now (from Ready, then each ModelLoaded)."""
        self.swapping = False
        """Loading a model for waiting jobs: silent for a while, not dead."""
        self.registered = threading.Event()
        self.gone = False
        self.scratch = Path(tempfile.mkdtemp(prefix="img2img-worker-"))

    # -- entry --------------------------------------------------------------------------
    def serve(self, engine_ref: str = ENGINE_REF) -> int:
        """Load, serve until stopped or refused, say goodbye; the process exit code. The
        heartbeat starts before loading, saying so, so a long load is not taken for death."""
        threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True).start()
        try:
            code = self.run(engine_ref)
        finally:
            self.stopping.set()
            self._goodbye()
            shutil.rmtree(self.scratch, ignore_errors=True)
        return EXIT_REFUSED if self.refused else code

    # -- what the batch runner sends ----------------------------------------------------
    def _send(self, message: object) -> bool:
        if isinstance(message, Ready):
            self.info = message.info
            self.resident = message.info.resident
            self._beat()
            self._write(self.keys.hello, {b"hello": codec.dumps(self._status())}, maxlen=1000)
            self.registered.set()
            log.info("worker %s ready and announced", self.worker_id)
        elif isinstance(message, LoadFailed):
            log.error("%s", message.message)
        elif isinstance(message, Started):
            self._event("started", jobs=codec.dumps(self._tagged(message.job_ids)))
        elif isinstance(message, Progress):
            self.last_step = time.time()
            if self.metrics:
                self.metrics.last_step.set(self.last_step)
            self._event(
                "progress",
                jobs=codec.dumps(self._tagged(message.job_ids)),
                step=str(message.step),
                total=str(message.total),
                **codec.preview_fields(message.previews),
            )
        elif isinstance(message, Finished):
            self._final(message.job_id, "finished", **self._finished_fields(message))
        elif isinstance(message, Failed):
            retry = {"retry": "1"} if message.retry else {}  # the bot may run it once more
            self._final(message.job_id, "failed", message=message.message, **retry)
        elif isinstance(message, Cancelled):
            # Stopping (SIGTERM) cancels what runs: those jobs were not cancelled by anyone,
            # so they go back to the bot to run elsewhere.
            with self.cancel_lock:
                asked = message.job_id in self.cancelled
            kind = "cancelled" if asked or not self.stopping.is_set() else "released"
            self._final(message.job_id, kind)
        elif isinstance(message, BatchDone):
            self._ask()
        elif isinstance(message, ModelLoading | ModelLoaded):
            self._model_event(message)
        return True

    def _model_event(self, message: ModelLoading | ModelLoaded) -> None:
        """A swap starts or ends: an event for the bot, and the heartbeat says it at once
        (while loading, "loading" keeps a silent worker from being taken for dead)."""
        if isinstance(message, ModelLoading):
            self.swapping = True
            jobs = codec.dumps(self._tagged(message.job_ids))
            self._event("model_loading", model=message.model, jobs=jobs)
        else:
            self.swapping = False
            self.resident = message.resident
            resident = codec.dumps(list(message.resident))
            self._event("model_loaded", model=message.model, resident=resident)
        self._beat()

    def _finished_fields(self, message: Finished) -> dict[str, str | bytes]:
        result = message.result
        if self.metrics:
            self.metrics.gpu_seconds.inc(result.seconds)
        out: dict[str, str | bytes] = {"result": codec.encode_result(result)}
        if not result.withheld and result.output_path:
            path = Path(result.output_path)
            out["png"] = path.read_bytes()
            path.unlink(missing_ok=True)
        if result.structure_map:  # the map's thumbnail travels beside the PNG
            thumb = Path(result.structure_map)
            out["map"] = thumb.read_bytes()
            thumb.unlink(missing_ok=True)
        return out

    def _final(self, job_id: str, kind: str, **extra: str | bytes) -> None:
        with self.held_lock:
            held = self.held.pop(job_id, None)
        with self.cancel_lock:
            self.cancelled.discard(job_id)
        attempt = held.attempt if held else 0
        log.info("worker %s: job %s attempt %d %s", self.worker_id, job_id, attempt, kind)
        if self.metrics:  # counted before the bot can hear of it
            self.metrics.jobs.labels(kind).inc()
            self.metrics.held.set(len(self.held))
        # The final event says the slot it freed too (the ask it would need after it):
        # one event fewer a job for the bot to read.
        self._event(kind, job=job_id, a=str(attempt), **extra, **self._slots())
        if held:
            for path in held.scratch:
                path.unlink(missing_ok=True)

    def _tagged(self, job_ids: tuple[str, ...]) -> list[list[Any]]:
        with self.held_lock:
            return [[j, self.held[j].attempt if j in self.held else 0] for j in job_ids]

    def _ask(self) -> None:
        """Tell the bot how many jobs this worker takes now (after `seen` grants). The same
        answer as the last one is not sent again: a batch's last job ends (its final event
        says its slot, so it is known at once) just before its batch does (an ask that
        changed nothing), and in a fleet every event costs the bot's one process CPU."""
        said = self._slots()
        if said:
            self._event("ask", **said)

    def _slots(self) -> dict[str, str]:
        """An ask's fields (free slots, grants seen, the bot's epoch, the status version),
        after a heartbeat saying the same; none if the bot was told just that last."""
        self._beat()
        status = self._status()
        said = (status["free"], status["seen"], status["epoch"])
        if said == self._said:
            return {}
        self._said = said
        return {
            "free": str(status["free"]),
            "seen": str(status["seen"]),
            "e": status["epoch"],
            "v": str(status["v"]),
        }

    def _event(self, kind: str, **values: str | bytes) -> None:
        entry = {b"t": kind.encode(), b"w": self.worker_id.encode(), b"p": self.nonce.encode()}
        entry.update(
            {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in values.items()}
        )
        self._write(self.keys.events(self.worker_id), entry, maxlen=EVENTS_MAXLEN)

    def _write(self, key: str, entry: dict[bytes, bytes], *, maxlen: int) -> None:
        """XADD, retried with backoff while the server is away (a result must not be lost);
        gives up only when the worker was stopped and the server stays away for long."""
        delay, gave_up_at = 0.1, None
        while True:
            try:
                self.r.xadd(key, entry, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self.stopping.is_set():
                    gave_up_at = gave_up_at or time.monotonic() + 10.0
                    if time.monotonic() > gave_up_at:
                        log.error("server unreachable while stopping; event %s lost", entry[b"t"])
                        return
                log.warning("server unreachable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    # -- status and heartbeat -----------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        with self.held_lock:  # one moment's free slots, grants seen and jobs held
            done = self.stopping.is_set() or self.device_broken  # the exit is near
            free = 0 if done else max(0, self.max_batch - len(self.held))
            seen, epoch = self.seen, self.epoch
            held = [[job_id, h.attempt] for job_id, h in self.held.items()]
            self.status_v += 1  # orders statuses: the bot keeps the newest it read
            version = self.status_v
        return {
            "id": self.worker_id,
            "nonce": self.nonce,
            "v": version,
            "model": self.config.model_id,
            "models": [s.name for s in self.config.models] or [DEFAULT_MODEL_NAME],
            "sources": {s.name: s.source for s in self.config.models}
            or {DEFAULT_MODEL_NAME: self.config.model_id},
            "resident": list(self.resident),
            "info": codec.encode_info(self.info) if self.info else None,
            "batching": self.config.batching,
            "max_batch": self.max_batch,
            "free": free,
            "seen": seen,
            "epoch": epoch,
            "held": held,
            "loading": self.info is None or self.phase == "loading" or self.swapping,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "last_step": self.last_step,
        }

    def health(self) -> dict[str, Any]:
        """/healthz: model loaded, not stopping, and when the last step ran."""
        return health_of(
            self.info is not None, self.stopping.is_set(), self.last_step, len(self.held)
        )

    def _beat(self) -> None:
        """Set the heartbeat key (id, model, free slots) with its TTL; a failure is only
        logged: the next beat tries again, and the bot allows a whole TTL."""
        ttl_ms = max(100, int(self.heartbeat_s * 1000))
        if self.gone:
            return  # after the goodbye: a late beat would announce a stopped worker again
        try:
            self.r.set(self.keys.heartbeat(self.worker_id), codec.dumps(self._status()), px=ttl_ms)
            self.r.sadd(self.keys.workers, self.worker_id)  # again after a server restart
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("heartbeat failed: %s", exc)

    def _heartbeat(self) -> None:
        """Refresh the heartbeat key three times per TTL until stopped; drop results nobody
        collected for RESULTS_KEPT_S (the bot was away that long: their jobs ran again)."""
        while True:
            self._beat()
            oldest = int((time.time() - RESULTS_KEPT_S) * 1000)
            with contextlib.suppress(redis.RedisError):
                self.r.xtrim(self.keys.events(self.worker_id), minid=oldest, approximate=True)
            if self.stopping.wait(self.heartbeat_s / 3):
                return

    def _goodbye(self) -> None:
        self.gone = True
        with contextlib.suppress(redis.RedisError):
            self.r.delete(self.keys.heartbeat(self.worker_id))
        if self.info is not None and not self.refused:
            with contextlib.suppress(redis.RedisError):
                self._event("bye")
        log.info("worker %s stopped", self.worker_id)

    # -- grants listener (replaces the pipe listener) -----------------------------------
    def _listen(self) -> None:
        self.registered.wait()
        key, last, delay = self.keys.grants(self.worker_id), b"0-0", 0.1
        while not self.stopping.is_set():
            try:
                reply = self.r.xread({key: last}, count=16, block=GRANT_BLOCK_MS)
                delay = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("reading grants failed (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)
                continue
            for _stream, entries in reply or ():
                for entry_id, entry in entries:
                    last = entry_id
                    try:
                        self._on_grant(entry)
                    except Exception:
                        log.exception("could not take grant %r", entry_id)
                    with contextlib.suppress(redis.RedisError):
                        self.r.xdel(key, entry_id)

    def _on_grant(self, entry: codec.Fields) -> None:
        kind, target = codec.text(entry, "t"), codec.text(entry, "p")
        if target and target != self.nonce:
            # Meant for an earlier process under this id (a run, a cancel, a refusal): the
            # bot saw that process go and runs its jobs again as their next attempt.
            log.info("worker %s: skipping a %s for an earlier process", self.worker_id, kind)
            return
        if kind == "run":
            self._take(entry)
        elif kind == "cancel":
            job_id = codec.text(entry, "job")
            with self.held_lock:
                mine = job_id in self.held and self.held[job_id].attempt == codec.number(entry, "a")
            if mine:
                with self.cancel_lock:
                    self.cancelled.add(job_id)
        elif kind == "refused":
            log.error("the bot refused this worker: %s", codec.text(entry, "reason"))
            self.refused = True
            self._request_stop("refused by the bot")
        else:
            log.warning("ignoring unknown grant %r", kind)

    def _stale(self, fence: int) -> int:
        """The current scheduler's fencing token if `fence` is older (0: not stale)."""
        if not fence:
            return 0
        try:
            current = int(self.r.get(self.keys.scheduler_token) or 0)
        except (redis.ConnectionError, redis.TimeoutError):
            return 0  # cannot tell: the bot that granted it held the lock when it did
        return current if fence < current else 0

    def _take(self, entry: codec.Fields) -> None:
        epoch, seq = codec.text(entry, "e"), codec.number(entry, "n")
        current = self._stale(codec.number(entry, "f"))
        if current:
            log.warning(
                "worker %s: refusing a grant from a bot that no longer holds the scheduler "
                "lock (its token %d, the current one %d)",
                self.worker_id, codec.number(entry, "f"), current,
            )  # fmt: skip
            return
        with self.held_lock:
            if epoch != self.epoch:  # a (re)started bot numbers its grants from 1 again
                self.epoch, self.seen = epoch, 0
            if seq <= self.seen:
                return  # re-sent after a reconnect, and taken already
        batch: list[GenerationRequest] = []
        held: dict[str, _Held] = {}
        for item in codec.loads(entry[b"batch"]):
            request = codec.decode_request(item["req"])
            with self.held_lock:
                running = self.held.get(request.job_id)
                if running is not None:
                    # Already running here (a bot restarted and granted it again): the
                    # run in progress answers as the new attempt; it never runs twice.
                    running.attempt = int(item["a"])
                    continue
            request, scratch = self._localize(request, entry)
            held[request.job_id] = _Held(int(item["a"]), scratch)
            batch.append(request)
            log.info("worker %s: took job %s attempt %s", self.worker_id, request.job_id, item["a"])
        # `seen` and `held` change together: an ask between them would offer the bot a
        # slot this grant already fills (seen counts it, free does not yet).
        with self.held_lock:
            self.held.update(held)
            self.seen = seq
        if batch:
            self.commands.put(Run(tuple(batch)))

    def _localize(
        self, request: GenerationRequest, entry: codec.Fields
    ) -> tuple[GenerationRequest, list[Path]]:
        """Write the granted files to scratch and point the request at them."""
        changes: dict[str, str] = {}
        scratch: list[Path] = []
        stem = f"{request.job_id}-{time.monotonic_ns()}"
        for f in fields(request):
            if not f.name.endswith("_path"):
                continue
            if f.name == "output_path":
                path = self.scratch / f"{stem}.out.png"
            else:
                data = entry.get(f"file:{request.job_id}:{f.name}".encode())
                if data is None:
                    continue
                path = self.scratch / f"{stem}.{f.name}"
                path.write_bytes(data)
            changes[f.name] = str(path)
            scratch.append(path)
        return replace(request, **changes), scratch  # type: ignore[arg-type]


def config_from_settings(settings: Any) -> WorkerConfig:
    """The same `WorkerConfig` the bot gives its local worker: every field of it that the
    settings class has (MODEL_ID, DEVICE, DTYPE, COMPILE, SAFETY_CHECKER…)."""
    names = [f.name for f in fields(WorkerConfig) if hasattr(settings, f.name)]
    values = {name: getattr(settings, name) for name in names}
    return WorkerConfig(**values, models=served_specs(settings))


def main(url: str, worker_id: str | None = None, engine_ref: str = ENGINE_REF) -> int:
    """Run one worker until SIGTERM (or a refusal); the process exit code."""
    keep_freed_memory()
    from config.settings import load_settings

    settings = load_settings()
    url = url or settings.redis_url.get_secret_value()
    if not url:
        log.error("no server: pass --redis URL or set REDIS_URL")
        return 2
    wid = worker_id or settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    client = redis.Redis.from_url(
        url, socket_timeout=GRANT_BLOCK_MS / 1000 + 10, socket_connect_timeout=5
    )
    log.info("worker %s using %s", wid, codec.redact_url(url))
    metrics = WorkerMetrics() if settings.metrics_port else None
    worker = RemoteWorker(
        client,
        config_from_settings(settings),
        worker_id=wid,
        max_batch=settings.max_batch,
        heartbeat_s=settings.worker_heartbeat_s,
        metrics=metrics,
    )
    if metrics is not None and settings.metrics_port:
        serve(settings.metrics_port, metrics, worker.health)
    # Ctrl+C stops like SIGTERM: running jobs go back to the bot.
    signal.signal(signal.SIGINT, lambda signum, frame: worker._on_sigterm(signum, frame))
    return worker.serve(engine_ref)
