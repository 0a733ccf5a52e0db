"""Library log lines an operator cannot act on, dropped so the start-up log stays readable.

transformers says three times per worker start that an image processor falls back to its
PIL version because torchvision is not installed (we use the PIL one on purpose; nothing to
install). discord.py warns that PyNaCl and davey are missing for voice (the bot has no
voice). Each is dropped by the exact words of its message, so any other warning of those
libraries still shows.
"""

from __future__ import annotations

import logging

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
VOICE_MISSING = "is not installed, voice will NOT be supported"

NOISE: dict[str, tuple[str, ...]] = {
    "transformers.utils.import_utils": (TORCHVISION_FALLBACK,),
    "discord.client": (VOICE_MISSING,),
}


class DropMessages(logging.Filter):
    """Drops records whose message contains one of `needles`."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


def quiet_library_noise() -> None:
    """Install the filters (once per process; loggers are looked up by name, so nothing is
    imported here and it works before the libraries are)."""
    for name, needles in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(*needles))
