"""Expected errors that become a message to the user instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message is shown to them (ephemeral) as is."""
