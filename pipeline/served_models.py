"""Which catalogue models a worker serves, as plain values that cross the process boundary.

The bot (its local worker) and `python -m pipeline worker` build the same tuple from the same
settings (`served_specs`), so a worker loads exactly what the bot's catalogue names. No torch
here: the bot imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One served model: what `Engine.load` needs for it. Picklable, builtins only."""

    name: str
    """Its catalogue name (what `GenerationRequest.model` says)."""
    source: str
    """A hub id, a diffusers folder or one .safetensors checkpoint file."""
    config: str | None = None
    """A single-file checkpoint's component configs (a diffusers folder or hub id)."""
    resolution: int | None = None
    """Long side in px; None: the model's native size."""
    controlnet_edges: str | None = None
    """Its ControlNet for `structure: edges` (catalogue `controlnet_edges`; without
    MODELS_FILE, CONTROLNET_EDGES_ID); None: not served on this model."""
    controlnet_lines: str | None = None
    """Its ControlNet for `structure: lines`; None: not served on this model."""


def served_specs(settings: Any) -> tuple[ModelSpec, ...]:
    """WORKER_MODELS (default: the whole catalogue) as specs, the worker's default first.
    A model's own `resolution` wins over RESOLUTION, which is the size of one naming none;
    without MODELS_FILE this is the one model MODEL_ID, exactly as before."""
    catalogue = settings.catalogue
    specs = []
    for name in settings.served_models:
        entry = catalogue.models[name]
        resolution = entry.resolution or settings.resolution_setting
        one_model = getattr(settings, "models_file", None) is None  # CONTROLNET_*_ID apply
        edges = entry.controlnet_edges or (
            getattr(settings, "controlnet_edges_id", None) if one_model else None
        )
        lines = entry.controlnet_lines or (
            getattr(settings, "controlnet_lines_id", None) if one_model else None
        )
        specs.append(ModelSpec(name, entry.source, entry.config, resolution, edges, lines))
    return tuple(specs)
