"""Upscale ×2 as plain values: the plan, its quota, and the words members see.

An upscale enlarges a picture (Lanczos), cuts it into overlapping tiles at the model's
working size, runs each tile as an ordinary img2img job and blends them back
(`pipeline.tiling`). These functions take values and return values; `bot.cogs.upscale`
does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.ui.render import user_text
from pipeline.tiling import Box, plan_tiles, upscale_units, upscaled_size

TILE_KIND = "tile"
"""Job kind of one tile: posts nothing of its own, its end redraws the upscale's message."""
FINAL_KIND = "upscale"
"""Job kind of an upscale's last job: the safety check of the blended picture, posted as
the result (its mode is `pipeline.request.UPSCALE`)."""
DEFAULT_STRENGTH = 0.2
"""The guide's "quality upscaling" strength (0.1–0.2): details sharpen, nothing moves."""
DEFAULT_SCALE = 2


@dataclass(frozen=True)
class UpscalePlan:
    """What an upscale of one picture will be: its size, its tiles and what it counts."""

    width: int
    height: int
    boxes: tuple[Box, ...]

    @property
    def tiles(self) -> int:
        return len(self.boxes)

    @property
    def units(self) -> int:
        """Images it counts against quota: one per four tiles, rounded up."""
        return upscale_units(self.tiles)


def plan_upscale(width: int, height: int, scale: int, cap: int, tile: int) -> UpscalePlan:
    """The plan for a width×height picture; raises `InputError` naming the cap when the
    upscaled picture would be larger than `UPSCALE_MAX_SIDE`."""
    w, h = upscaled_size(width, height, scale, cap)
    return UpscalePlan(w, h, tuple(plan_tiles(w, h, tile)))


def fits_again(width: int, height: int, cap: int, scale: int = DEFAULT_SCALE) -> bool:
    """Whether a picture of this size can be upscaled once more under the cap (the
    button is shown only then)."""
    return max(width, height) * scale <= cap


def images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def quota_refusal(plan: UpscalePlan, user_left: int | None, guild_left: int | None) -> str | None:
    """The whole upscale is refused if either budget cannot take all of it (None: fits)."""
    need = (
        f"An upscale to {plan.width}×{plan.height} is {plan.tiles} tiles and counts "
        f"{images(plan.units)}"
    )
    if user_left is not None and user_left < plan.units:
        return f"{need}; you have {user_left} left today. Try again later (`/quota` shows when)."
    if guild_left is not None and guild_left < plan.units:
        return (
            f"{need}; this server has {guild_left} left today. Try again later "
            "(`/quota` shows when)."
        )
    return None


def queued_text(plan: UpscalePlan, seed: int) -> str:
    """The private answer: what it will make and what it counts, before any tile runs."""
    return (
        f"✅ Queued an upscale to {plan.width}×{plan.height} (seed {seed}): {plan.tiles} "
        f"tile{'s' if plan.tiles != 1 else ''}, counting {images(plan.units)} against your "
        "quota. The picture will appear in this channel."
    )


def progress_text(head: str, done: int, total: int) -> str:
    """The upscale's status message while its tiles run: `tile 3 of 6`."""
    if done == 0:
        return f"{head}\n⏳ Waiting for its turn: tile 0 of {total} done."
    return f"{head}\n🎨 Upscaling: tile {done} of {total} done."


def head_text(upscale_id: int, width: int, height: int, strength: float, prompt: str) -> str:
    words = f" · “{user_text(prompt, 60)}”" if prompt else ""
    return f"🔍 Upscale #{upscale_id} to {width}×{height} · strength {strength:.2f}{words}"


ENDED_TEXT = {
    "failed": (
        "❌ A tile of this upscale could not be made, so the upscale stopped. It did not "
        "count against your quota; please try again."
    ),
    "cancelled": "✖️ Upscale cancelled. It did not count against your quota.",
    "withheld": (
        "🛡️ The safety filter withheld a tile of this upscale, so the upscaled picture is not shown."
    ),
}
