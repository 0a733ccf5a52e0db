"""`Actions` with the real job service and store; only the Discord interaction is a
recording fake (the boundary), so each test sees what the user would be shown."""

from __future__ import annotations

import datetime as dt
import errno
import io
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
import pytest_asyncio
from PIL import Image

from bot.actions import INPUT_GONE_TEXT, Actions
from bot.jobs.service import TOKEN_LIFETIME_S, JobService
from bot.store.db import Job, Store
from bot.uploads import BUSY_TEXT, STORAGE_FULL_TEXT
from config import Settings
from pipeline.worker import WorkerClient, WorkerConfig

GUILD, CHANNEL, ALICE, APP = 10, 20, 30, 40
_ids = itertools.count(1000)


class FakeInteraction:
    """What `Actions` touches of a `discord.Interaction`, recording every answer."""

    def __init__(self, *, created_at: dt.datetime | None = None, message: Any = None) -> None:
        self.said: list[tuple[str, Any]] = []
        self.guild_id, self.channel_id, self.application_id = GUILD, CHANNEL, APP
        self.channel = None  # not a channel discord.py knows: treated as private
        self.user = SimpleNamespace(id=ALICE, roles=[])
        self.token = f"token-{next(_ids)}"
        self.created_at = created_at or dt.datetime.now(dt.UTC)
        self.permissions = discord.Permissions.none()
        self.message = message
        self._done = False
        self.response = SimpleNamespace(
            is_done=lambda: self._done, defer=self._defer, send_message=self._send
        )
        self.followup = SimpleNamespace(send=self._followup)
        self.original_id = next(_ids)

    async def _defer(self, *, ephemeral: bool = False, thinking: bool = False) -> None:
        self._done = True
        self.said.append(("defer", ephemeral))

    async def _send(self, content: str, *, ephemeral: bool = False, **_: Any) -> Any:
        self._done = True
        self.said.append(("private" if ephemeral else "public", content))
        return SimpleNamespace(message_id=self.original_id)  # discord.py's callback response

    async def _followup(
        self, content: str, *, ephemeral: bool = False, view: Any = None, wait: bool = False
    ) -> Any:
        self.said.append(("private followup" if ephemeral else "status", content))
        return SimpleNamespace(id=next(_ids))

    async def edit_original_response(self, *, content: str) -> None:
        self.said.append(("edit", content))

    async def original_response(self) -> Any:
        return SimpleNamespace(id=self.original_id)

    def texts(self) -> str:
        return "\n".join(str(text) for _, text in self.said)


class Upload:
    """A `discord.Attachment` as far as `Actions` reads it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    async def read(self) -> bytes:
        return self.data


def png(width: int = 320, height: int = 256) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(out, format="PNG")
    return out.getvalue()


class Recorder:
    """A `Delivery` that only records (no job runs here: the worker is never started)."""

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any) -> None:
            return None

        return record


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest_asyncio.fixture
async def actions(tmp_path: Path, overrides: dict[str, Any]) -> AsyncIterator[Actions]:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", **overrides)  # type: ignore[call-arg]
    store = await Store.open(settings.db_path)
    jobs = JobService(settings, store, WorkerClient(WorkerConfig("unused")), Recorder())
    bot = SimpleNamespace(settings=settings, store=store, jobs=jobs, prechecks=[])
    try:
        yield Actions(bot)  # type: ignore[arg-type]
    finally:
        await store.close()


async def jobs_in_db(actions: Actions) -> list[Job]:
    return await actions.bot.store.jobs_in_states(["queued", "running", "done"])


def stored_files(actions: Actions) -> list[Path]:
    folder = actions.settings.data_dir / "inputs"
    return sorted(folder.iterdir()) if folder.exists() else []


async def img2img(actions: Actions, interaction: FakeInteraction, data: bytes) -> None:
    await actions.img2img(
        interaction,
        Upload(data),  # type: ignore[arg-type]
        "a fox",
        0.5,
        None,
        None,
        None,
    )


async def test_img2img_answers_with_its_status_message_in_one_request(actions: Actions) -> None:
    interaction = FakeInteraction()
    await img2img(actions, interaction, png())
    assert [kind for kind, _ in interaction.said] == ["public"]
    assert interaction.said[0][1].startswith("#1 · strength 0.50")
    (job,) = await jobs_in_db(actions)
    assert job.status_message_id == interaction.original_id  # the answer is the status
    assert (job.channel_public, job.channel_nsfw) == (0, 0)  # an unknown channel is private
    assert [p.name for p in stored_files(actions)] == [Path(job.input_path).name]
    assert (job.input_width, job.input_height) == (320, 256)


async def test_a_slow_upload_is_acknowledged_privately_first(actions: Actions) -> None:
    actions.ack_deadline_s = 0.0  # storing the upload takes longer than the deadline
    interaction = FakeInteraction()
    await img2img(actions, interaction, png())
    kinds = [kind for kind, _ in interaction.said]
    assert kinds == ["defer", "edit", "status"]
    assert interaction.said[0] == ("defer", True)
    assert "Queued as job #1" in interaction.said[1][1]
    (job,) = await jobs_in_db(actions)
    assert job.status_message_id is not None  # the status message was attached


async def test_the_token_clock_starts_at_the_interaction_not_at_submit(actions: Actions) -> None:
    created = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    await img2img(actions, FakeInteraction(created_at=created), png())
    (job,) = await jobs_in_db(actions)
    assert job.token_expires_at == pytest.approx(created.timestamp() + TOKEN_LIFETIME_S)
    assert not job.token_valid(dt.datetime.now(dt.UTC).timestamp())


async def test_a_full_disk_is_named_and_leaves_no_file_and_no_job(
    actions: Actions, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png()

    def disk_full(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        Path(fp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    interaction = FakeInteraction()
    await img2img(actions, interaction, data)
    assert interaction.said == [("private", f"❌ {STORAGE_FULL_TEXT}")]
    assert await jobs_in_db(actions) == []
    assert stored_files(actions) == []


async def test_other_write_errors_are_not_called_a_full_disk(
    actions: Actions, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = png()

    def denied(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        Path(fp).write_bytes(b"partial")
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Image.Image, "save", denied)
    with pytest.raises(PermissionError):  # the tree's error handler shows a generic text
        await img2img(actions, FakeInteraction(), data)
    assert stored_files(actions) == []
    assert await jobs_in_db(actions) == []


async def test_past_max_decodes_the_upload_is_told_to_retry(actions: Actions) -> None:
    actions.decode_wait_s = 0.01
    for _ in range(actions.settings.max_decodes):
        await actions._decodes.acquire()  # every decode slot is taken
    interaction = FakeInteraction()
    await img2img(actions, interaction, png())
    assert interaction.said == [("private", f"❌ {BUSY_TEXT}")]
    assert await jobs_in_db(actions) == []
    assert stored_files(actions) == []

    actions._decodes.release()
    again = FakeInteraction()
    await img2img(actions, again, png())
    assert again.said[0][0] == "public" and "queue" in again.texts()


async def test_bad_input_is_refused_before_the_acknowledgement(actions: Actions) -> None:
    interaction = FakeInteraction()
    await actions.img2img(interaction, Upload(png()), "   ", 0.5, None, None, None)  # type: ignore[arg-type]
    assert [kind for kind, _ in interaction.said] == ["private"]
    assert "prompt" in interaction.said[0][1]
    assert await jobs_in_db(actions) == []


async def test_a_variant_of_a_vanished_input_says_so(actions: Actions) -> None:
    await img2img(actions, FakeInteraction(), png())
    (parent,) = await jobs_in_db(actions)
    (actions.settings.data_dir / parent.input_path).unlink()
    click = FakeInteraction(message=SimpleNamespace(id=5))
    await actions.variant(click, parent.id, 0.15)  # type: ignore[arg-type]
    assert click.said == [("private", f"❌ {INPUT_GONE_TEXT}")]
    assert len(await jobs_in_db(actions)) == 1


async def test_a_variant_replies_to_the_clicked_message_and_keeps_the_seed(
    actions: Actions,
) -> None:
    await img2img(actions, FakeInteraction(), png())
    (parent,) = await jobs_in_db(actions)
    click = FakeInteraction(message=SimpleNamespace(id=5))
    await actions.variant(click, parent.id, 0.15)  # type: ignore[arg-type]
    assert [kind for kind, _ in click.said] == ["public"]
    child = await actions.bot.store.get_job(parent.id + 1)
    assert child is not None
    assert (child.parent_id, child.seed, child.strength) == (parent.id, parent.seed, 0.65)
    assert child.reply_to_message_id == 5 and child.status_message_id == click.original_id
    assert child.token_expires_at == pytest.approx(click.created_at.timestamp() + TOKEN_LIFETIME_S)


@pytest.mark.parametrize("overrides", [{"max_stored_side": 256}])
async def test_inputs_are_stored_no_larger_than_max_stored_side(actions: Actions) -> None:
    await img2img(actions, FakeInteraction(), png(640, 400))
    (job,) = await jobs_in_db(actions)
    assert (job.input_width, job.input_height) == (256, 160)
    with Image.open(actions.settings.data_dir / job.input_path) as stored:
        assert stored.size == (256, 160)
