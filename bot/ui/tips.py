"""Guidance where people get stuck: one short tip on a result, the lineage line, and the
troubleshooting table and first-time walkthrough that /help shows.

Pure functions of a job's values, so the rules are tested without Discord.
"""

from __future__ import annotations

from bot.store.db import Job
from pipeline.request import TEXT_TO_IMAGE

GOOD_SIDE = 512  # the guide: sources of at least 512×512 transfer well
HIGH_STRENGTH = 0.7  # the guide: from here on faces distort
TIPPED_KINDS = ("new", "refine", "edit")
"""Results whose settings someone chose. A variant, reroll or comparison comes from a result
that already had its chance at a tip, so they never repeat it."""

VARY_TIP = (
    "A good base? **Vary** makes it again at strengths 0.35, 0.50 and 0.65 side by side; "
    "**Use** the one you like and go on from there."
)

TROUBLESHOOTING = (
    "**The result looks nothing like my picture** → lower the strength to 0.4–0.5.\n"
    "**The style does not show** → raise the strength to 0.55–0.65.\n"
    "**Faces distort** → stay below 0.6.\n"
    "**A small or blurry source transfers poorly** → use at least 512×512.\n"
    "**Unwanted objects appear** → name them in the negative prompt."
)

WALKTHROUGH = (
    "1. Take a clear, well-lit photo (at least 512×512).\n"
    "2. `/img2img` with a simple style prompt, e.g. `a watercolor painting`, at strength 0.5.\n"
    "3. Click **Compare** under the result to see 0.35 and 0.65 next to it, and "
    "**Use** the one you like.\n"
    "4. Almost right? **Refine** it at 0.3; want another prompt? **Edit**."
)

WORKING_ON_A_RESULT = (
    "**Refine** makes the result the new input (strength 0.30 to polish it); **Edit** runs "
    "the original picture again with the prompt or settings you change; **Compare** shows "
    "the strengths 0.15 lower and higher side by side, and **Use** posts the one you pick.\n"
    "**Apps → Img2img this** (right-click or long-press any message with a picture) starts "
    "from that picture, also from someone else's photo or one of the bot's results.\n"
    "In the settings form a strength such as `0,3` is read as 0.3; leave the seed empty "
    "for a new one."
)


INPAINTING = (
    "**/inpaint** `image` `prompt` `[mask]` `[region]` `[strength=0.75]` repaints only part "
    "of a picture; the rest keeps its exact pixels. Say what to repaint with a `mask` image "
    "(white repaints, black keeps, grey blends), a PNG whose area to repaint is transparent, "
    "or `region` words such as `the sky`. A small area is generated at full detail "
    "(`crop: auto`).\n"
    "The **Inpaint** button under a result repaints that picture: type what to repaint or "
    "upload a mask in the form. Variants, Reroll, Refine, Edit and Compare keep the mask."
)


def tip_for(job: Job) -> str | None:
    """At most one tip for a result, when the guide has one for its situation."""
    if job.kind not in TIPPED_KINDS:
        return None
    if job.mode == TEXT_TO_IMAGE:  # a base picture made from words: no source, no strength
        return VARY_TIP if job.kind == "new" else None
    short = min(job.input_width, job.input_height)
    if job.kind == "new" and short < GOOD_SIDE:
        return (
            f"Your picture is {job.input_width}×{job.input_height}; a source of at least "
            f"{GOOD_SIDE}×{GOOD_SIDE} usually transfers better."
        )
    if job.strength >= HIGH_STRENGTH and job.mode != "inpaint":  # inpaint repaints a part
        return (
            f"At strength {job.strength:.2f} faces may distort; **Compare** shows the same "
            "picture 0.15 lower."
        )
    return None


def lineage(job: Job) -> str | None:
    """`from #12`, linked to the message it came from where the bot knows it."""
    if job.parent_id is None:
        return None
    if job.reply_to_message_id:
        url = (
            f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/"
            f"{job.reply_to_message_id}"
        )
        return f"from [#{job.parent_id}]({url})"
    return f"from #{job.parent_id}"
