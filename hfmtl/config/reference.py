"""The config reference, read from the config dataclasses: every key of every section with its type,
default, allowed values and help text. docs/config.md is its Markdown; ``hfmtl config`` prints it.

Generated rather than written by hand so that it cannot drift from the code: a key's help lives in its
field's ``metadata["help"]``, its allowed values in its ``Literal`` type (or, for a registry such as
``balancing.method``, a ``metadata["choices"]`` function), and tests/test_config_reference.py fails
when docs/config.md differs from what this module writes.

Example:
    >>> from hfmtl.config.reference import render_text
    >>> print(render_text("peft"))  # doctest: +ELLIPSIS
    peft: PEFT adapters on the encoder ...
"""

from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..typed import _suggest
from .sections import BalancingConfig, ModelConfig, PeftSection, SamplingConfig, StageConfig
from .train import TrainConfig


@dataclass(frozen=True)
class KeyDoc:
    """One key of a section, as the reference shows it."""

    name: str
    type: str
    default: str  # as YAML, or "required"
    allowed: tuple[str, ...]  # empty: any value of the type
    help: str


@dataclass(frozen=True)
class SectionDoc:
    """One section (or one task type's keys) of the reference.

    Attributes:
        name: what ``hfmtl config --list NAME`` takes: model, tasks, tasks.classification, train...
        key: how its keys are written in a config, e.g. ``tasks.<task>``.
        summary: what the section is for.
        keys: its keys, in the order of the dataclass.
        renamed: old name -> new name, for keys renamed in this release (the old still load, with a warning).
    """

    name: str
    key: str
    summary: str
    keys: tuple[KeyDoc, ...]
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)


def sections() -> list[SectionDoc]:
    """Every section of a run config, in the order a config file has them; each task type on its own."""
    from ..tasks import TASK_TYPES, TaskConfig  # imports torch: only when the reference is asked for

    tasks_summary = (
        "One entry per task, keyed by the task's name (a Python identifier). Its `type` picks the task type: "
        f"{', '.join(sorted(TASK_TYPES))} (their own keys follow), or `module:Class` for a Task subclass of "
        "your own. These keys apply to every type."
    )
    docs = [_section("model", "model", ModelConfig), _section("tasks", "tasks.<task>", TaskConfig, tasks_summary)]
    for type_name in sorted(TASK_TYPES):
        task_class = TASK_TYPES[type_name]
        summary = _first_paragraph(task_class.__doc__)
        if isinstance(task_class.default_metrics, tuple):  # a property where the default depends on the labels
            summary += f" Default metrics: {', '.join(task_class.default_metrics)}."
        docs.append(
            _section(
                f"tasks.{type_name}",
                f"tasks.<task> (type: {type_name})",
                task_class.config_class,
                summary=summary + " Also takes every key of `tasks.<task>`.",
                skip=_inherited_unchanged(task_class.config_class, TaskConfig),
            )
        )
    docs += [
        _section("sampling", "sampling", SamplingConfig),
        _section("train", "train", TrainConfig),
        _section("peft", "peft", PeftSection, summary=_first_paragraph(PeftSection.__doc__) + " Optional."),
        _section("balancing", "balancing", BalancingConfig),
        _section("stages", "stages.<stage>", StageConfig, summary=_STAGES_SUMMARY),
    ]
    return docs


_STAGES_SUMMARY = (
    "Optional: several trainings in a row, in the order given, each starting from the model the one "
    "before saved (hfmtl/config/stages.py; docs/transfer.md)."
)


def find_sections(name: str | None) -> list[SectionDoc]:
    """The sections `name` names: one section, ``tasks`` with every task type, or all for None.

    Raises:
        ConfigError: no section has that name.
    """
    docs = sections()
    if not name:
        return docs
    found = [doc for doc in docs if doc.name == name or doc.name.startswith(f"{name}.")]
    if not found:
        names = [doc.name for doc in docs]
        hint = _suggest(name, names) or f"; the sections are {', '.join(names)}"
        raise ConfigError(f"no config section {name!r}{hint}")
    return found


def render_text(name: str | None = None, width: int = 100) -> str:
    """The reference of section `name` (all sections for None) as plain text for a terminal."""
    blocks = []
    for doc in find_sections(name):
        wrap = functools.partial(textwrap.wrap, width=width, break_on_hyphens=False)
        lines = wrap(f"{doc.key}: {doc.summary}", subsequent_indent="    ")
        for key in doc.keys:
            line = f"  {key.name}: {key.type}" + (" (required)" if key.default == "required" else f" = {key.default}")
            lines.append(line)
            text = key.help + (f" One of: {', '.join(key.allowed)}." if key.allowed else "")
            lines += wrap(text, initial_indent="      ", subsequent_indent="      ")
        if doc.renamed:
            renamed = ", ".join(f"{old} -> {new}" for old, new in doc.renamed.items())
            text = f"Old names, still read (with a warning) until the next release: {renamed}."
            lines += wrap(text, initial_indent="  ", subsequent_indent="    ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def render_markdown() -> str:
    """The whole reference as Markdown: what docs/config.md holds."""
    out = [_MARKDOWN_INTRO]
    for doc in sections():
        if doc.name.startswith("tasks."):  # a task type, under `tasks.<task>`
            out += [f"### `type: {doc.name.removeprefix('tasks.')}`", "", doc.summary, ""]
        else:
            out += [f"## `{doc.key}`", "", doc.summary, ""]
        for key in doc.keys:
            default = "required" if key.default == "required" else f"default `{key.default}`"
            allowed = f"; one of {', '.join(f'`{v}`' for v in key.allowed)}" if key.allowed else ""
            out.append(f"- **`{key.name}`** (`{key.type}`, {default}{allowed}): {key.help}")
        if doc.renamed:
            renamed = ", ".join(f"`{old}` → `{new}`" for old, new in doc.renamed.items())
            out += ["", f"Old names, still read (with a warning) until the next release: {renamed}."]
        out.append("")
    return "\n".join(out)


_MARKDOWN_INTRO = """# Config reference

<!-- Generated from the config dataclasses by hfmtl/config/reference.py: do not edit by hand.
     Regenerate with `hfmtl config --markdown > docs/config.md`. -->

Every key of a run config, by section, with its type, default, allowed values and help. A config is a
YAML file (see configs/); any key can be overridden on the command line as `section.key=value`, nested
keys included (`tasks.rte.data_files.test=test.jsonl`). The same reference in a terminal:
`hfmtl config --list [SECTION]`. Keys are named as transformers 5's `TrainingArguments` names the same
thing; `null` is YAML's None.
"""


def _section(
    name: str, key: str, cls: type, summary: str | None = None, skip: typing.Container[str] = ()
) -> SectionDoc:
    hints = typing.get_type_hints(cls)
    keys = tuple(_key_doc(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init and f.name not in skip)
    renamed = {old: entry.new for old, entry in getattr(cls, "RENAMED_KEYS", {}).items()}
    return SectionDoc(name, key, summary or _first_paragraph(cls.__doc__), keys, renamed)


def _key_doc(field: dataclasses.Field, hint: Any) -> KeyDoc:
    if field.default is not dataclasses.MISSING:
        default = _yaml(field.default)
    elif field.default_factory is not dataclasses.MISSING:
        default = _yaml(field.default_factory())
    else:
        default = "required"
    choices = field.metadata.get("choices")
    allowed = tuple(choices()) if choices else _literal_values(hint)
    return KeyDoc(field.name, _type_name(hint), default, tuple(map(str, allowed)), field.metadata.get("help", ""))


def _inherited_unchanged(cls: type, base: type) -> set[str]:
    """The fields `cls` takes from `base` as they are (same default): shown once, under `base`."""
    base_fields = {f.name: f for f in dataclasses.fields(base)}
    return {
        f.name
        for f in dataclasses.fields(cls)
        if f.name in base_fields
        and _default_of(f) == _default_of(base_fields[f.name])
        and f.metadata == base_fields[f.name].metadata
    }


def _default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _literal_values(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(v for arg in typing.get_args(hint) for v in _literal_values(arg))
    return ()


def _type_name(hint: Any) -> str:
    """A type hint as a reader of YAML thinks of it: ``Literal['a', 'b']`` is a str, None is null."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(_type_name(arg) for arg in args))
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(v).__name__ for v in args))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    return getattr(hint, "__name__", str(hint))


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())
