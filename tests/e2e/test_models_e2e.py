"""Models and LoRAs through the stand-in: /models, and <lora:…> in a prompt."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import BotFactory, World, slash_img2img, status_message
from tests.fakediscord import FakeDiscord


def catalogue(path: Path, model: Path, lora: str) -> Path:
    path.write_text(
        f'[models.tiny]\nsource = "{model}"\nlabel = "Tiny SD"\nsteps = 3\n'
        f'[loras.ink]\nsource = "{lora}"\nweight = 0.8\ntrigger = "ink drawing"\n'
        '[models.other]\nsource = "some/other-model"\n'
        '[loras.only-other]\nsource = "x.safetensors"\nmodels = ["other"]\n'
    )
    return path


async def test_models_lists_the_catalogue_and_a_lora_that_cannot_be_used_is_refused_privately(
    fd: FakeDiscord, world: World, make_bot: BotFactory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    models = catalogue(tmp_path / "models.toml", tiny_model_dir, str(tmp_path / "ink.safetensors"))
    bot = await make_bot(models_file=models)
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
