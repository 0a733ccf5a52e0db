"""LoRAs on a loaded model: named adapters loaded once, kept (LRU), switched per call.

Part of the engine (`Engine.loras`). A LoRA is loaded with diffusers' `load_lora_weights`
under its catalogue name (kohya/A1111 files are converted there), on the UNet and, where
the file has them, the text encoder; it then stays loaded until `max_loaded` others were
used more recently, so switching LoRAs never reloads the model. Between calls every
adapter is inactive: a job without LoRAs runs the plain model.

How a job's LoRAs apply:
- the pipeline-call path (`active`): `set_adapters(names, weights)` for the one call of a
  batch, all of whose jobs share one LoRA set;
- the step path: the text encoder's part through `text_adapters` while that row's prompt
  is encoded, the UNet's part per row inside the shared UNet call (`pipeline.lora_rows`).

A LoRA that cannot be loaded fails only the jobs that name it, with `LORA_FAILED` (the path
and the exception go to the worker's log).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.request import LoraRef

log = logging.getLogger(__name__)

DEFAULT_MAX_LOADED = 8


def lora_failed(name: str) -> str:
    """What a member is told when their job's LoRA could not be loaded."""
    return (
        f"The LoRA {name!r} could not be loaded on the GPU worker, so this job could not run. "
        "Try again without it, and tell the server's admins."
    )


def set_key(loras: Sequence[LoraRef]) -> tuple[tuple[str, float], ...]:
    """A LoRA set as a hashable key (names and weights in the job's order)."""
    return tuple((ref.name, float(ref.weight)) for ref in loras)


class LoraLoadError(RuntimeError):
    """A LoRA could not be loaded; the message is for the log (it names the source)."""


class LoraAdapters:
    """The adapters loaded on one pipeline, least recently used first."""

    def __init__(self, pipe: Any, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        self.pipe = pipe
        self.max_loaded = max(1, int(max_loaded))
        self.loaded: OrderedDict[str, str] = OrderedDict()
        """Adapter name → the source it was loaded from."""
        self.failed: dict[tuple[str, str], str] = {}
        """(name, source) that failed to load → the log's reason (not retried)."""
        self.loads = 0
        self.invariant = False
        """The model runs batch-invariant (CPU, `pipeline.invariance`): each LoRA's new
        layers are made so too (`cover_lora_layers`)."""

    def ensure(self, loras: Sequence[LoraRef], *, in_use: Iterable[str] = ()) -> str | None:
        """Load what `loras` needs that is not loaded yet; None when all are ready, else the
        member's message for the first that failed. Adapters in `in_use` (rows running
        now) or in `loras` are never evicted, even past `max_loaded`."""
        keep = {ref.name for ref in loras} | set(in_use)
        for ref in loras:
            if self.loaded.get(ref.name) == ref.source:
                self.loaded.move_to_end(ref.name)
                continue
            if (ref.name, ref.source) in self.failed:
                return lora_failed(ref.name)
            if ref.name in self.loaded:  # the same name from another source: replace it
                self._unload(ref.name)
            self._evict(keep)
            try:
                self._load(ref)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("LoRA %r from %s could not be loaded: %s", ref.name, ref.source, reason)
                self.failed[(ref.name, ref.source)] = reason
                with contextlib.suppress(Exception):
                    self.pipe.delete_adapters([ref.name])  # a half-loaded adapter
                self._quiet()
                return lora_failed(ref.name)
        return None

    def _evict(self, keep: set[str]) -> None:
        """Unload the least recently used adapters until one more fits."""
        for name in list(self.loaded):
            if len(self.loaded) < self.max_loaded:
                return
            if name not in keep:
                self._unload(name)

    def _unload(self, name: str) -> None:
        log.info("unloading LoRA %r (least recently used)", name)
        self.loaded.pop(name, None)
        self.pipe.delete_adapters([name])
        self._quiet()  # peft makes another adapter active when the active one goes

    def _load(self, ref: LoraRef) -> None:
        """`load_lora_weights` under the adapter name; a .safetensors file is read here
        (never a pickle), a folder or hub id is diffusers' to resolve."""
        path = Path(ref.source).expanduser()
        source: Any = ref.source
        if path.is_file():
            if path.suffix != ".safetensors":
                raise LoraLoadError(f"{path.name}: only .safetensors LoRA files are loaded")
            from safetensors.torch import load_file

            source = load_file(str(path))
        self.pipe.load_lora_weights(source, adapter_name=ref.name)
        self._check_plain(ref.name)
        if self.invariant:
            from pipeline.invariance import cover_lora_layers

            cover_lora_layers(self.pipe.unet)
        self.loaded[ref.name] = ref.source
        self.loads += 1
        self._quiet()
        log.info("loaded LoRA %r (%d loaded)", ref.name, len(self.loaded))

    def _check_plain(self, name: str) -> None:
        """Per-row deltas (`pipeline.lora_rows`) compute plain B·A·x: refuse variants
        (DoRA and the like) rather than apply them wrongly."""
        for module in lora_layers(self.pipe.unet):
            if name in getattr(module, "lora_variant", {}):
                raise LoraLoadError(f"LoRA {name!r} is a variant (DoRA?) the worker cannot apply")
        if not any(name in module.lora_A for module in lora_layers(self.pipe.unet)):
            raise LoraLoadError(f"LoRA {name!r} has no layer of this model's UNet")

    def _quiet(self) -> None:
        """Every adapter inactive: the model computes as if none were loaded."""
        if self.loaded or lora_layers(self.pipe.unet):
            self.pipe.disable_lora()

    @contextlib.contextmanager
    def active(self, loras: Sequence[LoraRef]) -> Iterator[None]:
        """For one pipeline call: `loras` active at their weights on the UNet and the text
        encoder (diffusers' own `set_adapters`), none again after."""
        if not loras:
            yield
            return
        self.pipe.enable_lora()
        try:
            self.pipe.set_adapters([r.name for r in loras], [float(r.weight) for r in loras])
            yield
        finally:
            self.pipe.disable_lora()

    @contextlib.contextmanager
    def text_adapters(self, loras: Sequence[LoraRef]) -> Iterator[None]:
        """While one prompt is encoded: the text-encoder part of `loras` active at their
        weights (what `set_adapters` sets there), none again after."""
        encoder = getattr(self.pipe, "text_encoder", None)
        te_layers = lora_layers(encoder) if encoder is not None else []
        present = [r for r in loras if any(r.name in m.lora_A for m in te_layers)]
        if not present or encoder is None:
            yield
            return
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        enable_lora_for_text_encoder(encoder)
        try:
            set_adapters_for_text_encoder(
                [r.name for r in present], encoder, [float(r.weight) for r in present]
            )
            yield
        finally:
            disable_lora_for_text_encoder(encoder)


_LAYERS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], list[Any]]] = (
    weakref.WeakKeyDictionary()
)
"""Module → (its adapters' configs when its LoRA layers were listed, those layers)."""


def lora_layers(module: Any) -> list[Any]:
    """The LoRA layers (peft `BaseTunerLayer`s) inside `module`, in module order.

    Walking a UNet's modules costs milliseconds (788 on the tiny one, about 2–4 ms on CPU),
    and the step path asks at every UNet call: the list is kept per module and listed again
    only when its adapters changed (the `peft_config` entries diffusers and transformers
    keep on it, compared by identity, so an adapter reloaded under its name counts)."""
    if module is None:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    module = getattr(module, "_orig_mod", module)  # a compiled UNet
    configs = tuple((getattr(module, "peft_config", None) or {}).items())
    cached = _LAYERS.get(module)
    if cached is not None and len(cached[0]) == len(configs) and all(
        old[0] == new[0] and old[1] is new[1] for old, new in zip(cached[0], configs, strict=True)
    ):
        return list(cached[1])
    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    _LAYERS[module] = (configs, layers)
    return list(layers)
