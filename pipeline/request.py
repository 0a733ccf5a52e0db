"""What one image job asks for and what it gives back, plus the pure rules about them.

These types cross the process boundary between the bot and the worker, so they are plain
frozen dataclasses of builtins (picklable, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_STRENGTH = 0.05
MAX_STRENGTH = 1.0
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
MAX_STEPS = 150

# What a user is told when their job's stored input is gone or damaged (the path and the
# exception go to the worker's log, never to the user).
INPUT_MISSING = "The original image is no longer stored, so this job could not run. Send it again."
INPUT_UNREADABLE = "The stored image could not be read, so this job could not run. Send it again."


class InputError(ValueError):
    """Bad user input; the message is shown to the user as is, so it says how to fix it."""


TEXT_TO_IMAGE = "txt2img"
"""A job row's `mode` for `/imagine`: no input picture (`input_path` is ""), the input size
columns hold the picture's size, and its request starts from noise (`NoiseStart`)."""

UPSCALE = "upscale"
"""A job row's (and request's) `mode` for the last job of an Upscale ×2: its input is the
blended picture of the upscale's tiles (each tile an ordinary img2img job, checked on its
own), and the worker only runs the safety checker on the whole picture and writes it as
the result (`pipeline.check_only`): no model call."""

ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "3:2": (3, 2),
    "2:3": (2, 3),
    "16:9": (16, 9),
    "9:16": (9, 16),
}
"""The picture shapes `/imagine` (text-to-image) offers, width:height."""


@dataclass(frozen=True)
class NoiseStart:
    """Text-to-image: the job starts from pure noise at this size instead of from an input
    picture, and runs the whole schedule (strength 1). Sides are multiples of 8."""

    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), like a PIL image's: the step loop groups rows by it."""
        return self.width, self.height


def aspect_size(aspect: str, resolution: int) -> tuple[int, int]:
    """The model's size for `aspect`: long side `resolution`, both sides multiples of 8 (the
    sizes an img2img input of that shape gets, so both kinds share UNet calls)."""
    if aspect not in ASPECTS:
        raise InputError(f"Aspect {aspect!r} is not offered. Use one of: {', '.join(ASPECTS)}.")
    from pipeline.prepare import target_size

    return target_size(*ASPECTS[aspect], resolution)


@dataclass(frozen=True)
class LoraRef:
    """One LoRA on one job: its adapter name (the catalogue's), where it loads from, its
    weight. The worker loads each name once as an adapter on its model and keeps it."""

    name: str
    source: str
    """A .safetensors file, a folder or a hub id; kohya (A1111) or diffusers/PEFT keys."""
    weight: float


STRUCTURE_KINDS = ("edges", "lines")
"""What a job's structure can be held by: `edges` (a Canny edge map of the input, for
photos) or `lines` (the input's own dark strokes, for sketches, line art and floor plans)."""
MIN_STRUCTURE_WEIGHT = 0.1
MAX_STRUCTURE_WEIGHT = 2.0


@dataclass(frozen=True)
class ControlRef:
    """A job's structure: which map the worker makes from its input (`kind`, one of
    `STRUCTURE_KINDS`) and how strongly that kind's ControlNet holds the picture to it."""

    kind: str
    weight: float = 1.0


def check_structure(kind: str | None, weight: float) -> ControlRef | None:
    """The job's structure, None for none (`off`); raises `InputError` saying what is
    wrong and how to fix it."""
    if kind in (None, "", "off"):
        return None
    if kind not in STRUCTURE_KINDS:
        raise InputError(f"Structure {kind!r} is not offered. Use off, edges or lines.")
    if not (MIN_STRUCTURE_WEIGHT <= weight <= MAX_STRUCTURE_WEIGHT):
        raise InputError(
            f"Structure weight {weight:g} is out of range. Use {MIN_STRUCTURE_WEIGHT:g} (a "
            f"hint) to {MAX_STRUCTURE_WEIGHT:g} (strict); 1 is a balanced start."
        )
    return ControlRef(kind, float(weight))


def structure_missing(kind: str, served: tuple[str, ...] | list[str]) -> str:
    """What a member is told when a job asks a structure kind the model has no ControlNet
    for: plain words, naming what is available."""
    if not served:
        return (
            f"Structure {kind!r} is not available on this model (no ControlNet is set up). "
            "Run it with structure: off."
        )
    return f"Structure {kind!r} is not available on this model. Available: {', '.join(served)}."


def structure_map_path(output_path: str) -> str:
    """Where the thumbnail of a structure job's map is written, beside its result PNG."""
    stem, dot, _ = output_path.rpartition(".")
    return f"{stem if dot else output_path}.structure.png"


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate. `image_path` is the stored, normalized RGB input image ("" for
    a text-to-image job: see `start`)."""

    job_id: str
    image_path: str
    prompt: str
    strength: float
    seed: int
    steps: int
    guidance: float
    output_path: str
    negative_prompt: str | None = None
    allow_nsfw: bool = False
    """True only for an age-restricted channel whose server allowed unfiltered results: a
    flagged image is then still written and returned (with `nsfw=True`), not withheld."""
    mode: str = "img2img"
    """How the picture is finished: `img2img` (the whole picture) or `inpaint` (only the
    masked region is regenerated)."""
    start: NoiseStart | None = None
    """Where the latents start: None, the input picture (encoded, noised to `strength`);
    a `NoiseStart`, pure noise of its size (text-to-image; `image_path` unused)."""
    mask_path: str | None = None
    """Inpaint only: a stored mask PNG, mode L, the stored input's size. White repaints,
    black keeps, grey blends."""
    region: str | None = None
    """Inpaint only: words CLIPSeg turns into the mask in the worker; used when `mask_path`
    is None."""
    crop: str = "auto"
    """Inpaint only: `auto` (crop around a mask covering under a quarter of the image),
    `on` or `off`."""
    mask_blur: int = 8
    """Inpaint only: feather (px) of the mask the output is composited through."""
    loras: tuple[LoraRef, ...] = ()
    """The LoRAs this job applies, each with its weight (none: the plain model). Rows with
    different sets share UNet calls in the step path (`pipeline.lora_rows`)."""
    model: str = ""
    """The catalogue name of the model this job runs on; "": the worker's default model
    (the first it serves). A worker keeps up to RESIDENT_MODELS loaded (`pipeline.models`)."""
    control: ControlRef | None = None
    """Keep the input's structure through a ControlNet (None: a free job). Rows with and
    without one share UNet calls in the step path (`pipeline.control_rows`)."""
    preview: bool = False
    """Send live previews of this job while it runs (`pipeline.previews`); never stored."""


@dataclass(frozen=True)
class GenerationResult:
    """What came out: where the PNG is and what actually ran."""

    job_id: str
    output_path: str
    seed: int
    steps_run: int
    steps_total: int
    width: int
    height: int
    seconds: float
    nsfw: bool = False
    """The safety checker flagged this image."""
    withheld: bool = False
    """Flagged and not allowed here: no PNG was written (`output_path` names none)."""
    filtered: bool = False
    """A safety checker looked at this image; False: none was loaded, nothing filtered it
    (the bot records it on the job and says so in /help and /settings show)."""
    structure_map: str = ""
    """A structure job: the thumbnail PNG of the map that held it (`structure_map_path`);
    "" for a free job."""


@dataclass(frozen=True)
class EngineInfo:
    """What the worker loaded. Lives here, torch-free, because it crosses the pipe: the bot
    must be able to unpickle it without importing torch."""

    model_id: str
    device: str
    dtype: str
    resolution: int
    pipeline_class: str
    safety_checker: str = "off"
    """`on` (a checker filters every image), `off` (SAFETY_CHECKER=off) or `missing` (auto,
    and none could be loaded: results are not filtered)."""
    region_masks: bool = False
    """True when the mask model (CLIPSeg) loaded, so `/inpaint region:` can be served."""
    step_slots: int = 0
    """0: one batch at a time, jobs of a batch share one pipeline call (same size, step plan
    and guidance). N > 0: iteration-level batching (`pipeline.stepbatch`): up to N jobs in
    flight, each `Run` taken while others run; jobs need only the same generated size to
    share a UNet call."""
    models: tuple[str, ...] = ()
    """The catalogue names this worker serves (WORKER_MODELS), its default first."""
    resident: tuple[str, ...] = ()
    """The served models loaded now (at most RESIDENT_MODELS), least recently used first."""
    structures: tuple[str, ...] = ()
    """The structure kinds (`STRUCTURE_KINDS`) this worker has a ControlNet for."""


def check_prompt(prompt: str | None, *, field: str = "prompt", required: bool = True) -> str:
    """Return the stripped prompt or raise an `InputError` saying what is wrong."""
    text = (prompt or "").strip()
    if required and not text:
        raise InputError(
            f"The {field} is empty. Describe the picture you want, e.g. 'a watercolor fox'."
        )
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(
            f"The {field} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}. "
            "Shorten it and try again."
        )
    return text


def check_strength(strength: float) -> float:
    """Strength must lie in 0.05–1.0: below that nothing changes, above is meaningless."""
    if not (MIN_STRENGTH <= strength <= MAX_STRENGTH) or strength != strength:
        raise InputError(
            f"Strength {strength} is out of range. Use a number from {MIN_STRENGTH} (keep the "
            f"picture) to {MAX_STRENGTH} (ignore it); 0.5 is a balanced start."
        )
    return float(strength)


def check_seed(seed: int | None) -> int | None:
    if seed is not None and not (0 <= seed <= MAX_SEED):
        raise InputError(f"Seed {seed} is out of range. Use a whole number from 0 to {MAX_SEED}.")
    return seed


def check_steps(steps: int | None) -> int | None:
    if steps is not None and not (1 <= steps <= MAX_STEPS):
        raise InputError(f"Steps {steps} is out of range. Use 1 to {MAX_STEPS}; 20–30 is typical.")
    return steps


def effective_steps(steps: int, strength: float) -> int:
    """Denoising steps diffusers' img2img actually runs: int(steps × strength), capped."""
    return min(int(steps * strength), steps)


def plan_steps(steps: int, strength: float) -> tuple[int, int]:
    """Return (steps to ask diffusers for, denoising steps that will run).

    Every accepted strength runs at least one step: where int(steps × strength) would be 0
    (a few-step model such as SD-Turbo at low strength), the step count is raised to the
    smallest value that gives one step.
    """
    check_strength(strength)
    total = max(1, steps)
    while effective_steps(total, strength) < 1:
        total += 1
    return total, effective_steps(total, strength)
