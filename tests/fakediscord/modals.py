"""What a user's Discord client sends when they fill in and submit a modal the bot opened."""

from __future__ import annotations

from typing import Any

from .interactions import Upload
from .messages import MessageStore


def modal_submit_data(
    store: MessageStore, channel_id: int, modal: dict[str, Any], values: dict[str, Any]
) -> dict[str, Any]:
    """``data`` of a MODAL_SUBMIT for ``modal`` (the type-9 callback data), mirroring its
    layout: rows ``{type 1, components [...]}`` and Labels ``{type 18, component}``.

    ``values`` are keyed by custom_id or label. Text inputs take a str (left out: their
    prefilled ``value``); selects a list of str; a FileUpload (type 19) ``Upload``s, hosted
    and resolved in ``resolved.attachments``. The client's own checks apply (required,
    lengths, counts, select options); a key that names no component raises LookupError.
    """
    return _Filler(store, channel_id, values).data(modal)


class _Filler:
    def __init__(self, store: MessageStore, channel_id: int, values: dict[str, Any]) -> None:
        self.store = store
        self.channel_id = channel_id
        self.values = values
        self.used: set[str] = set()
        self.resolved: dict[str, dict[str, Any]] = {}

    def data(self, modal: dict[str, Any]) -> dict[str, Any]:
        filled = [self.fill(c) for c in modal.get("components", [])]
        unknown = set(self.values) - self.used
        if unknown:
            raise LookupError(f"modal {modal.get('custom_id')!r} has no input(s) {sorted(unknown)}")
        data: dict[str, Any] = {"custom_id": modal["custom_id"], "components": filled}
        if self.resolved:
            data["resolved"] = self.resolved
        return data

    def lookup(self, comp: dict[str, Any], label: str | None) -> Any:
        for key in (comp.get("custom_id"), comp.get("label"), label):
            if key is not None and key in self.values:
                self.used.add(key)
                return self.values[key]
        return None

    def fill(self, comp: dict[str, Any], label: str | None = None) -> dict[str, Any]:
        kind = comp.get("type")
        ident = {"id": comp["id"]} if "id" in comp else {}
        if kind == 1:
            return {"type": 1, "components": [self.fill(c, label) for c in comp["components"]]}
        if kind == 18:
            return {
                "type": 18,
                **ident,
                "component": self.fill(comp["component"], comp.get("label")),
            }
        if kind == 10:  # a text display: nothing to submit
            return {"type": 10, **ident}
        name = comp.get("label") or label or comp.get("custom_id")
        value = self.lookup(comp, label)
        out: dict[str, Any] = {"type": kind, **ident, "custom_id": comp.get("custom_id")}
        if kind == 4:
            out["value"] = _text(comp, name, value)
        elif kind == 19:
            out["values"] = self.files(comp, name, value)
        elif kind in (3, 5, 6, 7, 8):
            chosen = [] if value is None else [str(v) for v in value]
            _check_count(comp, name, len(chosen))
            if kind == 3:
                allowed = [o["value"] for o in comp.get("options", [])]
                bad = [v for v in chosen if v not in allowed]
                if bad:
                    raise ValueError(f"select {name!r}: {bad} not among {allowed}")
            out["values"] = chosen
        else:
            raise ValueError(f"modal component type {kind} is not supported here")
        return out

    def files(self, comp: dict[str, Any], name: str | None, value: Any) -> list[str]:
        files = [] if value is None else (value if isinstance(value, list) else [value])
        ids = []
        for f in files:
            up = Upload.coerce(f)
            att = self.store.host_file(
                self.channel_id,
                up.filename,
                up.data,
                up.content_type,
                size=up.size,
                width=up.width,
                height=up.height,
            )
            wire = self.store.wire_attachment(att, ephemeral=True)
            self.resolved.setdefault("attachments", {})[str(att["id"])] = wire
            ids.append(str(att["id"]))
        _check_count(comp, name, len(ids))
        return ids


def _text(comp: dict[str, Any], name: str | None, value: Any) -> str:
    text = value if value is not None else comp.get("value") or ""
    if not isinstance(text, str):
        raise TypeError(f"text input {name!r} takes a str, not {text!r}")
    if comp.get("required") is not False and not text:
        raise ValueError(f"text input {name!r} is required")
    lo, hi = comp.get("min_length"), comp.get("max_length") or 4000
    if text and ((lo is not None and len(text) < lo) or len(text) > hi):
        raise ValueError(f"text input {name!r}: length must be in [{lo}, {hi}]")
    return text


def _check_count(comp: dict[str, Any], name: str | None, count: int) -> None:
    required = comp.get("required") is not False
    lo = comp.get("min_values")
    lo = (1 if required else 0) if lo is None else lo
    hi = comp.get("max_values")
    hi = 1 if hi is None else hi
    if not required and count == 0:
        return
    if not lo <= count <= hi:
        raise ValueError(f"{name!r} takes between {lo} and {hi} value(s), got {count}")
