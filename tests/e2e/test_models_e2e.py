"""Models and LoRAs through the stand-in: /models, and <lora:…> in a prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.tiny_lora import make_tiny_lora
from tests.e2e.conftest import (
    BotFactory,
    World,
    button,
    cli_pixels,
    embed_fields,
    image_bytes,
    pixels,
    slash_img2img,
    status_message,
    wait_result,
)
from tests.fakediscord import FakeDiscord


def catalogue(path: Path, model: Path, lora: str) -> Path:
    path.write_text(
        f'[models.tiny]\nsource = "{model}"\nlabel = "Tiny SD"\nsteps = 3\n'
        f'[loras.ink]\nsource = "{lora}"\nweight = 0.8\ntrigger = "ink drawing"\n'
        '[models.other]\nsource = "some/other-model"\ncontrolnet_lines = "some/lines-cn"\n'
        '[loras.only-other]\nsource = "x.safetensors"\nmodels = ["other"]\n'
    )
    return path


async def test_models_lists_the_catalogue_and_a_lora_that_cannot_be_used_is_refused_privately(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    models = catalogue(tmp_path / "models.toml", tiny_model_dir, str(tmp_path / "ink.safetensors"))
    bot = await make_bot(models_file=models, worker_models="tiny")  # `other`: served by none
    handle = await fd.send_slash(world.guild, world.channel, world.alice, "models")
    msg = await handle.wait_original()
    text = msg["content"]
    assert msg["ephemeral"]
    assert "**Tiny SD** · `tiny` · SD 1.x/2.x · 3 steps" in text and "default" in text
    assert "🟢 a GPU is online" in text.splitlines()[1]
    assert "`other`" in text and "⚪ no GPU serves it right now" in text
    assert "`ink` ×0.8 · adds “ink drawing” · fits every model" in text
    assert "`only-other` ×1 · fits `other`" in text

    for prompt, says in (
        ("a fox <lora:nope>", "There is no LoRA called `nope`. LoRAs for Tiny SD: `ink`"),
        ("a fox <lora:only-other>", "does not fit the model Tiny SD"),
        ("a fox <lora:ink:3>", "the weight must be a number from 0 to 2"),
    ):
        handle = await slash_img2img(fd, world.guild, world.channel, world.alice, prompt)
        msg = await handle.wait_original(lambda m: not m["loading"])
        assert msg["ephemeral"] and says in msg["content"], msg["content"]
        assert status_message(fd, handle) is None
    assert await bot.store.jobs_in_states(["queued", "running", "done"]) == []

    # structure is each model's own: the default has no ControlNet, `other` has lines
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a house", structure="lines"
    )
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert msg["ephemeral"] and "Structure 'lines' is not available on this model" in msg["content"]
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a house", structure="lines", model="other"
    )
    msg = await handle.wait_original(lambda m: not m["loading"])
    assert not msg["ephemeral"], msg["content"]  # queued: it waits for a GPU with `other`
    (job,) = await bot.store.jobs_in_states(["queued"])
    assert (job.model, job.structure) == ("other", "lines")


async def test_a_lora_in_the_prompt_gives_the_clis_pixels_and_variants_and_styles_keep_it(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    lora = make_tiny_lora(tmp_path / "ink.safetensors", tiny_model_dir, seed=3, fmt="kohya")
    bot = await make_bot(models_file=catalogue(tmp_path / "models.toml", tiny_model_dir, lora))
    photo = image_bytes()
    handle = await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a fox <lora:ink>", data=photo, seed=5
    )
    result = await wait_result(fd, handle)
    fields = embed_fields(result)
    assert (fields["Prompt"], fields["LoRA"]) == ("a fox <lora:ink:0.8>", "ink ×0.8")
    job = ("--prompt", "a fox", "--strength", "0.5", "--seed", "5")
    expected = await cli_pixels(
        bot, "run", photo, tmp_path, *job, "--lora", f"{lora}:0.8", "--lora-trigger",
        "ink drawing",
    )  # fmt: skip
    assert np.array_equal(pixels(fd.attachment_bytes(result)), expected)
    plain = await cli_pixels(bot, "run", photo, tmp_path, *job)
    assert not np.array_equal(expected, plain)  # it counts

    click = await fd.click(result["id"], button(result, "+0.15")["custom_id"], world.bob)
    variant = await wait_result(fd, click)
    assert embed_fields(variant)["LoRA"] == "ink ×0.8"
    job = await bot.store.get_job(2)
    assert job is not None and job.prompt == "a fox <lora:ink:0.8>"

    # A saved style carries a LoRA; the member's own tag for it would win.
    save = await fd.send_slash(
        world.guild, world.channel, world.carol, "style save",
        {"name": "inked", "prompt": "{prompt}, inked", "loras": "ink:0.5"},
    )  # fmt: skip
    saved = await save.wait_original()
    assert saved["ephemeral"] and embed_fields(saved)["LoRA"] == "ink ×0.5"
    styled = await slash_img2img(
        fd, world.guild, world.channel, world.carol, "a cat", data=photo, style="inked"
    )
    fields = embed_fields(await wait_result(fd, styled))
    assert (fields["Prompt"], fields["LoRA"]) == ("a cat, inked <lora:ink:0.5>", "ink ×0.5")


async def test_a_job_of_the_second_model_gives_the_clis_pixels_for_it_then_the_first_again(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path,
    tiny_model_pair: tuple[Path, Path], tmp_path: Path,
) -> None:  # fmt: skip
    """The local worker serves both models with RESIDENT_MODELS=1: `model:second` loads the
    second in place of the first, and a job of the first after it loads the first again."""
    second = tiny_model_pair[1]
    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.tiny]\nsource = "{tiny_model_dir}"\n[models.second]\nsource = "{second}"\n'
    )
    bot = await make_bot(models_file=models, resident_models=1)
    photo = image_bytes()
    job = ("--prompt", "a fox", "--strength", "0.5", "--seed", "5")
    on_second = await wait_result(fd, await slash_img2img(
        fd, world.guild, world.channel, world.alice, "a fox", data=photo, seed=5, model="second"
    ))  # fmt: skip
    expected = await cli_pixels(bot, "run", photo, tmp_path, *job, "--model", str(second))
    assert np.array_equal(pixels(fd.attachment_bytes(on_second)), expected)
    on_first = await wait_result(fd, await slash_img2img(
        fd, world.guild, world.channel, world.bob, "a fox", data=photo, seed=5
    ))  # fmt: skip
    first = await cli_pixels(bot, "run", photo, tmp_path, *job)
    assert np.array_equal(pixels(fd.attachment_bytes(on_first)), first)
    assert not np.array_equal(first, expected)  # the models differ
    assert bot.jobs.worker.info.resident == ("tiny",)
    assert (embed_fields(on_second)["Model"], embed_fields(on_first)["Model"]) == (
        "second",
        "tiny",
    )

    # A saved style carries a model; the server's default (/settings model) applies after it.
    save = await fd.send_slash(
        world.guild, world.channel, world.carol, "style save",
        {"name": "second-look", "prompt": "{prompt}, soft light", "model": "second"},
    )  # fmt: skip
    assert embed_fields(await save.wait_original())["Model"] == "second"
    styled = await wait_result(fd, await slash_img2img(
        fd, world.guild, world.channel, world.carol, "a fox", data=photo, seed=5,
        style="second-look",
    ))  # fmt: skip
    assert embed_fields(styled)["Model"] == "second"
    changed = await fd.send_slash(
        world.guild, world.channel, world.admin, "settings model", {"name": "second"}
    )
    assert "default model → `second`" in (await changed.response())["data"]["content"]
    plain = await wait_result(fd, await slash_img2img(
        fd, world.guild, world.channel, world.bob, "a fox", data=photo, seed=5
    ))  # fmt: skip
    assert embed_fields(plain)["Model"] == "second"
    assert np.array_equal(pixels(fd.attachment_bytes(plain)), expected)
