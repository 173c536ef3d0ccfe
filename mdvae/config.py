"""Strict (de)serialisation for the config dataclasses that each model module defines.

Configs travel as ``config.json`` inside bundles and run folders. Loading is strict: an
unknown key, a missing key or a value of the wrong type is an error naming the key, so a
bundle written for another architecture is refused instead of half-loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Self

from mdvae.errors import ConfigError


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(name, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key '{name}': {value!r} fits none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"config key '{name}': expected null, got {value!r}")
        return None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}': expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        items = [_check_type(f"{name}[{i}]", v, item_type) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{name}': expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{name}': expected an integer, got {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ConfigError(
                f"config key '{name}': expected {annotation.__name__}, got {value!r}"
            )
        return value
    if isinstance(annotation, type) and issubclass(annotation, ConfigBase):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{name}': expected an object, got {value!r}")
        return annotation.from_dict(value)
    return value


class ConfigBase:
    """Mixin for ``@dataclass`` configs: ``to_dict`` / strict ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown config key(s) {unknown}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, field in fields.items():
            if name not in data:
                has_default = (
                    field.default is not dataclasses.MISSING
                    or field.default_factory is not dataclasses.MISSING
                )
                if not has_default:
                    raise ConfigError(f"{cls.__name__}: missing config key '{name}'")
                continue
            kwargs[name] = _check_type(name, data[name], hints[name])
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{cls.__name__}: {err}") from err

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
