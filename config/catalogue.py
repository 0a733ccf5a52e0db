"""The model catalogue: the models a deployment serves and the LoRAs that fit them.

`MODELS_FILE` names a TOML file (format in docs/operators.md, "Models and LoRAs"); without
it, `MODEL_ID` alone is a one-model catalogue, exactly as before catalogues existed. The
file is read once at start into plain frozen values: the bot uses them for options,
autocomplete and routing, the workers for loading. Any mistake stops both at start with one
line naming the file, the entry and the rule (`CatalogueError`), because a catalogue that is
half right fails members later, one job at a time, in ways an operator never sees.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
"""Entry names: what members type in `model:` and `<lora:NAME>`, so short, lower-case, and
free of the `:` and `>` that end a tag."""
MAX_LORA_WEIGHT = 2.0
DEFAULT_MODEL_NAME = "default"
"""The one model's name when the catalogue is `MODEL_ID` alone."""

_MODEL_KEYS = {"source", "label", "steps", "guidance", "resolution", "config"}
_MODEL_KEYS |= {"controlnet_edges", "controlnet_lines"}
_LORA_KEYS = {"source", "models", "weight", "trigger"}
_TOP_KEYS = {"default", "models", "loras"}
_HEADER_RE = re.compile(r"^\s*\[\s*(models|loras)\s*\.\s*(\"[^\"]*\"|'[^']*'|[^\]\s]+)\s*\]")


class CatalogueError(ValueError):
    """A catalogue mistake; the message is the one line the operator sees at start."""


@dataclass(frozen=True)
class ModelEntry:
    """One model members can choose. Unset defaults fall back to the deployment's settings
    (DEFAULT_STEPS, DEFAULT_GUIDANCE, RESOLUTION)."""

    name: str
    source: str
    """A hub id, a diffusers folder, or one `.safetensors` checkpoint file."""
    label: str = ""
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    config: str | None = None
    """For a single-file checkpoint: a diffusers folder or hub id holding the component
    configs, so `from_single_file` needs no download."""
    controlnet_edges: str | None = None
    """The ControlNet (hub id or folder) for `structure: edges` on this model; None: the
    model does not offer it."""
    controlnet_lines: str | None = None
    """The ControlNet for `structure: lines` on this model; None: not offered."""

    @property
    def structures(self) -> tuple[str, ...]:
        """The structure kinds this model has a ControlNet for."""
        return tuple(k for k in ("edges", "lines") if getattr(self, f"controlnet_{k}"))

    @property
    def title(self) -> str:
        """What members see: the label, else the name."""
        return self.label or self.name

    @property
    def single_file(self) -> bool:
        return self.source.lower().endswith((".safetensors", ".ckpt"))


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA members can add with `<lora:NAME>` or `<lora:NAME:WEIGHT>`."""

    name: str
    source: str
    models: tuple[str, ...] | None = None
    """The models it fits; None: every model of its family (known once a worker loaded it)."""
    weight: float = 1.0
    trigger: str = ""
    """Words put first in the prompt when the LoRA is used."""


@dataclass(frozen=True)
class Catalogue:
    models: Mapping[str, ModelEntry]
    loras: Mapping[str, LoraEntry] = field(default_factory=dict)
    default: str = DEFAULT_MODEL_NAME
    path: Path | None = None
    """The file it came from; None for `MODEL_ID` alone."""

    @property
    def default_model(self) -> ModelEntry:
        return self.models[self.default]

    def model(self, name: str | None) -> ModelEntry:
        """The named model (any case), or the default for None/""; KeyError if unknown."""
        return self.models[(name or self.default).lower()]

    def fits(self, lora: LoraEntry, model: str) -> bool:
        """Whether `lora` may be used with `model` (one that names no models fits all here:
        the worker checks the family when it loads it)."""
        return lora.models is None or model in lora.models

    def loras_for(self, model: str) -> list[LoraEntry]:
        return [lora for lora in self.loras.values() if self.fits(lora, model)]


def one_model(model_id: str) -> Catalogue:
    """The catalogue of a deployment without `MODELS_FILE`: `MODEL_ID` alone."""
    return Catalogue({DEFAULT_MODEL_NAME: ModelEntry(DEFAULT_MODEL_NAME, model_id)})


def load_catalogue(models_file: Path | None, model_id: str) -> Catalogue:
    """Read `models_file` (or make the one-model catalogue); raise `CatalogueError`."""
    if models_file is None:
        return one_model(model_id)
    try:
        text = Path(models_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"{models_file}: cannot be read ({exc.strerror or exc})") from None
    return parse_catalogue(text, Path(models_file))


def parse_catalogue(text: str, path: Path) -> Catalogue:
    """Parse a catalogue's TOML text; `path` only names the file in errors."""

    def fail(where: str, rule: str) -> CatalogueError:
        return CatalogueError(f"{path}: {where}: {rule}")

    _check_duplicates(text, fail)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail("not valid TOML", str(exc)) from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (allowed at the top: {', '.join(sorted(_TOP_KEYS))})")
    raw_models = _table(data, "models", fail)
    raw_loras = _table(data, "loras", fail)
    if not raw_models:
        raise fail("[models]", "the catalogue names no model; add at least one [models.NAME]")
    models = {n: _model(n, e, fail) for n, e in _entries(raw_models, "models", fail)}
    loras = {n: _lora(n, e, models, fail) for n, e in _entries(raw_loras, "loras", fail)}
    default = data.get("default", next(iter(models)))
    if not isinstance(default, str) or default.lower() not in models:
        raise fail("default", f"names no model of this file ({', '.join(models)})")
    return Catalogue(models, loras, default.lower(), path)


def _check_duplicates(text: str, fail: Any) -> None:
    """Two entries with one name (in any case): tomllib would only say 'cannot overwrite'."""
    seen: dict[tuple[str, str], int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _HEADER_RE.match(line)
        if not match:
            continue
        kind, name = match.group(1), match.group(2).strip("\"'").lower()
        if (kind, name) in seen:
            raise fail(
                f"[{kind}.{name}] (line {number})",
                f"two entries with one name (the first is on line {seen[kind, name]})",
            )
        seen[kind, name] = number


def _table(data: dict[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise fail(key, f"must be a table of entries ([{key}.NAME])")
    return value


def _entries(raw: dict[str, Any], kind: str, fail: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, entry in raw.items():
        where = f"[{kind}.{name}]"
        if not NAME_RE.match(name.lower()):
            raise fail(
                where,
                "a name is 1–32 letters, digits, '_', '-' or '.', starting with a letter or digit",
            )
        if not isinstance(entry, dict):
            raise fail(where, "must be a table (source = …)")
        out.append((name.lower(), entry))
    return out


def _model(name: str, entry: dict[str, Any], fail: Any) -> ModelEntry:
    where = f"[models.{name}]"
    _known(entry, _MODEL_KEYS, where, fail)
    steps = _number(entry, "steps", int, 1, 150, where, fail)
    guidance = _number(entry, "guidance", float, 0.0, 30.0, where, fail)
    resolution = _number(entry, "resolution", int, 64, 2048, where, fail)
    if resolution is not None and resolution % 8:
        raise fail(where, f"resolution {resolution} is not a multiple of 8")
    return ModelEntry(
        name,
        _source(entry, where, fail),
        label=_text(entry, "label", where, fail),
        steps=steps,  # type: ignore[arg-type]
        guidance=guidance,
        resolution=resolution,  # type: ignore[arg-type]
        config=_text(entry, "config", where, fail) or None,
        controlnet_edges=_text(entry, "controlnet_edges", where, fail) or None,
        controlnet_lines=_text(entry, "controlnet_lines", where, fail) or None,
    )


def _lora(name: str, entry: dict[str, Any], models: dict[str, ModelEntry], fail: Any) -> LoraEntry:
    where = f"[loras.{name}]"
    _known(entry, _LORA_KEYS, where, fail)
    fits = entry.get("models")
    if fits is not None:
        if not isinstance(fits, list) or not fits or not all(isinstance(m, str) for m in fits):
            raise fail(where, "models must be a non-empty list of model names")
        unknown = [m for m in fits if m.lower() not in models]
        if unknown:
            raise fail(
                where, f"names an unknown model {unknown[0]!r} (models: {', '.join(models)})"
            )
        fits = tuple(dict.fromkeys(m.lower() for m in fits))
    weight = _number(entry, "weight", float, 0.0, MAX_LORA_WEIGHT, where, fail)
    return LoraEntry(
        name,
        _source(entry, where, fail),
        models=fits,
        weight=1.0 if weight is None else weight,
        trigger=" ".join(_text(entry, "trigger", where, fail).split()),
    )


def _known(entry: dict[str, Any], keys: set[str], where: str, fail: Any) -> None:
    unknown = sorted(set(entry) - keys)
    if unknown:
        raise fail(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(keys))})")


def _source(entry: dict[str, Any], where: str, fail: Any) -> str:
    source = entry.get("source")
    if not isinstance(source, str) or not source.strip():
        raise fail(where, "missing source (a hub id, a folder or a .safetensors file)")
    return source.strip()


def _text(entry: dict[str, Any], key: str, where: str, fail: Any) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise fail(where, f"{key} must be text")
    return value.strip()


def _number(
    entry: dict[str, Any], key: str, kind: type, low: float, high: float, where: str, fail: Any
) -> float | int | None:
    value = entry.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not (low <= value <= high):
        what = "a whole number" if kind is int else "a number"
        raise fail(where, f"{key} must be {what} from {low:g} to {high:g}, not {value!r}")
    return kind(value)
