"""The machinery under the configuration's dataclasses: a section that knows its key prefix, range
checks with one-line errors, and `build`, which turns a composed (hydra) dict into typed sections and
refuses unknown, missing and mistyped keys, naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, ClassVar, Literal, Union

from corewarding.errors import ConfigError

__all__ = ["Section", "build", "check_positive", "check_real", "ignored", "ignored_fields"]


def ignored(why: str) -> Any:
    """A field for a verl key that is accepted and not read (`why` says why)."""
    return field(metadata={"ignored": why})


# ----------------------------------------------------------------------------------- checks
def check_real(key: str, value: float, low: float | None = None, high: float | None = None,
               open_low: bool = False, open_high: bool = False) -> None:
    """A finite number in [low, high] (an open end when asked)."""
    where = (f"{'(' if open_low or low is None else '['}{'-inf' if low is None else f'{low:g}'}, "
             f"{'inf' if high is None else f'{high:g}'}{')' if open_high or high is None else ']'}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and (value >= high if open_high else value > high)
    if too_low or too_high:
        raise ConfigError(f"{key}={value!r} must be a number in {where}")


def check_positive(key: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


class Section:
    """A config section that knows its key prefix and checks its values when built."""

    PREFIX: ClassVar[str] = ""

    def key(self, name: str) -> str:
        return f"{self.PREFIX}.{name}"

    def positive(self, *names: str) -> None:
        for name in names:
            check_positive(self.key(name), getattr(self, name))


# ----------------------------------------------------------------------------------- building
def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """`value` as type `hint` (bool, int, float, str, Literal, X | None, tuple[...], dict, a section)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        text = str(value).lower() if isinstance(value, bool) else value
        if text not in args:
            raise ConfigError(f"{key}={value!r} is not one of {list(args)}")
        return text
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}={value!r} must be {len(args)} values")
        return tuple(_coerce(a, v, key) for a, v in zip(args, items))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a section of keys")
        return build(hint, value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ConfigError(f"{key}={value!r} must be an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is not a number")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r} must be a string")
        return str(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    raise TypeError(f"{key}: no rule for type {_type_name(hint)}")


def build(cls: type, values: dict[str, Any]) -> Any:
    """A `cls` from a plain nested dict with exactly its keys (one-line `ConfigError` otherwise)."""
    hints = typing.get_type_hints(cls)
    prefix = cls.PREFIX if isinstance(getattr(cls, "PREFIX", None), str) else ""
    key = (lambda name: f"{prefix}.{name}" if prefix else name)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [name for name in values if name not in names]
    if unknown:
        raise ConfigError(f"{key(unknown[0])} is not a key of this trainer's configuration (see docs/config.md)")
    missing = [name for name in names if name not in values]
    if missing:
        raise ConfigError(f"{key(missing[0])} is missing from the configuration")
    return cls(**{name: _coerce(hints[name], values[name], key(name)) for name in names})


def ignored_fields(cls: type, prefix: str = "") -> dict[str, str]:
    """Every ignored key of the tree under `cls`: dotted key -> why it is ignored."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if "ignored" in f.metadata:
            out[dotted] = f.metadata["ignored"]
        elif dataclasses.is_dataclass(hints[f.name]):
            out.update(ignored_fields(hints[f.name], dotted))
    return out
