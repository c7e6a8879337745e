"""Declarative, serialisable configs.

Every buildable thing (encoding, network, field, task) is described by a frozen
dataclass deriving from :class:`Config`. A config round-trips through JSON:

>>> from fieldcraft.encodings import FrequencyEncodingConfig
>>> cfg = FrequencyEncodingConfig(n_frequencies=6)
>>> Config.from_dict(cfg.to_dict()) == cfg
True

The JSON form is a dict with a ``"type"`` entry naming the config class (its registered
name, e.g. ``"HashGrid"``) and one entry per field. Nested configs, tuples and lists of
configs are handled recursively. Unknown types and unknown fields are rejected with a
:class:`~fieldcraft.errors.FieldcraftError`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, ClassVar

from fieldcraft.errors import FieldcraftError

_REGISTRY: dict[str, type[Config]] = {}


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class of all configs. Subclasses set ``type_name`` (the JSON ``"type"``)."""

    type_name: ClassVar[str] = "Config"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name")
        if name is not None:
            _REGISTRY[name] = cls

    def to_dict(self) -> dict[str, Any]:
        """This config as plain JSON-compatible data (with its ``"type"``)."""
        out: dict[str, Any] = {"type": self.type_name}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Config:
        """Rebuild a config from :meth:`to_dict` output."""
        return _decode_config(data)

    @staticmethod
    def from_json(text: str) -> Config:
        return _decode_config(json.loads(text))

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)


def _encode(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode_config(data: Any) -> Config:
    if not isinstance(data, dict) or "type" not in data:
        raise FieldcraftError(f"config must be an object with a 'type' entry, got {data!r:.80}")
    name = data["type"]
    cls = _REGISTRY.get(name)
    if cls is None:
        raise FieldcraftError(f"unknown config type {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key == "type":
            continue
        if key not in names:
            raise FieldcraftError(f"config {name!r} has no field {key!r}")
        kwargs[key] = _decode_value(value, hints[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise FieldcraftError(f"config {name!r}: {exc}") from None


def _decode_value(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(value, dict) and "type" in value:
        return _decode_config(value)
    if isinstance(value, list):
        args = typing.get_args(hint)
        if origin is tuple:
            inner = args[0] if args else Any
            return tuple(_decode_value(v, inner) for v in value)
        inner = args[0] if args else Any
        return [_decode_value(v, inner) for v in value]
    return value
