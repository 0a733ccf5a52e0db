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
