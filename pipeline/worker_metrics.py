"""METRICS_PORT on a remote worker: `/metrics` (Prometheus) and `/healthz`.

A plain threaded HTTP server (the worker has no event loop). `/healthz` is 200 once the
model is loaded and the worker is not stopping, with the time of the last denoising step,
so an orchestrator can restart a worker whose GPU hangs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.jobs = Counter("img2img_worker_jobs", "Jobs ended here, by outcome", ["outcome"],
                            registry=r)  # fmt: skip
        self.gpu_seconds = Counter(
            "img2img_worker_gpu_seconds", "Seconds spent generating", registry=r
        )
        self.last_step = Gauge(
            "img2img_worker_last_step_timestamp", "Unix time of the last step", registry=r
        )
        self.held = Gauge("img2img_worker_jobs_held", "Jobs granted, not ended", registry=r)


def serve(
    port: int, metrics: WorkerMetrics, health: Callable[[], dict[str, Any]], host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; `health()` gives the /healthz body (`ok` key)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                body = health()
                code = 200 if body.get("ok") else 503
                self._reply(code, json.dumps(body).encode(), "application/json")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    log.info("metrics on :%d (/metrics, /healthz)", port)
    return server


def health_of(loaded: bool, stopping: bool, last_step: float | None, held: int) -> dict[str, Any]:
    return {
        "ok": loaded and not stopping,
        "model_loaded": loaded,
        "stopping": stopping,
        "last_step_age_s": None if last_step is None else round(time.time() - last_step, 3),
        "jobs_held": held,
    }
