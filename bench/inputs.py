"""The benchmark's jobs: deterministic input images, prompts and seeds (Pillow only).

Both paths get exactly these: the full path stores the image under DATA_DIR like an
upload, the direct loop opens the same file. Images are made at the generation size, so
neither side resizes and both do the same work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

PROMPTS = (
    "a watercolor fox in a snowy forest",
    "an isometric city at dusk, neon lights",
    "a bowl of ramen, studio photo",
    "a lighthouse on a cliff, oil painting",
    "a cat astronaut, pixel art",
)
NEGATIVE_PROMPTS = (None, "blurry, low quality", None)


@dataclass(frozen=True)
class JobSpec:
    """One benchmark job; `input_path` is relative to the data dir, `image_path` absolute."""

    name: str
    image_path: str
    input_path: str
    width: int
    height: int
    prompt: str
    negative_prompt: str | None
    seed: int
    guild_id: int = 1
    steps: int | None = None  # None: the run's step count
    strength: float | None = None  # None: the run's strength


def _draw(size: int, index: int) -> Image.Image:
    """A gradient with a few shapes: enough structure that img2img has something to keep."""
    base = ((index * 53) % 200 + 30, (index * 97) % 200 + 30, (index * 151) % 200 + 30)
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    image = Image.blend(image, Image.new("RGB", (size, size), base), 0.6)
    draw = ImageDraw.Draw(image)
    s = size // 8
    draw.ellipse((s, s, 4 * s, 4 * s), fill=(240, 200 - index % 50, 60))
    draw.rectangle((4 * s, 5 * s, 7 * s, 7 * s), fill=(40, 90, 160 + index % 60))
    return image


def make_jobs(
    data_dir: Path, size: int, count: int, *, tag: str, seed0: int = 1000, guild_id: int = 1
) -> list[JobSpec]:
    """`count` jobs with `size`×`size` inputs written under `data_dir/inputs/`."""
    folder = data_dir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(count):
        name = f"{tag}-{i}"
        rel = f"inputs/{name}.png"
        _draw(size, i).save(data_dir / rel, format="PNG")
        jobs.append(
            JobSpec(
                name=name,
                image_path=str((data_dir / rel).resolve()),
                input_path=rel,
                width=size,
                height=size,
                prompt=PROMPTS[i % len(PROMPTS)],
                negative_prompt=NEGATIVE_PROMPTS[i % len(NEGATIVE_PROMPTS)],
                seed=seed0 + i,
                guild_id=guild_id,
            )
        )
    return jobs


MIXED_STRENGTHS = (0.35, 0.5, 0.65, 0.8)  # the ±0.15 buttons, Compare and Refine side by side
MIXED_STEPS = (20, 30)


def make_mixed_jobs(
    data_dir: Path, size: int, count: int, *, tag: str, seed0: int = 3000
) -> list[JobSpec]:
    """Traffic as it comes: strengths, step counts and two aspect ratios (1:1 and 4:3
    landscape) mixed in a fixed pseudo-random order, so today's same-key batching finds
    few jobs to batch. The images are made at their generation size."""
    rng = random.Random(seed0)
    short = max(8, int(size * 3 / 4 / 8 + 0.5) * 8)
    jobs = []
    for spec in make_jobs(data_dir, size, count, tag=tag, seed0=seed0):
        width, height = rng.choice(((size, size), (size, short)))
        if (width, height) != (spec.width, spec.height):
            with Image.open(spec.image_path) as square:
                square.resize((width, height), Image.Resampling.LANCZOS).save(spec.image_path)
        jobs.append(
            replace(
                spec,
                width=width,
                height=height,
                steps=rng.choice(MIXED_STEPS),
                strength=rng.choice(MIXED_STRENGTHS),
            )
        )
    return jobs
