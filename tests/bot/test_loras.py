"""LoRA tags from the member's prompt to the worker: checked when asked for, kept in the stored
prompt after the style's text, turned into `LoraRef`s with trigger words first at dispatch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.errors import UserError
from bot.loras import LORA_GONE, LoraTags, shown
from bot.store.db import Store
from bot.styles import BUILTINS, Composed, Style, apply_style
from config.catalogue import parse_catalogue
from config.lora_tags import LoraTagError
from pipeline.request import LoraRef
from tests.bot.test_jobs import Harness, until

CAT = parse_catalogue(
    """
[models.base]
source = "a/base"
[loras.pixel]
source = "/loras/pixel.safetensors"
weight = 0.8
trigger = "pixel art"
[loras.ink]
source = "/loras/ink"
""",
    Path("models.toml"),
)
TAGS = LoraTags(CAT, max_per_job=2)


def stored(prompt: str, style: str | None = None) -> str:
    """What a command stores: tags out, the style's template, tags back after it."""
    text, uses = TAGS.split(prompt)
    return TAGS.styled(apply_style(BUILTINS.get(style or ""), text, None, None), uses).prompt


def test_tags_leave_the_text_before_the_template_and_come_back_canonical_after_it() -> None:
    style = next(iter(BUILTINS))
    plain = apply_style(BUILTINS[style], "a fox", None, None).prompt
    assert stored("a <lora:PIXEL>  fox <lora:ink:1.25>", style) == (
        f"{plain} <lora:pixel:0.8> <lora:ink:1.25>"
    )
    assert stored("a  fox") == "a  fox"  # no tags: the prompt exactly as typed


def test_the_worker_gets_the_text_without_tags_trigger_words_first_and_each_source() -> None:
    prompt, loras = TAGS.for_worker(stored("a fox <lora:pixel> <lora:ink:1.5>"))
    assert prompt == "pixel art, a fox"
    assert loras == (
        LoraRef("pixel", "/loras/pixel.safetensors", 0.8),
        LoraRef("ink", "/loras/ink", 1.5),
    )
    assert TAGS.for_worker("a  fox") == ("a  fox", ())
    # Stored again (a Refine, an unedited form), a stored prompt gives the same job.
    again = stored(stored("a fox <lora:pixel> <lora:ink:1.5>"))
    assert TAGS.for_worker(again) == (prompt, loras)


def test_a_lora_gone_from_the_catalogue_fails_at_dispatch() -> None:
    later = LoraTags(replace(CAT, loras={"ink": CAT.loras["ink"]}), max_per_job=2)
    with pytest.raises(LoraTagError):
        later.for_worker(stored("a fox <lora:pixel>"))


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("a fox <lora:nope>", "no LoRA called `nope`"),
        ("<lora:pixel><lora:ink><lora:pixel:1>", "appears twice"),
        ("a fox <lora:ink:9>", "from 0 to 2"),
    ],
)
def test_a_tag_that_cannot_be_used_is_the_members_error(prompt: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        TAGS.split(prompt)


def test_the_result_shows_the_loras_of_a_stored_prompt() -> None:
    assert shown(stored("a fox <lora:pixel> <lora:ink:1.5>")) == "pixel ×0.8, ink ×1.5"
    assert shown("a fox") is None
    assert TAGS.styled(Composed("a", None, 0.5, None), ()) == Composed("a", None, 0.5, None)


async def test_a_restored_job_whose_lora_left_the_catalogue_fails_refunded(
    tmp_path: Path,
) -> None:
    """MODELS_FILE changed across a restart: a waiting job asking for a LoRA no longer
    offered fails at start with a plain message, refunded; the others wait as before."""
    models = tmp_path / "models.toml"
    models.write_text('[models.base]\nsource = "a/base"\n[loras.ink]\nsource = "/loras/ink"\n')
    store = await Store.open(tmp_path / "bot.sqlite3")
    try:
        h = Harness(tmp_path, store, models_file=models)
        gone = await h.submit(prompt="a fox <lora:pixel:0.8>")  # stored by an older catalogue
        kept = await h.submit(user_id=8, prompt="a fox <lora:ink:1>")
        await h.start()
        await until(lambda: h.delivery.of("failure"), "the failure")
        assert h.delivery.of("failure") == [("failure", gone.id, LORA_GONE)]
        assert (await h.job(gone.id)).state == "failed" and (await h.job(gone.id)).counted == 0
        await until(lambda: h.worker.batches, "the other job's dispatch")
        (request,) = h.worker.batches[0]
        assert (request.job_id, request.prompt) == (str(kept.id), "a fox")
        assert request.loras == (LoraRef("ink", "/loras/ink", 1.0),)
    finally:
        await h.service.stop()
        await store.close()


def test_a_prompt_too_long_with_its_tags_written_out_is_refused() -> None:
    text, uses = TAGS.split("x" * 990 + " <lora:ink>")
    with pytest.raises(UserError, match="would be 1003 characters long; the limit is 1000"):
        TAGS.styled(Composed(text, None, 0.5, None), uses)


def test_a_styles_loras_join_the_members_whose_own_tags_win() -> None:
    style = Style("inked", "{prompt}, inked", loras=TAGS.style_tags("ink:0.5, pixel"))
    assert style.loras == "<lora:ink:0.5> <lora:pixel:0.8>"

    def job(prompt: str) -> str:
        text, uses = TAGS.split(prompt)
        return TAGS.styled(apply_style(style, text, None, None), uses).prompt

    assert job("a cat") == "a cat, inked <lora:ink:0.5> <lora:pixel:0.8>"
    assert job("a cat <lora:ink:1.5>") == "a cat, inked <lora:ink:1.5> <lora:pixel:0.8>"
    with pytest.raises(UserError, match="no LoRA called `nope`"):
        TAGS.style_tags("ink, nope")
    assert TAGS.style_tags(None) == "" and TAGS.style_tags(" , ") == ""
    one = LoraTags(CAT, max_per_job=1)
    with pytest.raises(UserError, match="With the style's LoRAs this picture would use 2"):
        one.styled(apply_style(style, "a cat", None, None), ())
