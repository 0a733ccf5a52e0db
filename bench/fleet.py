"""Section `fleet` of `make bench`: one bot process in front of a hundred GPUs, simulated.

What no machine here can hold, in four processes:
- a Valkey server (`bench.valkey`);
- `workers`: WORKERS fake workers in one process, each the real `pipeline.remote_worker`
  (grants, events, heartbeats, results with their PNG) with its engine replaced by
  `bench.fake_engine` (a small stored PNG after 1 s, no torch);
- `discord`: a recording REST stand-in that answers every request like Discord and counts it;
- the bot: the real `JobService`, `RedisBackend` and `DiscordDelivery` (discord.py's HTTP
  client), SQLite, no gallery channel, SERVERS servers. Jobs are submitted through
  `JobService` with their input already stored (uploads are measured apart: `intake`), and
  each posts its status message through its interaction webhook, as an answer would.

Arrivals keep WAITING jobs waiting (topped up every 50 ms, servers drawn with a skew so some
have many jobs waiting); the fleet (WORKERS × MAX_BATCH jobs a second) then sets the rate, so
the bot runs at whatever share of a core that rate costs it (`fleet_core_share`). Measured in
a window after a warm-up: the bot's CPU per delivered job, its REST requests per job, the
event-loop lag, SQLite transactions per job, peak RSS, and fairness: the most places a job was
overtaken by later jobs from servers that had more jobs waiting.

`python -m bench.fleet` runs it alone and prints one JSON line; `make bench` runs it as a
subprocess (`fleet_section`), so the bot's CPU time is its own.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

WORKERS = 100
MAX_BATCH = 1
SERVERS = 1000
WAITING = 500
WARMUP_S = 15.0
WINDOW_S = 60.0
JOB_SECONDS = 1.0
INTAKE_UPLOADS = 20

TARGETS = {
    "fleet_cpu_ms_per_job": 8.0,
    "fleet_rest_calls_per_job": 10.0,
    "fleet_lag_p99_ms": 50.0,
}


# -- the fake workers' process -------------------------------------------------------------
def run_workers(url: str, count: int, max_batch: int) -> int:
    """`count` RemoteWorkers in threads of this process until stdin closes."""
    import redis

    import pipeline.worker_child as worker_child
    from bench.fake_engine import ENGINE_REF
    from pipeline.remote_worker import GRANT_BLOCK_MS, RemoteWorker
    from pipeline.worker_protocol import WorkerConfig

    # `_Worker.run` installs a SIGTERM handler, which only a main thread may: these stop
    # when this process ends instead.
    worker_child.signal = SimpleNamespace(  # type: ignore[attr-defined]
        signal=lambda *_: None, SIGTERM=15
    )
    config = WorkerConfig("fleet-fake", resolution=512, max_batch=max_batch, batching="call")
    workers = []
    for n in range(count):
        client = redis.Redis.from_url(
            url, socket_timeout=GRANT_BLOCK_MS / 1000 + 10, socket_connect_timeout=5
        )
        worker = RemoteWorker(
            client, config, worker_id=f"fleet-{n}", max_batch=max_batch, heartbeat_s=5.0
        )
        workers.append(worker)
        threading.Thread(target=worker.serve, args=(ENGINE_REF,), daemon=True).start()
    sys.stdin.read()  # the bench closes it when done
    for worker in workers:
        worker.stopping.set()
    return 0


# -- the recording Discord stand-in's process ----------------------------------------------
def run_discord(port_file: str) -> int:
    """Answers every REST request like Discord would (a message for message routes) and
    counts them; `GET /__count` tells the count."""
    from aiohttp import web

    count = {"n": 0}
    JSON = {"Content-Type": "application/json"}
    ids = iter(range(10**15, 10**16))
    user = {"id": "1", "username": "bench", "discriminator": "0", "global_name": None,
            "avatar": None, "bot": True}  # fmt: skip

    def message(channel_id: str = "2") -> dict[str, Any]:
        return {
            "id": str(next(ids)), "channel_id": channel_id, "type": 0, "content": "",
            "author": user, "attachments": [], "embeds": [], "mentions": [],
            "mention_roles": [], "pinned": False, "tts": False, "flags": 0,
            "components": [], "timestamp": "2026-01-01T00:00:00+00:00",
            "edited_timestamp": None,
        }  # fmt: skip

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/__count":
            return web.Response(text=str(count["n"]))
        await request.read()
        count["n"] += 1
        if request.path.endswith("/users/@me"):
            body: Any = user
        elif request.path.endswith("/oauth2/applications/@me"):
            body = {"id": "1", "name": "bench", "description": "", "icon": None,
                    "bot_public": True, "bot_require_code_grant": False, "owner": user,
                    "verify_key": "0", "flags": 0}  # fmt: skip
        elif request.method == "DELETE":
            return web.Response(status=204)
        else:
            body = message()
        # exactly `application/json`: discord.py parses nothing else (aiohttp adds a charset)
        return web.Response(body=json.dumps(body).encode(), headers=JSON)

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        Path(port_file).write_text(str(port))
        await asyncio.Event().wait()

    asyncio.run(main())
    return 0


# -- the bot process -----------------------------------------------------------------------
def _skewed_servers(rng: random.Random, n: int) -> Callable[[], int]:
    """Server ids drawn with a Zipf-like skew: a few busy servers, a long tail."""
    weights = [1.0 / (k + 1) for k in range(n)]
    cumulative = list(__import__("itertools").accumulate(weights))
    total = cumulative[-1]
    return lambda: 1 + bisect.bisect_left(cumulative, rng.random() * total)


def _input_png(size: int = 512) -> bytes:
    from PIL import Image

    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _photo_jpeg(size: int = 512) -> bytes:
    """An upload as members send them: a photo-like JPEG (noise over gradients)."""
    from PIL import Image

    base = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    noise = Image.effect_noise((size, size), 40).convert("RGB")
    out = io.BytesIO()
    Image.blend(base, noise, 0.3).save(out, format="JPEG", quality=90)
    return out.getvalue()


def intake_ms_per_upload(data_dir: Path) -> float:
    """The bot's CPU to validate and store one 512 px upload (`Actions._store_input`)."""
    from bot.actions import Actions
    from config import Settings

    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    actions = Actions(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    data = _photo_jpeg()
    actions._store_input(data)  # warm
    started = time.process_time()
    for _ in range(INTAKE_UPLOADS):
        actions._store_input(data)
    return (time.process_time() - started) * 1000 / INTAKE_UPLOADS


def fairness(arrivals: dict[str, tuple[int, int, int, int]], started: dict[str, int]) -> int:
    """The most places a job was overtaken by jobs that arrived after it from servers with
    more jobs waiting, counted from when it was its server's next job: before that it waits
    for its own server's earlier jobs (members take turns inside a server), which no other
    server causes and no other server's share can shorten. `arrivals[job]`: (its arrival
    order, its server's waiting jobs then, how many jobs had started by then, its server);
    `started[job]`: its start order (0, 1, …)."""
    by_start = sorted((s, j) for j, s in started.items())
    head_since: dict[str, int] = {}  # job -> start order from which it was its server's next
    last_of_server: dict[int, int] = {}
    for start, job in by_start:
        if job in arrivals:
            server = arrivals[job][3]
            head_since[job] = last_of_server.get(server, -1) + 1
            last_of_server[server] = start
    worst = 0
    for job, start in started.items():
        if job not in arrivals:
            continue
        seq, depth, starts_then, _ = arrivals[job]
        lo = bisect.bisect_left(by_start, (max(starts_then, head_since[job]), ""))
        hi = bisect.bisect_left(by_start, (start, ""))
        overtaken = 0
        for _, other in by_start[lo:hi]:  # started while this one was its server's next
            if other in arrivals:
                o_seq, o_depth, _, _ = arrivals[other]
                overtaken += o_seq > seq and o_depth > depth
        worst = max(worst, overtaken)
    return worst


async def run_bot(
    url: str, api: str, work: Path, *, workers: int, max_batch: int, warmup: float,
    window: float, waiting: int,
) -> dict[str, Any]:  # fmt: skip
    import discord

    from bench.monitor import LagTicker
    from bot.app import configure_endpoints
    from bot.jobs.backends.redis import RedisBackend
    from bot.jobs.delivery import DiscordDelivery
    from bot.jobs.service import JobService, NewJob
    from bot.store.db import Store
    from config import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=work / "data", redis_url=url, model_id="fleet-fake",
        resolution=512, batching="call", max_batch=max_batch, discord_api_base=api,
        max_jobs_per_user=10_000, max_queue_per_guild=10_000, max_queue_total=100_000,
        safety_checker="off",
    )  # fmt: skip
    configure_endpoints(settings)
    inputs = settings.data_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "fleet.png").write_bytes(_input_png())
    store = await Store.open(settings.db_path)
    backend = RedisBackend(
        url, model_id=settings.model_id, resolution=512, safety_checker="off",
        batching="call", heartbeat_s=5.0,
    )  # fmt: skip
    client = discord.Client(intents=discord.Intents.none())
    await client.login("fleet-bench-token")
    delivery = DiscordDelivery(client, store, settings.data_dir)
    service = JobService(settings, store, backend, delivery)

    arrivals: dict[str, tuple[int, int, int, int]] = {}
    started: dict[str, int] = {}
    starts = iter(range(10**9))
    real_submit = backend.submit

    def submit(batch: Any) -> None:
        for request in batch:
            started[request.job_id] = next(starts)
        real_submit(batch)

    backend.submit = submit  # type: ignore[method-assign]
    delivered = {"n": 0}

    async def on_finished(job: Any) -> None:
        delivered["n"] += 1

    service.hooks.finished.append(on_finished)
    await service.start()
    deadline = time.monotonic() + 120
    while backend.workers_online < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {backend.workers_online} of {workers} workers came up")
        await asyncio.sleep(0.2)

    rng = random.Random(24)
    server = _skewed_servers(rng, SERVERS)
    app_id = 1234
    seq = iter(range(10**9))
    posts: set[asyncio.Task[None]] = set()

    async def post_status(job: Any, token: str) -> None:
        """The status message, through the interaction webhook: one request, as the
        answer to /img2img is."""
        hook = discord.Webhook.partial(app_id, token, client=client)
        hook.type = discord.WebhookType.application
        message_id = None
        try:
            message = await hook.send(f"#{job.id} queued", wait=True)
            message_id = message.id
        finally:
            await service.attach_status_message(job.id, message_id)

    arriving = {"n": 0}

    async def arrive(n: int, guild: int, depth: int, starts_then: int) -> None:
        """One member's /img2img: the job is stored and queued, then its status message
        is posted. Members arrive at once, not one after another's transaction."""
        token = f"fleet-token-{n}"
        try:
            job = await service.submit(
                NewJob(
                    guild_id=guild, channel_id=guild * 10, user_id=guild * 100 + n % 7,
                    prompt=f"fleet {n}", strength=0.5, steps=4, guidance=7.5,
                    input_path="inputs/fleet.png", input_width=512, input_height=512,
                    application_id=app_id, interaction_token=token,
                    interaction_created_at=time.time(),
                )
            )  # fmt: skip
        finally:
            arriving["n"] -= 1
        arrivals[str(job.id)] = (n, depth, starts_then, guild)
        await post_status(job, token)

    async def top_up() -> None:
        """Keeps `waiting` jobs waiting, counting those still being submitted."""
        while True:
            need = waiting - len(service.queue) - arriving["n"]
            for _ in range(max(0, need)):
                guild = server()
                depth = service.queue.guild_depth(guild)
                arriving["n"] += 1
                task = asyncio.create_task(arrive(next(seq), guild, depth, len(started)))
                posts.add(task)
                task.add_done_callback(posts.discard)
            await asyncio.sleep(0.05)

    async def requests_so_far() -> int:
        session = client.http._HTTPClient__session  # type: ignore[attr-defined]
        async with session.get(api.rsplit("/api/", 1)[0] + "/__count") as response:
            return int(await response.text())

    lagging = {"on": False}
    ticker = LagTicker(lambda: lagging["on"])
    ticker.start()
    feeder = asyncio.create_task(top_up())
    try:
        await asyncio.sleep(warmup)
        lagging["on"] = True
        cpu0, wall0 = time.process_time(), time.monotonic()
        done0, req0, tx0 = delivered["n"], await requests_so_far(), store.transactions
        await asyncio.sleep(window)
        cpu1, wall1 = time.process_time(), time.monotonic()
        done1, req1, tx1 = delivered["n"], await requests_so_far(), store.transactions
        lagging["on"] = False
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await ticker.stop()
        await service.stop()
        await client.close()
        await store.close()
    jobs = max(1, done1 - done0)
    lags = sorted(ticker.samples_ms) or [0.0]
    cpu_ms = (cpu1 - cpu0) * 1000 / jobs
    rate = jobs / (wall1 - wall0)
    return {
        "workers": workers,
        "max_batch": max_batch,
        "servers": SERVERS,
        "waiting": waiting,
        "window_s": round(wall1 - wall0, 1),
        "jobs": jobs,
        "jobs_per_s": rate,
        "fleet_cpu_ms_per_job": cpu_ms,
        "fleet_core_share": rate * cpu_ms / 1000,
        "fleet_rest_calls_per_job": (req1 - req0) / jobs,
        "fleet_lag_p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))],
        "fleet_fairness": fairness(arrivals, started),
        "fleet_fairness_bound": workers * max_batch,
        "sqlite_transactions_per_job": (tx1 - tx0) / jobs,
        "bot_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "intake_ms_per_upload": intake_ms_per_upload(work / "intake"),
    }


def _own_cpu() -> set[int] | None:
    """Where this machine has two CPUs or more, the bot side gets one of its own: the
    simulated fleet, Valkey and the stand-in (started next, inheriting this) run on the
    others, as they would on other machines. Sharing two CPUs with them made the bot's
    CPU time per job 10-15 % higher (measured back to back), which is the simulation's
    cost, not the bot's. Returns the bot's CPU, None where there is one CPU (or no
    affinity control)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, cpus[1:])
    return {cpus[0]}


def measure(
    *, workers: int = WORKERS, max_batch: int = MAX_BATCH, warmup: float = WARMUP_S,
    window: float = WINDOW_S, waiting: int = WAITING, work: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Start Valkey, the workers and the stand-in, run the bot side here, stop them all."""
    from bench.valkey import Valkey
    from bot import event_loop

    work = work or Path(tempfile.mkdtemp(prefix="img2img-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    bot_cpus = _own_cpu()  # the children started below inherit the other CPUs
    valkey = Valkey(work)
    valkey.start()
    log = (work / "fleet-children.log").open("ab")
    env = {**os.environ, "FAKE_ENGINE_SECONDS": str(JOB_SECONDS), "LOG_LEVEL": "WARNING"}
    port_file = work / "discord.port"
    discord_proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet", "discord", str(port_file)], stdout=log, stderr=log
    )
    fleet = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet", "workers", valkey.url, str(workers), str(max_batch)],
        stdin=subprocess.PIPE, stdout=log, stderr=log, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or discord_proc.poll() is not None:
                raise RuntimeError("the Discord stand-in did not start")
            time.sleep(0.05)
        api = f"http://127.0.0.1:{port_file.read_text()}/api/v10"
        if bot_cpus:
            os.sched_setaffinity(0, bot_cpus)  # before the bot's threads: they inherit it
        event_loop.tune_gc()  # as `python -m bot` does
        return event_loop.run(  # the bot's own loop (uvloop where installed)
            run_bot(valkey.url, api, work, workers=workers, max_batch=max_batch,
                    warmup=warmup, window=window, waiting=waiting)
        )  # fmt: skip
    finally:
        if fleet.stdin:
            fleet.stdin.close()
        for proc in (fleet, discord_proc):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        valkey.stop()


async def fleet_section(note: Callable[[str], None]) -> dict[str, Any]:
    """`make bench`'s section: `python -m bench.fleet` in its own process (so the CPU time
    measured is the bot side's alone); its last line is the result."""
    note(f"fleet: {WORKERS} fake workers, {SERVERS} servers, {WAITING} waiting, "
         f"{WARMUP_S + WINDOW_S:.0f} s")  # fmt: skip
    from bench.child import child_json

    return await child_json("bench.fleet")


def render_fleet(
    f: dict[str, Any], lines: list[str], figures: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The section's report lines and figures; `fleet_missed` names the targets missed."""
    targets = {**TARGETS, "fleet_fairness": float(f["fleet_fairness_bound"])}
    missed = [k for k, t in targets.items() if not f[k] <= t]

    def row(name: str, unit: str) -> str:
        mark = "MISSED" if name in missed else "ok"
        return f"    {name:<26} {f[name]:>8.2f} {unit:<3} target ≤ {targets[name]:g}  {mark}"

    lines = [
        *lines,
        "",
        f"[6] fleet: one bot process, {f['workers']} fake workers × MAX_BATCH {f['max_batch']} "
        f"(1 s a job), {f['servers']} servers, {f['waiting']} waiting; {f['window_s']:.0f} s "
        f"window, {f['jobs']} jobs delivered",
        row("fleet_cpu_ms_per_job", "ms"),
        row("fleet_rest_calls_per_job", ""),
        row("fleet_lag_p99_ms", "ms"),
        row("fleet_fairness", ""),
        f"    {f['jobs_per_s']:.1f} jobs/s sustained, the bot at {f['fleet_core_share']:.0%} "
        f"of a core; {f['sqlite_transactions_per_job']:.1f} SQLite transactions a job; "
        f"peak RSS {f['bot_peak_rss_mb']:.0f} MiB",
        f"    intake: {f['intake_ms_per_upload']:.1f} ms of bot CPU per 512 px upload "
        f"({f['intake_ms_per_upload'] / 10:.1f} cores at 100 uploads/s)",
    ]
    keys = (
        "fleet_cpu_ms_per_job", "fleet_rest_calls_per_job", "fleet_lag_p99_ms",
        "fleet_fairness", "intake_ms_per_upload", "jobs_per_s", "sqlite_transactions_per_job",
        "bot_peak_rss_mb",
    )  # fmt: skip
    figures = {**figures, **{k: f[k] for k in keys}, "fleet_missed": missed}
    return lines, figures


def main(argv: list[str]) -> int:
    if argv[:1] == ["workers"]:
        return run_workers(argv[1], int(argv[2]), int(argv[3]))
    if argv[:1] == ["discord"]:
        return run_discord(argv[1])
    workers = int(os.environ.get("FLEET_WORKERS", WORKERS))
    window = float(os.environ.get("FLEET_WINDOW_S", WINDOW_S))
    warmup = float(os.environ.get("FLEET_WARMUP_S", WARMUP_S))
    waiting = int(os.environ.get("FLEET_WAITING", WAITING))
    result = measure(workers=workers, window=window, warmup=warmup, waiting=waiting)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
