"""/help by topic: one page per thing people come to learn, chosen from a select menu.

One embed that every feature made longer had outgrown Discord's limits and left commands
out; pages by topic stay short, and `tests/bot/test_help.py` checks that each fits and that
every registered command is named on some page. The menu's custom_id is fixed
(`help:topic`), so it keeps working on a /help answer posted before a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.limits import FIELD_VALUE, clip, fit_embed
from bot.ui.tips import INPAINTING, TROUBLESHOOTING, WALKTHROUGH, WORKING_ON_A_RESULT

HELP_SELECT_ID = "help:topic"

STRENGTH_GUIDE = (
    "**Strength** decides how far the picture may move from your image:\n"
    "• 0.1–0.2: subtle detail, colours and texture\n"
    "• 0.3–0.4: light restyle, composition kept\n"
    "• 0.5–0.6: balanced style transfer\n"
    "• 0.7–0.8: loose reinterpretation, rough layout kept\n"
    "• 1.0: about text-to-image; the image barely matters"
)


@dataclass(frozen=True)
class Topic:
    key: str
    label: str
    emoji: str
    summary: str  # the select option's description (at most 100 characters)
    text: str  # the page (an embed description, at most 4,096 characters)


TOPICS: tuple[Topic, ...] = (
    Topic(
        "start",
        "Start here",
        "👋",
        "What the bot does and your first picture",
        "**/img2img** `image` `prompt` `[strength]` `[negative_prompt]` `[seed]` `[steps]` "
        "`[style]` `[structure]` `[structure_weight]`\n"
        "Turns your photo or sketch into a new picture. PNG, JPEG or WebP; at least 512×512 "
        "works best; the aspect ratio is kept. The answer shows your place in the queue, then "
        "the progress with a small live preview of the picture forming, then the result.\n"
        "**/imagine** `prompt` `[aspect]` `[style]` makes a base picture from words alone; "
        "**Vary** under it runs img2img on it at three strengths.\n\n"
        f"**First time? Try this**\n{WALKTHROUGH}\n\n"
        "**/queue** shows this server's queue. Servers take turns, so a busy server never "
        "blocks yours for more than one image.\n"
        "**/quota** shows how many images you and this server have left today.\n"
        "**/help** opens this guide; pick a topic in the menu below.",
    ),
    Topic(
        "strength",
        "Strength",
        "🎚️",
        "How far the picture may move from yours",
        f"{STRENGTH_GUIDE}\n\n"
        "Without `strength`, a style's strength is used, else 0.5. Not sure? Make one "
        "picture at 0.5 and click **Compare** under it: it shows 0.35 and 0.65 next to it.\n"
        "Faces keep best below 0.6; a style shows clearly from about 0.55.",
    ),
    Topic(
        "result",
        "Working on a result",
        "🛠️",
        "The buttons under a result, Img2img this, your gallery",
        "Under each result:\n"
        "• **−0.15 / +0.15** run it again weaker or stronger with the same seed\n"
        "• **Reroll** tries a new seed\n"
        "• **Delete** removes it (yours, or with Manage Messages)\n"
        "• **Cancel** (while it runs) stops your job and gives the image back to your quota\n\n"
        f"{WORKING_ON_A_RESULT}\n\n"
        "**Your pictures**\n"
        "**/gallery browse** `[user]` `[search]` `[public]` pages through this server's "
        "pictures; **/gallery remove** `job` deletes one; **/gallery forget-me** deletes every "
        "picture and uploaded image of yours in this server.",
    ),
    Topic(
        "upscale",
        "Upscale ×2",
        "🔍",
        "A picture at twice its size, detail drawn in",
        "**Upscale ×2** under a result, **/upscale** `image` `[scale]` `[strength]` `[prompt]` "
        "`[negative_prompt]` `[seed]` for any picture, or **Apps → Upscale ×2** on a message "
        "makes the picture twice as large and draws new detail in, tile by tile.\n"
        "• Keep **strength 0.1–0.2** (default 0.2): sharper detail, nothing moves\n"
        "• Each tile is one image job; an upscale counts one image per four tiles, and the "
        "private answer says how many before it runs\n"
        "• Its message shows `tile 3 of 6 done` and has **Cancel**\n"
        "• Past the server's largest size (2048 px unless changed) it is refused, nothing "
        "counted\n"
        "Under the upscaled picture: **Reroll**, **−0.15 / +0.15** (the upscale again), "
        "**Delete**, **Inpaint**, and **Upscale ×2** while twice it still fits. Your tiles "
        "take turns like separate images of yours, so other servers keep their turns.",
    ),
    Topic(
        "inpaint",
        "Inpainting",
        "🖌️",
        "Repaint only part of a picture",
        INPAINTING,
    ),
    Topic(
        "series",
        "Series and styles",
        "🎞️",
        "Many pictures in one look; saved styles",
        "**/series** `prompt` `image1` … `image10` `[strength]` `[style]` makes up to 10 "
        "pictures with one prompt, one seed and one look, posted together as an album.\n\n"
        "**Styles** are saved looks: a prompt template (`{prompt}` marks where each picture's "
        "own prompt goes), a negative prompt and a strength.\n"
        "• **/style save** `name` `prompt` `[negative_prompt]` `[strength]` `[scope]` "
        "`[loras]` saves "
        "yours, or the server's with `scope: server` (Manage Server)\n"
        "• **/style list** shows yours, this server's and the built-in ones\n"
        "• **/style show** `name` shows one in full, with an example\n"
        "• **/style delete** `name` deletes one\n"
        "Use one with `style:` on **/img2img**, **/inpaint** or **/series**; your own "
        "strength and negative prompt still apply.",
    ),
    Topic(
        "structure",
        "Keep the structure",
        "📐",
        "Sketches, line art and floor plans kept while the style changes",
        "At strength 0.7 and above img2img lets the layout drift; at 0.4 a sketch stays a "
        "sketch. **structure** holds the layout with a map of your image, so the strength is "
        "free:\n"
        "• `structure: lines`: your image's own dark lines (sketches, line art, floor plans; "
        "a light-on-dark sketch works too)\n"
        "• `structure: edges`: the outlines found in a photo (products, buildings, people)\n"
        "• `structure_weight` 0.1 (a hint) to 2.0 (strict), default 1.0\n"
        "On **/img2img** and **/series**; in the **Edit**, **Refine** and **Img2img this** "
        "forms as a tag in the prompt: `<structure:lines:1>` (or `edges`; Edit shows the "
        "picture's, delete it to turn structure off). Example, a pencil sketch into concept art:\n"
        "`/img2img image:sketch.png prompt:concept art of a castle on a cliff, dramatic light "
        "strength:0.75 structure:lines`\n"
        "A floor plan into a rendering: `prompt:architectural rendering, modern interior, top "
        "view strength:0.8 structure:lines`\n"
        "The built-in `concept-art` style uses `lines` by itself where it is offered.\n"
        "The result shows a **Structure** field (`lines ×1.0`) and a small picture of the map "
        "that held it; the −/+ buttons, Reroll, Refine, Edit and Compare keep it. Where the "
        "model has no ControlNet for a kind, you get a private message naming what is "
        "available; nothing is counted.",
    ),
    Topic(
        "models",
        "Models and LoRAs",
        "🧩",
        "What this bot can draw with, and <lora:…> in prompts",
        "**/models** lists the models this bot offers (their family, default steps and "
        "whether a GPU serving them is online) and the LoRAs that fit them.\n\n"
        "**model:** on /img2img, /inpaint, /imagine and /series picks the model (the list "
        "shows which have a GPU online); without it a picture uses the style's model, else "
        "the server's (**/settings model**), else the bot's default. Buttons, Refine and Edit "
        "keep a picture's model; Img2img this uses the server's. A job for a model no GPU "
        "serves right now waits and says so. The result shows a **Model** field.\n\n"
        "**LoRAs** are small add-ons that teach a model a look or a subject. Put one anywhere "
        "in your prompt, as in A1111: `<lora:NAME>` at its usual weight, or `<lora:NAME:0.6>` "
        "(0 to 2; 0.6–1.0 is typical), a few per picture (usually up to 4). The tags are taken "
        "out of the words the model reads, and the LoRA's trigger words go first so they are "
        "never cut off. A LoRA that is unknown or does not fit, or a bad weight, gets a private "
        "message naming the ones that fit; nothing is counted.\n"
        "The result shows a **LoRA** field. Refine, Edit, the −/+ buttons and series keep a "
        "picture's LoRAs; to change them, edit the tags in the prompt with **Edit**.",
    ),
    Topic(
        "settings",
        "Settings",
        "⚙️",
        "Limits, channels, gallery, safety (Manage Server)",
        "**/settings** is for members with Manage Server:\n"
        "• **/settings show**: every setting and the recent changes\n"
        "• **/settings model** `name`: the model this server's pictures use by default\n"
        "• **/settings limits** `[user]` `[guild]`: images per member and per server in 24 h\n"
        "• **/settings role-limit** `role` `[limit]` `[exempt]`: a role's own limit\n"
        "• **/settings reset-usage** `member`: start a member's 24 h count afresh\n"
        "• **/settings channel-allow** `channel`, **/settings channel-disallow** `channel`, "
        "**/settings channel-all**: where the bot works\n"
        "• **/settings gallery-channel** `[channel]`: where finished pictures are collected\n"
        "• **/settings nsfw-channels** `mode`: unfiltered results (as spoilers) in "
        "age-restricted channels, or filtered like everywhere\n"
        "• **/settings previews** `on|off`: live previews in running jobs' status messages\n"
        "• **/settings blocked-words add** `word`, **/settings blocked-words remove** `word`, "
        "**/settings blocked-words list**: words refused in prompts\n\n"
        "Members see their own limits with **/quota**.",
    ),
    Topic(
        "trouble",
        "Troubleshooting",
        "🩺",
        "When the picture or the bot does not do what you hoped",
        f"{TROUBLESHOOTING}\n\n"
        "**Refused before anything is queued?** The answer says why: a blocked word, a "
        "channel the bot is not allowed in, your or the server's quota (**/quota**), or an "
        "image too large or in another format. Nothing is counted then.\n"
        "**Safety**: results the safety filter flags are never posted, and pictures from "
        "private or age-restricted channels stay in their channel. A live preview is shown "
        "only once the filter passed it (else “preview hidden”); where no filter runs, "
        "previews are blurred.\n"
        "**“The bot is restarting”**: try again in a moment; queued jobs are kept.",
    ),
)
TOPIC_KEYS = tuple(t.key for t in TOPICS)
_BY_KEY = {t.key: t for t in TOPICS}


def topic(key: str) -> Topic:
    """The topic of that key; the first page for an unknown one (an old menu's value)."""
    return _BY_KEY.get(key, TOPICS[0])


def help_embed(key: str, notice: str | None = None) -> discord.Embed:
    """One page of the guide. `notice` (e.g. that results are not filtered right now) is
    shown on every page, so nobody misses it whichever topic they open."""
    page = topic(key)
    embed = discord.Embed(
        title=f"{page.emoji} {page.label}", description=page.text, colour=discord.Colour.blurple()
    )
    if notice:
        embed.add_field(name="⚠️ Right now", value=clip(notice, FIELD_VALUE), inline=False)
    embed.set_footer(text="Image-to-image bot · pick another topic in the menu below")
    return fit_embed(embed)


def topic_options(current: str) -> list[discord.SelectOption]:
    return [
        discord.SelectOption(
            label=t.label, value=t.key, emoji=t.emoji, description=t.summary,
            default=t.key == current,
        )
        for t in TOPICS
    ]  # fmt: skip
