"""A result's buttons as the payload Discord gets, without a `discord.ui.View` per result.

Every button under a result is a registered `DynamicItem` (`bot.ui.buttons.DYNAMIC_ITEMS`):
a click reaches its item through its custom_id alone, so no View object needs to stay
behind the message. Building one per result costs its nine items, their components and the
View's own bookkeeping: a third of the CPU of a result's delivery request (0.9 → 0.6 ms,
`bench.fleet`, where a result is delivered every 10 ms). So `result_rows` fills in a
template made once per shape (strength, mode, upscale) by `result_view` itself, the one
place the buttons are defined, and `ButtonRows` gives discord.py what it reads from a View
when it sends one: the components, and that nothing is to be listened to.
"""

from __future__ import annotations

import functools
from typing import Any

from bot.ui.buttons import result_view

_MARK = "987654321987654321"
"""The job id the templates are built with; each custom_id holds it once."""


class ButtonRows:
    """Action rows of registered `DynamicItem` buttons, as discord.py sends a View's."""

    __discord_ui_view__ = True
    timeout = None

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._rows = rows

    def to_components(self) -> list[dict[str, Any]]:
        return self._rows

    def has_components_v2(self) -> bool:
        return False

    def is_dispatchable(self) -> bool:
        """False: the registered items take the clicks; nothing is stored per message."""
        return False

    def is_finished(self) -> bool:
        return True

    def __len__(self) -> int:
        return sum(len(row["components"]) for row in self._rows)


@functools.lru_cache(maxsize=256)
def _template(strength: float, mode: str, upscale: bool) -> list[dict[str, Any]]:
    return result_view(int(_MARK), strength, mode=mode, upscale=upscale).to_components()


def result_rows(
    job_id: int, strength: float, *, mode: str = "img2img", upscale: bool = True
) -> ButtonRows:
    """`result_view(job_id, strength, mode=mode, upscale=upscale)`'s buttons, as sent."""
    job = str(job_id)
    return ButtonRows(
        [
            {
                **row,
                "components": [
                    {**button, "custom_id": button["custom_id"].replace(_MARK, job)}
                    for button in row["components"]
                ],
            }
            for row in _template(strength, mode, upscale)
        ]
    )
