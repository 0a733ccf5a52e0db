"""Expected errors that become a message to the user instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message is shown to them (ephemeral) as is."""


class Undeliverable(Exception):
    """A job's final message cannot reach Discord however often it is tried (the bot lacks
    a permission in the channel and the requester was told by DM); not retried."""
