"""METRICS_PORT: `/metrics` (Prometheus) and `/healthz` for the bot process.

Measured without touching the job service: outcomes, latency and GPU seconds are counted
by `MeteredDelivery`, which wraps the delivery every job's end goes through; the queue
depth and workers online are read when Prometheus scrapes; the event-loop lag is sampled
by a small task (a late wake-up of a 0.5 s sleep is time the loop could not run).

`/healthz` answers 200 when the gateway is connected, the dispatch loop is alive, the
database takes a write and (for the redis backend) a worker is online; else 503, with the
failing checks named in the JSON body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bot.jobs.events import Delivery
from bot.store.db import Job

if TYPE_CHECKING:
    from bot.app import ImgBot

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.5
LATENCY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class BotMetrics:
    """The bot's metrics, in their own registry (tests may build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("img2img_jobs", "Jobs ended, by outcome", ["outcome"], registry=r)
        self.latency = Histogram(
            "img2img_job_latency_seconds",
            "From queued to the final message",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gpu_seconds = Counter(
            "img2img_gpu_seconds", "Generation seconds reported by workers", registry=r
        )
        self.queue_depth = Gauge("img2img_queue_depth", "Jobs waiting", registry=r)
        self.running = Gauge("img2img_jobs_running", "Jobs on a worker", registry=r)
        self.workers = Gauge("img2img_workers_online", "Image workers online", registry=r)
        self.lag = Gauge("img2img_event_loop_lag_seconds", "Last event-loop lag", registry=r)
        self.last_lag = 0.0


class MeteredDelivery:
    """A `Delivery` that counts each job's end on its way to Discord."""

    def __init__(self, inner: Delivery, metrics: BotMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def _ended(self, job: Job, outcome: str) -> None:
        self.metrics.jobs.labels(outcome).inc()
        self.metrics.latency.observe(max(0.0, time.time() - job.created_at))
        if job.seconds:
            self.metrics.gpu_seconds.inc(job.seconds)

    async def show_status(
        self, job: Job, text: str, cancellable: bool, preview: bytes | None = None
    ) -> None:
        extra = {} if preview is None else {"preview": preview}
        await self.inner.show_status(job, text, cancellable, **extra)

    async def deliver_result(self, job: Job) -> int | None:
        self._ended(job, "done")
        return await self.inner.deliver_result(job)

    async def deliver_failure(self, job: Job, message: str) -> None:
        self._ended(job, "failed")
        await self.inner.deliver_failure(job, message)

    async def deliver_cancelled(self, job: Job) -> None:
        self._ended(job, "cancelled")
        await self.inner.deliver_cancelled(job)

    async def deliver_withheld(self, job: Job) -> None:
        self._ended(job, "withheld")
        await self.inner.deliver_withheld(job)

    def __getattr__(self, name: str) -> Any:  # anything else the cogs use
        return getattr(self.inner, name)


class MetricsServer:
    """The aiohttp server on METRICS_PORT, and the lag sampler."""

    def __init__(self, bot: ImgBot, metrics: BotMetrics, port: int, host: str = "0.0.0.0") -> None:
        self.bot, self.metrics, self.port, self.host = bot, metrics, port, host
        self._runner: web.AppRunner | None = None
        self._lag_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._lag_task = asyncio.create_task(self._sample_lag())
        log.info("metrics on :%d (/metrics, /healthz)", self.port)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sample_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.metrics.last_lag = max(0.0, loop.time() - before - LAG_INTERVAL_S)
            self.metrics.lag.set(self.metrics.last_lag)

    def _refresh(self) -> None:
        jobs = getattr(self.bot, "jobs", None)
        if jobs is None:
            return
        self.metrics.queue_depth.set(len(jobs.queue))
        self.metrics.running.set(len(jobs.queue.running))
        self.metrics.workers.set(_workers_online(jobs.worker))

    async def _metrics(self, request: web.Request) -> web.Response:
        self._refresh()
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        checks = await self.checks()
        ok = all(checks.values())
        body: dict[str, Any] = {
            "ok": ok,
            "checks": checks,
            "event_loop_lag_s": round(self.metrics.last_lag, 3),
        }
        refused = getattr(getattr(self.bot, "jobs", None), "worker", None)
        refused = getattr(refused, "refusals", None)  # remote workers whose settings differ
        if refused:
            body["refused_workers"] = {wid: detail for wid, (_, detail) in refused.items()}
        return web.json_response(body, status=200 if ok else 503)

    async def checks(self) -> dict[str, bool]:
        bot = self.bot
        jobs = getattr(bot, "jobs", None)
        task = getattr(jobs, "_task", None)
        return {
            "gateway": bot.is_ready() and not bot.is_closed(),
            "dispatch_loop": task is not None and not task.done(),
            "database": await _db_writable(bot),
            "workers": jobs is not None and _workers_online(jobs.worker) > 0,
        }


def _workers_online(worker: Any) -> int:
    online = getattr(worker, "workers_online", None)
    if online is not None:
        return int(online)
    return 1 if getattr(worker, "info", None) is not None else 0


async def _db_writable(bot: ImgBot) -> bool:
    store = getattr(bot, "store", None)
    if store is None:
        return False
    try:
        async with asyncio.timeout(2.0):
            await store.set_meta("healthz", str(time.time()))
        return True
    except Exception:
        log.warning("healthz: the database did not take a write", exc_info=True)
        return False
