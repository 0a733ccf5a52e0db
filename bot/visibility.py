"""Who can see a channel: decides where a result may appear besides its own channel.

A result may leave its channel (the gallery channel, `/gallery browse` elsewhere) only if
its channel is viewable by the server's `@everyone` role and is not age-restricted. Threads
follow their parent channel, and a private thread is never public. Computed once, when the
job is made, from the channel discord.py has cached (the guilds intent brings channels,
roles and permission overwrites).
"""

from __future__ import annotations

from typing import Any

import discord


def channel_flags(channel: Any) -> tuple[bool, bool]:
    """(public, age_restricted) for an interaction's channel; unknown → (False, False),
    so a channel the bot cannot inspect never leaks."""
    if isinstance(channel, discord.Thread):
        parent = channel.parent
        if parent is None:
            return False, False
        public, nsfw = channel_flags(parent)
        private = channel.type == discord.ChannelType.private_thread
        return public and not private, nsfw
    if isinstance(channel, discord.abc.GuildChannel):
        everyone = channel.guild.default_role
        public = channel.permissions_for(everyone).view_channel
        nsfw = bool(getattr(channel, "nsfw", False))
        return public, nsfw
    return False, False


def viewer_channels(interaction: Any) -> tuple[int, ...]:
    """The channels a viewer is in: the channel, and a thread's parent (threads follow it)."""
    ids = [interaction.channel_id] if interaction.channel_id else []
    parent = getattr(interaction.channel, "parent_id", None)
    if parent:
        ids.append(parent)
    return tuple(ids)


def shown_from(channel_id: int, public: bool, nsfw: bool, here: tuple[int, ...]) -> bool:
    """The gallery's rule for anything that shows a job's prompt or picture: a job from a
    public, not age-restricted channel shows anywhere in its server; any other job only in
    its own channel (`here`: `viewer_channels`)."""
    return (public and not nsfw) or channel_id in here
