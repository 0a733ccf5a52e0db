"""Buttons as `discord.ui.DynamicItem`s: the job id lives in the custom_id, so a click on a
message posted before a restart is routed by its regex template, with no in-memory view.

Callbacks hand over to `bot.actions.Actions` (reached through the client), which holds the
logic and the resources; Refine and Edit to `bot.cogs.iterate`, Compare and Use to
`bot.cogs.compare`, Inpaint to `bot.cogs.inpaint`, Vary to `bot.cogs.imagine`, Upscale ×2
to `bot.cogs.upscale`, found by cog name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.variants import STEP, variant_label, variant_strength
from pipeline.request import TEXT_TO_IMAGE, UPSCALE

if TYPE_CHECKING:
    from bot.app import ImgBot
    from bot.cogs.compare import CompareCog
    from bot.cogs.imagine import ImagineCog
    from bot.cogs.inpaint import InpaintCog
    from bot.cogs.iterate import IterateCog
    from bot.cogs.upscale import UpscaleCog


def _bot(interaction: discord.Interaction[Any]) -> ImgBot:
    return cast("ImgBot", interaction.client)


def _iterate(interaction: discord.Interaction[Any]) -> IterateCog:
    return cast("IterateCog", _bot(interaction).get_cog("IterateCog"))


def _compare(interaction: discord.Interaction[Any]) -> CompareCog:
    return cast("CompareCog", _bot(interaction).get_cog("CompareCog"))


def _inpaint(interaction: discord.Interaction[Any]) -> InpaintCog:
    return cast("InpaintCog", _bot(interaction).get_cog("InpaintCog"))


def _upscale(interaction: discord.Interaction[Any]) -> UpscaleCog:
    return cast("UpscaleCog", _bot(interaction).get_cog("UpscaleCog"))


Button = discord.ui.Button[Any]


class _JobItem:
    """Every button here carries a job id in its custom_id; this parses it back."""

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: Button, match: re.Match[str]
    ) -> Any:
        return cls(int(match["job"]))  # type: ignore[call-arg]


class VariantButton(discord.ui.DynamicItem[Button], template=r"i2i:v:(?P<sign>[mp]):(?P<job>\d+)"):
    """−0.15 / +0.15: the same job at a new strength, for whoever clicks."""

    def __init__(self, job_id: int, sign: str, strength: float) -> None:
        delta = STEP if sign == "p" else -STEP
        super().__init__(
            discord.ui.Button(
                label=variant_label(strength, delta),
                style=discord.ButtonStyle.secondary,
                custom_id=f"i2i:v:{sign}:{job_id}",
                disabled=variant_strength(strength, delta) is None,
            )
        )
        self.job_id, self.delta = job_id, delta

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: Button, match: re.Match[str]
    ) -> VariantButton:
        # the label is not needed to handle a click; the stored job has the strength
        return cls(int(match["job"]), match["sign"], 0.5)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.variant(interaction, self.job_id, self.delta)


class RerollButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:r:(?P<job>\d+)"):
    """The same job with a new seed."""

    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"i2i:r:{job_id}"))
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.reroll(interaction, self.job_id)


class DeleteButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:d:(?P<job>\d+)"):
    """Remove a result (the requester or Manage Messages)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete",
                emoji="🗑️",
                style=discord.ButtonStyle.danger,
                custom_id=f"i2i:d:{job_id}",
            )
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.delete(interaction, self.job_id)


class CancelButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:c:(?P<job>\d+)"):
    """Take a waiting job out of the queue, or stop a running one at the next step."""

    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label="Cancel", emoji="✖️", custom_id=f"i2i:c:{job_id}"))
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.cancel(interaction, self.job_id)


class RefineButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:rf:(?P<job>\d+)"):
    """This result becomes the new input: a modal prefilled with its settings at 0.30."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Refine", emoji="🪄", custom_id=f"i2i:rf:{job_id}", row=1)
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _iterate(interaction).open_modal(interaction, "refine", self.job_id)


class EditButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:ed:(?P<job>\d+)"):
    """The job's original input again, with its settings in a modal to change."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Edit", emoji="✏️", custom_id=f"i2i:ed:{job_id}", row=1)
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _iterate(interaction).open_modal(interaction, "edit", self.job_id)


class CompareButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:cmp:(?P<job>\d+)"):
    """The same job at strength −0.15 and +0.15, shown side by side with this one."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Compare", emoji="⚖️", custom_id=f"i2i:cmp:{job_id}", row=1)
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _compare(interaction).compare(interaction, self.job_id)


class InpaintButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:inp:(?P<job>\d+)"):
    """Repaint part of this result: a modal asks what (words or a mask) and the prompt."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Inpaint", emoji="🖌️", custom_id=f"i2i:inp:{job_id}", row=1)
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _inpaint(interaction).open_modal(interaction, self.job_id)


class VaryButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:vary:(?P<job>\d+)"):
    """Under a text-to-image result: img2img of it at 0.35, 0.50 and 0.65, side by side."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Vary", emoji="🔀", custom_id=f"i2i:vary:{job_id}", row=1)
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        imagine = cast("ImagineCog", _bot(interaction).get_cog("ImagineCog"))
        await imagine.vary(interaction, self.job_id)


class UpscaleButton(_JobItem, discord.ui.DynamicItem[Button], template=r"i2i:up:(?P<job>\d+)"):
    """This result at twice the size: tiles at the model's size, blended (`bot.cogs.upscale`)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Upscale ×2", emoji="🔍", custom_id=f"i2i:up:{job_id}", row=1)
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _upscale(interaction).upscale_job(interaction, self.job_id)


class CancelUpscale(discord.ui.DynamicItem[Button], template=r"i2i:upc:(?P<upscale>\d+)"):
    """Under an upscale's progress: cancel every tile that has not ended."""

    def __init__(self, upscale_id: int) -> None:
        super().__init__(
            discord.ui.Button(label="Cancel", emoji="✖️", custom_id=f"i2i:upc:{upscale_id}")
        )
        self.upscale_id = upscale_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: Button, match: re.Match[str]
    ) -> CancelUpscale:
        return cls(int(match["upscale"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _upscale(interaction).cancel(interaction, self.upscale_id)


class UseButton(discord.ui.DynamicItem[Button], template=r"i2i:use:(?P<job>\d+)"):
    """Under a comparison: post that image as a normal result (no new GPU work)."""

    def __init__(self, job_id: int, strength: float) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"Use {strength:.2f}",
                style=discord.ButtonStyle.primary,
                custom_id=f"i2i:use:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: Button, match: re.Match[str]
    ) -> UseButton:
        return cls(int(match["job"]), 0.5)  # the stored job has the strength

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _compare(interaction).use(interaction, self.job_id)


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    VariantButton,
    RerollButton,
    DeleteButton,
    CancelButton,
    RefineButton,
    EditButton,
    CompareButton,
    InpaintButton,
    UseButton,
    VaryButton,
    UpscaleButton,
    CancelUpscale,
)


def result_view(
    job_id: int, strength: float, *, mode: str = "img2img", upscale: bool = True
) -> discord.ui.View:
    """Under every result: −/+, Reroll, Delete; then Refine, Edit, Compare, Inpaint, and
    Upscale ×2 unless `upscale` is False (the result would pass UPSCALE_MAX_SIDE) (row 2).
    A text-to-image result has no input to re-run at another strength: no −/+ and no
    Compare, and Vary instead (img2img of it at three strengths). An upscaled result
    re-runs the upscale (−/+ its strength, Reroll a new seed) and has no Refine, Edit or
    Compare: those would run the whole picture at the model's size."""
    text = mode == TEXT_TO_IMAGE
    upscaled = mode == UPSCALE
    view = discord.ui.View(timeout=None)
    if not text:
        view.add_item(VariantButton(job_id, "m", strength))
        view.add_item(VariantButton(job_id, "p", strength))
    view.add_item(RerollButton(job_id))
    view.add_item(DeleteButton(job_id))
    if not upscaled:
        view.add_item(RefineButton(job_id))
        view.add_item(EditButton(job_id))
    if not text and not upscaled:
        view.add_item(CompareButton(job_id))
    view.add_item(InpaintButton(job_id))
    if text:
        view.add_item(VaryButton(job_id))
    if upscale:
        view.add_item(UpscaleButton(job_id))
    return view


def use_view(choices: list[tuple[int, float]]) -> discord.ui.View:
    """`Use 0.35` / `Use 0.50` / `Use 0.65` under a comparison, in strength order."""
    view = discord.ui.View(timeout=None)
    for job_id, strength in choices:
        view.add_item(UseButton(job_id, strength))
    return view


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
