"""Quotas on a real SQLite store: no overdraw under concurrency, refunds, resets, settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.errors import UserError
from bot.quota import WINDOW_S
from bot.store.db import Store
from bot.store.quotas import QuotaStore
from config import Settings

GUILD = 1000
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "quota_user_daily": 3,
        "quota_guild_daily": 10,
        "quota_user_ceiling": 50,
        "quota_guild_ceiling": 500,
        "max_jobs_per_user": 50,
        "max_queue_per_guild": 50,
        "max_queue_total": 100,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quotas(store: Store, tmp_path: Path, clock: Clock) -> QuotaStore:
    return QuotaStore(store, make_settings(tmp_path), clock=clock)


async def add_job(
    store: Store, user_id: int, created_at: float, *, guild_id: int = GUILD, counted: int = 1
) -> int:
    async with store.transaction() as db:
        job_id = await store.insert_job(
            db, guild_id=guild_id, channel_id=2, user_id=user_id, kind="new", prompt="p",
            strength=0.5, seed=1, steps=30, guidance=7.5, input_path="inputs/x.png",
            input_width=512, input_height=512, created_at=created_at,
        )  # fmt: skip
        await store.update_job_in(db, job_id, counted=counted)
    return job_id


async def count_jobs(store: Store) -> int:
    row = await (await store.db.execute("SELECT COUNT(*) FROM jobs")).fetchone()
    return int(row[0])


async def submit_ok(service: Any, user_id: int, role_ids: tuple[int, ...] = ()) -> bool:
    """Through the real `JobService.submit`: reserve hook and insert in its transaction."""
    try:
        await service.submit(new_job(user_id, role_ids))
    except UserError:
        return False
    return True


def service_with_quotas(tmp_path: Path, store: Store, clock: Clock) -> Any:
    service = make_service(tmp_path, store, clock)
    service.hooks.reserve.append(QuotaStore(store, service.settings, clock=clock).reserve)
    return service


# -- no overdraw ----------------------------------------------------------------------
async def test_one_unit_left_one_of_twenty_user(
    tmp_path: Path, store: Store, quotas: QuotaStore, clock: Clock
) -> None:
    service = service_with_quotas(tmp_path, store, clock)
    for i in range(2):
        await add_job(store, 7, NOW - 100 - i)
    results = await asyncio.gather(
        *(service.submit(new_job(7)) for _ in range(20)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, UserError)]
    assert len(refused) == 19 and sum(not isinstance(r, BaseException) for r in results) == 1
    assert "<t:" in str(refused[0]) and "Nothing was queued" in str(refused[0])
    assert await count_jobs(store) == 3
    assert len(service.queue) == 1
    assert not (await quotas.state(GUILD, 7, (), NOW)).allowed


async def test_one_unit_left_one_of_twenty_guild(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    service = service_with_quotas(tmp_path, store, clock)
    for user in range(9):
        await add_job(store, user, NOW - 100)
    results = await asyncio.gather(*(submit_ok(service, 100 + i) for i in range(20)))
    assert results.count(True) == 1
    assert await count_jobs(store) == 10


async def test_two_connections_do_not_overdraw(tmp_path: Path, store: Store, clock: Clock) -> None:
    """Two stores on one file (two bot processes) serialize through BEGIN IMMEDIATE."""
    other = await Store.open(tmp_path / "bot.sqlite3")
    try:
        services = [service_with_quotas(tmp_path, s, clock) for s in (store, other)]
        await add_job(store, 7, NOW - 100)
        await add_job(store, 7, NOW - 50)
        results = await asyncio.gather(
            *(submit_ok(service, 7) for _ in range(10) for service in services)
        )
    finally:
        await other.close()
    assert results.count(True) == 1
    assert await count_jobs(store) == 3


# -- refunds --------------------------------------------------------------------------
class NullDelivery:
    async def show_status(self, job: Any, text: str, cancellable: bool) -> None: ...
    async def deliver_result(self, job: Any) -> None: ...
    async def deliver_failure(self, job: Any, message: str) -> None: ...
    async def deliver_cancelled(self, job: Any) -> None: ...
    async def deliver_withheld(self, job: Any) -> None: ...


def make_service(tmp_path: Path, store: Store, clock: Clock) -> Any:
    from bot.jobs.service import JobService

    worker = SimpleNamespace(cancel=lambda job_id: None, free_slots=0)
    return JobService(make_settings(tmp_path), store, worker, NullDelivery(), clock=clock)  # type: ignore[arg-type]


def new_job(user_id: int, role_ids: tuple[int, ...] = ()) -> Any:
    from bot.jobs.service import NewJob

    return NewJob(
        guild_id=GUILD, channel_id=2, user_id=user_id, prompt="a fox", strength=0.6, steps=30,
        guidance=7.5, input_path="inputs/x.png", input_width=512, input_height=512,
        role_ids=role_ids,
    )  # fmt: skip


async def test_refund_on_cancel_fail_and_kept_on_finish(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    from pipeline.worker import Failed, Finished

    service = make_service(tmp_path, store, clock)
    quotas = QuotaStore(store, service.settings, clock=clock)
    service.hooks.reserve.append(quotas.reserve)
    jobs = [await service.submit(new_job(7)) for _ in range(3)]
    with pytest.raises(UserError):
        await service.submit(new_job(7))

    # cancelled while waiting: its unit comes back
    await service.cancel(jobs[0].id, 7, can_manage=False)
    assert (await quotas.state(GUILD, 7, (), NOW)).user.remaining == 1
    jobs.append(await service.submit(new_job(7)))

    # failed in the worker: its unit comes back
    service.queue.remove(str(jobs[1].id))
    await service._handle(Failed(str(jobs[1].id), "out of memory"))
    assert (await quotas.state(GUILD, 7, (), NOW)).user.remaining == 1

    # finished: it keeps its unit
    service.queue.remove(str(jobs[2].id))
    result = SimpleNamespace(job_id=str(jobs[2].id), steps_run=18, steps_total=18, seconds=1.0)
    await service._handle(Finished(result))
    assert (await quotas.state(GUILD, 7, (), NOW)).user.remaining == 1
    await asyncio.gather(*service._background, return_exceptions=True)

    done = await store.get_job(jobs[2].id)
    assert done is not None and done.state == "done" and done.counted == 1


async def test_refund_in_the_ledger(store: Store, quotas: QuotaStore) -> None:
    """Whatever sets counted=0 (cancel, failure, refusal) frees the unit at once."""
    ids = [await add_job(store, 7, NOW - 10 * i) for i in range(1, 4)]
    assert not (await quotas.state(GUILD, 7, (), NOW)).allowed
    await store.update_job(ids[0], state="cancelled", counted=0)
    state = await quotas.state(GUILD, 7, (), NOW)
    assert state.allowed and state.user.remaining == 1 and state.guild.used == 2


async def test_window_rolls(store: Store, quotas: QuotaStore) -> None:
    await add_job(store, 7, NOW - WINDOW_S + 60)
    await add_job(store, 7, NOW - 3600)
    await add_job(store, 7, NOW - 60)
    state = await quotas.state(GUILD, 7, (), NOW)
    assert not state.allowed
    assert state.available_at() == NOW + 60
    later = await quotas.state(GUILD, 7, (), NOW + 61)
    assert later.allowed and later.user.remaining == 1


async def test_precheck_takes_nothing(store: Store, quotas: QuotaStore) -> None:
    await quotas.check(GUILD, 7, ())
    assert await count_jobs(store) == 0
    for i in range(3):
        await add_job(store, 7, NOW - 10 - i)
    with pytest.raises(UserError, match="frees up <t:"):
        await quotas.check(GUILD, 7, ())


# -- resets, settings, role limits, channels, audit -----------------------------------
async def test_reset_usage(store: Store, quotas: QuotaStore, clock: Clock) -> None:
    for i in range(3):
        await add_job(store, 7, NOW - 100 - i)
    await add_job(store, 8, NOW - 100)
    assert not (await quotas.state(GUILD, 7, (), NOW)).allowed
    await quotas.reset_usage(GUILD, 1, 7)
    state = await quotas.state(GUILD, 7, (), NOW)
    assert state.allowed and state.user.used == 0
    assert state.guild.used == 4  # the server's total keeps them
    assert (await quotas.state(GUILD, 8, (), NOW)).user.used == 1  # others unaffected
    # jobs after the reset count again
    clock.now = NOW + 5
    await add_job(store, 7, NOW + 1)
    assert (await quotas.state(GUILD, 7, (), NOW + 5)).user.used == 1
    [entry] = await quotas.audit_log(GUILD)
    assert entry.user_id == 1 and "<@7>" in entry.change


async def test_limits_and_ceilings(store: Store, quotas: QuotaStore) -> None:
    assert quotas.limits(await quotas.guild_settings(GUILD)) == (3, 10)
    await quotas.set_limits(GUILD, 1, 5, None)
    await quotas.set_limits(GUILD, 1, None, 400)
    assert quotas.limits(await quotas.guild_settings(GUILD)) == (5, 400)
    with pytest.raises(UserError, match="up to 50"):
        await quotas.set_limits(GUILD, 1, 51, None)
    with pytest.raises(UserError, match="up to 500"):
        await quotas.set_limits(GUILD, 1, None, 501)
    with pytest.raises(UserError):
        await quotas.set_limits(GUILD, 1, None, None)
    assert quotas.limits(await quotas.guild_settings(GUILD)) == (5, 400)
    assert quotas.limits(await quotas.guild_settings(GUILD + 1)) == (3, 10)  # other server
    # an operator who lowers a ceiling later caps stored limits
    quotas.settings = make_settings(Path("."), quota_user_ceiling=4)
    assert quotas.limits(await quotas.guild_settings(GUILD)) == (4, 400)
    changes = [e.change for e in await quotas.audit_log(GUILD)]
    assert changes == ["server limit 10 → 400", "per-member limit 3 → 5"]  # newest first


async def test_role_limits(store: Store, quotas: QuotaStore) -> None:
    for i in range(5):
        await add_job(store, 7, NOW - 100 - i)
    await quotas.set_role_limit(GUILD, 1, 55, 10, exempt=False)
    await quotas.set_role_limit(GUILD, 1, 66, 6, exempt=False)
    assert (await quotas.state(GUILD, 7, (), NOW)).user.limit == 3
    assert (await quotas.state(GUILD, 7, (66,), NOW)).user.remaining == 1
    assert (await quotas.state(GUILD, 7, (55, 66), NOW)).user.remaining == 5
    await quotas.set_role_limit(GUILD, 1, 77, None, exempt=True)
    exempt = await quotas.state(GUILD, 7, (66, 77), NOW)
    assert exempt.user.limit is None and exempt.allowed
    # @everyone's role id is the guild id and applies to every member
    await quotas.set_role_limit(GUILD, 1, GUILD, 8, exempt=False)
    assert (await quotas.state(GUILD, 7, (), NOW)).user.limit == 8
    # removing a rule
    await quotas.set_role_limit(GUILD, 1, GUILD, None, exempt=False)
    assert (await quotas.state(GUILD, 7, (), NOW)).user.limit == 3
    with pytest.raises(UserError, match="up to 50"):
        await quotas.set_role_limit(GUILD, 1, 55, 51, exempt=False)
    assert len(await quotas.audit_log(GUILD, limit=50)) == 5


async def test_role_limit_through_reserve(
    tmp_path: Path, store: Store, quotas: QuotaStore, clock: Clock
) -> None:
    service = service_with_quotas(tmp_path, store, clock)
    for i in range(3):
        await add_job(store, 7, NOW - 100 - i)
    assert not await submit_ok(service, 7)
    await quotas.set_role_limit(GUILD, 1, 55, 4, exempt=False)
    assert await submit_ok(service, 7, (55,))
    assert not await submit_ok(service, 7, (55,))


async def test_channels(store: Store, quotas: QuotaStore) -> None:
    await quotas.check_channel(GUILD, 5)  # every channel by default
    with pytest.raises(UserError, match="every channel"):
        await quotas.disallow_channel(GUILD, 1, 5)
    await quotas.allow_channel(GUILD, 1, 5)
    await quotas.allow_channel(GUILD, 1, 6)
    with pytest.raises(UserError, match="already"):
        await quotas.allow_channel(GUILD, 1, 6)
    await quotas.check_channel(GUILD, 5)
    await quotas.check_channel(GUILD, 99, parent_id=6)  # a thread in an allowed channel
    with pytest.raises(UserError, match="<#5>, <#6>"):
        await quotas.check_channel(GUILD, 7)
    await quotas.check_channel(GUILD + 1, 7)  # another server is unaffected
    await quotas.disallow_channel(GUILD, 1, 5)
    with pytest.raises(UserError, match="only allowed channel"):
        await quotas.disallow_channel(GUILD, 1, 6)
    with pytest.raises(UserError, match=r"<#6>\.$"):
        await quotas.check_channel(GUILD, 5)
    await quotas.allow_all_channels(GUILD, 1)
    await quotas.check_channel(GUILD, 7)
    assert (await quotas.guild_settings(GUILD)).allowed_channels is None


async def test_gallery_channel_and_audit(store: Store, quotas: QuotaStore, clock: Clock) -> None:
    await quotas.set_gallery_channel(GUILD, 1, 321)
    assert (await quotas.guild_settings(GUILD)).gallery_channel_id == 321
    clock.now += 10
    await quotas.set_gallery_channel(GUILD, 2, None)
    gs = await quotas.guild_settings(GUILD)
    assert gs.gallery_channel_id is None and gs.updated_at == NOW + 10
    log = await quotas.audit_log(GUILD)
    assert [(e.user_id, e.at, e.change) for e in log] == [
        (2, NOW + 10, "gallery channel → none"),
        (1, NOW, "gallery channel → <#321>"),
    ]


async def test_usage_kept_counts_like_job_rows(store: Store, quotas: QuotaStore) -> None:
    """Units of jobs deleted by /gallery forget-me stay in the window, and roll out of it."""
    await add_job(store, 7, NOW - 60)
    async with store.transaction() as db:
        await db.executemany(
            "INSERT INTO usage_kept (guild_id, user_id, created_at, counted) VALUES (?, ?, ?, ?)",
            [
                (GUILD, 7, NOW - 30, 1),
                (GUILD, 7, NOW - WINDOW_S - 1, 1),  # outside the window
                (GUILD, 7, NOW - 20, 0),  # refunded
                (GUILD + 1, 7, NOW - 20, 1),  # another server
            ],
        )
    state = await quotas.state(GUILD, 7, (), NOW)
    assert state.user.times == (NOW - 60, NOW - 30)
    assert state.guild.used == 2 and state.user.remaining == 1
    await quotas.reset_usage(GUILD, 1, 7)  # an admin's reset covers kept units too
    assert (await quotas.state(GUILD, 7, (), NOW)).user.used == 0


async def test_nsfw_channels_and_withheld_count(
    store: Store, quotas: QuotaStore, clock: Clock
) -> None:
    assert (await quotas.guild_settings(GUILD)).nsfw_channels == "filter"
    assert "unfiltered" in await quotas.set_nsfw_channels(GUILD, 1, "allow")
    assert (await quotas.guild_settings(GUILD)).nsfw_channels == "allow"
    await quotas.set_nsfw_channels(GUILD, 1, "filter")
    assert (await quotas.guild_settings(GUILD)).nsfw_channels == "filter"
    with pytest.raises(UserError):
        await quotas.set_nsfw_channels(GUILD, 1, "maybe")
    assert (await quotas.audit_log(GUILD))[0].change.endswith("filtered")
    old = await add_job(store, 7, NOW - WINDOW_S - 5)
    new = await add_job(store, 7, NOW - 5)
    await add_job(store, 7, NOW - 4)
    for job_id in (old, new):
        await store.update_job(job_id, state="withheld")
    assert await quotas.withheld_count(GUILD, NOW - WINDOW_S) == 1
