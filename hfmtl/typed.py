"""Typed dataclasses from plain dicts (parsed YAML): type checks against the type hints, and errors
that name the dotted key, the bad value and what is allowed.

Written here rather than taken from a library: transformers' `HfArgumentParser` parses command lines,
not nested mappings, and none of our dependencies checks a nested dict against dataclass hints with
"did you mean" errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from .errors import ConfigError


def check_choice(key: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    """Raise a ConfigError naming `key` when `value` is not one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def check_positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    """Raise a ConfigError naming `key` when `value` is set and not > 0 (or >= 0 with `allow_zero`)."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} must be {bound}")


def _suggest(name: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type hint `hint`, converting where YAML is loose (e.g. '5e-5')."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        check_choice(key, value, args)
        return value
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]  # `report_to: tensorboard` means [tensorboard]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_coerce(f"{key}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        value_hint = args[1] if args else Any
        return {str(k): _coerce(f"{key}.{k}", v, value_hint) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} must be an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be a number")
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/yes/off/on as a boolean
            raise ConfigError(f"{key}={value!r} must be a string: quote it (YAML reads no/yes/off/on as false/true)")
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key)
    return value


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from the mapping `data`, checking names and types.

    Args:
        cls: the dataclass to build.
        data: its fields as a mapping (from YAML).
        prefix: the dotted key of this section, used in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}.{key}{_suggest(str(key), fields)}")
        kwargs[key] = _coerce(f"{prefix}.{key}", value, hints[key])
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]} is required")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a dataclass-level mismatch we did not anticipate: still one line
        raise ConfigError(f"{prefix}: {err}") from err
