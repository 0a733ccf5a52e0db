"""A job's model on the bot's side: stored by name, carried to the worker, kept by a
child job, waiting (and saying so) while no GPU serves it, failed plainly when dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import UserError
from bot.models import MODEL_GONE, ModelChoice
from bot.store.db import Store
from config.catalogue import parse_catalogue
from tests.bot.test_jobs import Harness, until

TOML = (
    '[models.base]\nsource = "org/base"\nsteps = 20\n'
    '[models.anime]\nsource = "org/anime"\nlabel = "Anime"\nsteps = 12\nguidance = 5.0\n'
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


def harness(tmp_path: Path, store: Store, toml: str = TOML) -> Harness:
    path = tmp_path / "models.toml"
    path.write_text(toml)
    return Harness(tmp_path, store, models_file=path)


async def test_the_model_is_stored_by_name_and_the_request_carries_it(
    tmp_path: Path, store: Store
) -> None:
    h = harness(tmp_path, store)
    assert h.service.worker_models == ("base", "anime")  # WORKER_MODELS: the whole catalogue
    await h.start()
    try:
        anime = await h.submit(model="anime")
        plain = await h.submit(user_id=8)
        assert (anime.model, plain.model) == ("anime", "base")  # the default, by name
        await until(lambda: len(h.worker.batches) >= 1, "a grant")
        sent = [r for batch in h.worker.batches for r in batch]
        assert sent[0].model == "anime"
    finally:
        await h.service.stop()


async def test_a_job_no_gpu_serves_waits_and_says_so(tmp_path: Path, store: Store) -> None:
    h = harness(tmp_path, store)
    h.service.worker_models = ("base",)
    await h.start()
    try:
        waiting = await h.submit(model="anime")
        await h.service.attach_status_message(waiting.id, 55)
        running = await h.submit(user_id=8, model="base")
        await until(lambda: h.worker.batches, "the base job's grant")
        assert [r.job_id for b in h.worker.batches for r in b] == [str(running.id)]
        await asyncio.sleep(0.05)
        h.service.status.places_changed()
        h.service.status.flush_due()

        def told() -> bool:
            return any(
                c[1] == waiting.id and "Waiting for a GPU with *Anime*" in c[2]
                for c in h.delivery.of("status")
            )

        await until(told, "the waiting job's note")
    finally:
        await h.service.stop()


async def test_a_restored_job_whose_model_was_dropped_fails_plainly(
    tmp_path: Path, store: Store
) -> None:
    h = harness(tmp_path, store)
    job = await h.submit(model="anime")  # queued, not started: the service is not running
    later = harness(tmp_path, store, '[models.base]\nsource = "org/base"\n')
    await later.start()
    try:
        await until(lambda: later.delivery.of("failure"), "the failure")
        assert later.delivery.of("failure") == [("failure", job.id, MODEL_GONE)]
        assert (await later.job(job.id)).counted == 0
    finally:
        await later.service.stop()


def test_model_choice_order_and_refusals() -> None:
    models = ModelChoice(parse_catalogue(TOML, Path("m.toml")), 30, 7.5)
    assert models.pick("ANIME ", "base", "base").name == "anime"  # typed wins, any case
    assert models.pick(None, "anime", "base").name == "anime"  # then the style's
    assert models.pick(None, None, "anime").name == "anime"  # then the server's
    assert models.pick(None, "gone", None).name == "base"  # a dropped one falls through
    assert (models.steps(models.entry("anime")), models.guidance(models.entry("anime"))) == (
        12,
        5.0,
    )
    with pytest.raises(UserError, match=r"no model called `nope`.*`base`, `anime`"):
        models.pick("nope", None, None)
    assert models.kept("anime") == "anime"
    assert models.kept("org/old-weights") == "base"  # a job from before names
    with pytest.raises(UserError, match="no longer offered"):
        models.kept("dropped")


async def test_a_model_load_shows_on_its_jobs_status(tmp_path: Path, store: Store) -> None:
    from pipeline.worker_protocol import ModelLoaded, ModelLoading

    h = harness(tmp_path, store)
    h.service.worker_models = ("base", "anime")
    seen: list[tuple[str, tuple[str, ...]]] = []
    h.service.on_model_loading.append(lambda model, ids: seen.append((model, ids)))
    await h.start()
    try:
        job = await h.submit(model="anime")
        await h.service.attach_status_message(job.id, 55)
        await until(lambda: h.worker.batches, "the grant")
        h.worker.emit(ModelLoading("anime", (str(job.id),)), ModelLoaded("anime", ("anime",)))

        def told() -> bool:
            return any(
                c[1] == job.id and c[2] == "🔄 Loading model *Anime*…"
                for c in h.delivery.of("status")
            )

        await until(told, "the loading status")
        assert seen == [("anime", (str(job.id),))]
        assert h.service.residency.of(None) == ("anime",)
    finally:
        await h.service.stop()
