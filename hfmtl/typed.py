"""Typed dataclasses from plain dicts (parsed YAML): type checks against the type hints, and errors
that name the dotted key, the bad value and what is allowed.

Written here rather than taken from a library: transformers' `HfArgumentParser` parses command lines,
not nested mappings, and none of our dependencies checks a nested dict against dataclass hints with
"did you mean" errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from .errors import ConfigError

logger = logging.getLogger("hfmtl")


@dataclasses.dataclass(frozen=True)
class RenamedKey:
    """A key of a config section that has a new name; the old one keeps loading for one release.

    A section lists its renamed keys in a class-level table, ``RENAMED_KEYS: ClassVar[dict[str,
    RenamedKey]]`` (old name -> entry); `build_dataclass` reads the old key as the new one, with a warning.

    Attributes:
        new: the new name of the key.
        convert: turns the old value (already checked against `old_type`) into the new key's value;
            it gets the dotted old key, for its error messages. None: the value is kept as it is.
        old_type: the type hint the old value is checked against; None: the new field's hint.
        coexisted: the previous release had a key named `new` too, and saved every key: there, one of
            the two at its no-op value (the new field's default) is no conflict.

    Example:
        >>> @dataclasses.dataclass
        ... class Section:
        ...     RENAMED_KEYS: typing.ClassVar[dict[str, RenamedKey]] = {"size": RenamedKey("max_size")}
        ...     max_size: int = 1
        >>> build_dataclass(Section, {"size": 3}, "section").max_size  # warns: section.size is deprecated...
        3
    """

    new: str
    convert: Callable[[str, Any], Any] | None = None
    old_type: Any = None
    coexisted: bool = False


def translate_renamed_keys(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`data` with the old names of `cls`'s renamed keys (its ``RENAMED_KEYS``) replaced by the new ones.

    Each old key found gives one deprecation warning line on the "hfmtl" logger (before logging is set
    up, Python's last-resort handler prints it on stderr). `data` itself is left unchanged.

    Raises:
        ConfigError: both the old and the new name are set, or the old value is invalid.
    """
    renamed: dict[str, RenamedKey] = getattr(cls, "RENAMED_KEYS", {})
    if not renamed or not any(old in data for old in renamed):
        return data
    hints = typing.get_type_hints(cls)
    result = dict(data)
    for old, entry in renamed.items():
        if old not in result:
            continue
        old_key, new_key = f"{prefix}.{old}", f"{prefix}.{entry.new}"
        value = _coerce(old_key, result.pop(old), entry.old_type or hints[entry.new])
        if entry.convert is not None:
            value = entry.convert(old_key, value)
        if entry.new in result:
            value = _settle_both(cls, entry, result[entry.new], value, old_key, new_key, hints)
        result[entry.new] = value
        logger.warning(
            "%s is deprecated (removed in the next release): write %s instead (read as %s=%r)",
            old_key,
            new_key,
            new_key,
            value,
        )
    return result


def _settle_both(
    cls: type, entry: RenamedKey, given: Any, translated: Any, old_key: str, new_key: str, hints: dict[str, Any]
) -> Any:
    """The new key's value when a config sets both names of a renamed key."""
    if entry.coexisted:
        default = next(f.default for f in dataclasses.fields(cls) if f.name == entry.new)
        given = _coerce(new_key, given, hints[entry.new])
        if given in (default, translated):
            return translated
        if translated == default:
            return given
    raise ConfigError(f"{old_key} is the old name of {new_key} and both are set: keep only {new_key}")


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


def unknown_key_message(key: str, section: str, valid: typing.Iterable[str]) -> str:
    """One line for an unknown `key` of `section`: the close valid name, else every valid name.

    The message starts with the dotted key, so that a caller adding a section prefix sees it is there.

    Example:
        >>> unknown_key_message("train.max_step", "train", ["max_steps", "seed"])
        "train.max_step is not a key of train; did you mean 'max_steps'?"
    """
    valid = list(valid)
    name = key.rpartition(".")[2]
    hint = _suggest(name, valid) or f"; its keys are {', '.join(valid)}"
    return f"{key} is not a key of {section}{hint}"


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
        # a lone value becomes a one-element list only where the union has no scalar member:
        # `init_heads: Literal["auto", "none"] | list[str]` must reject 'foo', not read it as [foo]
        scalar_member = any(typing.get_origin(a) is not list for a in args if a is not type(None))
        for arg in args:
            if arg is type(None):
                continue
            if scalar_member and typing.get_origin(arg) is list and not isinstance(value, (list, tuple)):
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
    data = translate_renamed_keys(cls, data, prefix)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(unknown_key_message(f"{prefix}.{key}", prefix, fields))
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
