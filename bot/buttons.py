"""Buttons as `discord.ui.DynamicItem`s: the job id lives in the custom_id, so a click on a
message posted before a restart is routed by its regex template, with no in-memory view.

Callbacks hand over to `bot.actions.Actions` (reached through the client), which holds the
logic and the resources.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import discord

from bot.variants import STEP, variant_label, variant_strength

if TYPE_CHECKING:
    from bot.app import ImgBot


def _bot(interaction: discord.Interaction[Any]) -> ImgBot:
    return cast("ImgBot", interaction.client)


class VariantButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:v:(?P<sign>[mp]):(?P<job>\d+)"
):
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
        self.job_id, self.sign = job_id, sign

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> VariantButton:
        return cls(int(match["job"]), match["sign"], 0.5)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        delta = STEP if self.sign == "p" else -STEP
        await _bot(interaction).actions.variant(interaction, self.job_id, delta)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:r:(?P<job>\d+)"):
    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"i2i:r:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.reroll(interaction, self.job_id)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:d:(?P<job>\d+)"):
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

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> DeleteButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.delete(interaction, self.job_id)


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"i2i:c:(?P<job>\d+)"):
    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel",
                emoji="✖️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"i2i:c:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> CancelButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _bot(interaction).actions.cancel(interaction, self.job_id)


DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (
    VariantButton,
    RerollButton,
    DeleteButton,
    CancelButton,
)


def result_view(job_id: int, strength: float) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(VariantButton(job_id, "m", strength))
    view.add_item(VariantButton(job_id, "p", strength))
    view.add_item(RerollButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
