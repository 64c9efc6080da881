"""The base of every config section, and error messages that point at the file, the line and what is allowed.

`maskfocus.config` builds the run's config tree on `Section`; this module knows nothing of its sections. A
validation error becomes one line per problem, e.g.

    configs/run.yaml:4: sampler.cfg_scal: unknown key; did you mean 'cfg_scale'? sampler takes: batch_size, ...
    --set grpo.remask: Input should be 'random' or 'trajectory' (got 'foo')
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

Loc = tuple[str | int, ...]
"""A path into a config: mapping keys as strings, list indices as ints (pydantic's `loc`)."""

DOTTED_KEY = re.compile(r"\b[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)+\b")
"""A dotted config key quoted in a cross-field check's message (`selection.num_steps`)."""
LEADING_KEY = re.compile(r"^([a-z_][a-z0-9_]*):")
"""A top-level key that a cross-field message starts with (`rewards: at least one reward term is needed`)."""


class ConfigError(ValueError):
    """A config file or value the user has to fix; the message says where and what is allowed."""


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, infinite and NaN numbers rejected (an infinite
    cfg_scale sampled blank images without a word), docstrings kept for fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_true_false_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads `num_steps: true` as 1 without a word; a number field takes numbers only."""
        if info.field_name is not None and _bool_for_number(value, cls.model_fields[info.field_name].annotation):
            raise ValueError("a number is needed, not true or false")
        return value


def scalar_kinds(annotation: Any) -> set[Any]:
    """The plain types a field's annotation admits, through `X | None`, `Optional` and `Annotated`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        arguments = typing.get_args(annotation)
        parts = arguments[:1] if typing.get_origin(annotation) is typing.Annotated else arguments
        return set().union(*(scalar_kinds(part) for part in parts))
    return {annotation}


def _bool_for_number(value: Any, annotation: Any) -> bool:
    """True where `value` (or an item of a list given for a tuple or list of numbers) is true/false and the field
    takes int or float but not bool."""
    kinds = scalar_kinds(annotation)
    if isinstance(value, bool):
        return bool(kinds & {int, float}) and not kinds & {bool, Any}
    if isinstance(value, list | tuple):
        sequences = [kind for kind in kinds if typing.get_origin(kind) in (tuple, list)]
        return any(
            _bool_for_number(item, item_type)
            for kind in sequences
            for item, item_type in zip(value, _item_types(kind, len(value)), strict=False)  # length: pydantic
        )
    return False


def _item_types(sequence: Any, length: int) -> list[Any]:
    """The type of each of `length` items of a `list[X]`, `tuple[X, ...]` or fixed `tuple[X, Y]` annotation."""
    arguments = typing.get_args(sequence)
    if not arguments:  # a bare `list` or `tuple`: any items
        return []
    if typing.get_origin(sequence) is list or arguments[1:] == (Ellipsis,):
        return [arguments[0]] * length
    return list(arguments)  # a fixed tuple: one type per place


SectionT = TypeVar("SectionT", bound=Section)


def cycle_in(tree: Any, path: Loc = (), enclosing: Mapping[int, Loc] | None = None) -> tuple[Loc, Loc] | None:
    """(the list or mapping that contains itself, the path where it does) for YAML like `&a [*a]`, else None. Such
    a value made validation recurse until Python's RecursionError."""
    if not isinstance(tree, dict | list):
        return None
    enclosing = dict(enclosing or {})
    if id(tree) in enclosing:
        return enclosing[id(tree)], path
    enclosing[id(tree)] = path
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        found = cycle_in(value, (*path, key if isinstance(key, int) else str(key)), enclosing)
        if found is not None:
            return found
    return None


def dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside a field's annotation (`Foo`, `tuple[Foo, ...]`, `Foo | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def section_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The config class that holds the keys under `loc` (list indices skipped), or None where `loc` leaves the tree."""
    current = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        nested = None if field is None else _model_in(field.annotation)
        if nested is None:
            return None
        current = nested
    return current


def unknown_key_message(root: type[BaseModel], loc: Loc) -> str:
    """`unknown key; did you mean 'x'? section takes: a, b, c`, from the section the key was found in."""
    section = section_at(root, loc[:-1])
    if section is None:
        return "unknown key (see maskfocus/config.py for the allowed keys)"
    allowed = sorted(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}{dotted(loc[:-1]) or 'the top level'} takes: {', '.join(allowed)}"


QUOTE_IT = "put it in quotes where it is meant as written ('...')"
"""The advice after a value YAML would read otherwise than it looks, in a file and in a `--set` alike."""


def _shown_input(item: Mapping[str, Any]) -> str:
    """` (got 'foo')` for a rejected plain value; nothing for missing or unknown keys and for whole sections."""
    value = item.get("input")
    if item["type"] in ("missing", "extra_forbidden") or not isinstance(value, str | int | float | bool | None):
        return ""
    shown = _as_yaml(value)
    got = f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    if item["type"] == "string_type" and isinstance(value, bool):  # `negative_prompt: no` is false
        return f"{got}; YAML reads an unquoted yes, no, on, off, true or false as a boolean: {QUOTE_IT}"
    return got


def _as_yaml(value: str | int | float | bool | None) -> str:
    """A plain value as the YAML the user wrote: `true`, `null`, `3`, `'foo'`."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return repr(value)


class ErrorOrigin:
    """Where the values of one validation came from: a file (with the line of each key) and overrides, each given
    as `--set KEY` or as a command-line option (`options`: dotted key -> option name, e.g. `--cfg`)."""

    def __init__(
        self,
        source: str,
        key_lines: Mapping[Loc, int] | None = None,
        overridden: Iterable[str] = (),
        options: Mapping[str, str] | None = None,
    ):
        self.source = source
        self.key_lines = dict(key_lines or {})
        self.overridden = tuple(overridden)
        self.values = dict(overridden) if isinstance(overridden, Mapping) else {}
        """Each override's value, where given: a mapping set on a section sets only the keys it holds."""
        self.options = dict(options or {})

    def where(self, loc: Loc, message: str = "") -> str:
        """The override or `FILE:LINE` that set `loc` (or the keys `message` names, an override among them first),
        else the file. An override below `loc` (a misspelt section in `--set samplr.num_steps=3`) is named unless the
        file has `loc` itself."""
        path = dotted(loc)
        for key in self.overridden:
            if self._sets(key, path):
                return self._override(key)
        if not loc:  # a check across fields: the keys its message names, an override of any of them first
            named = DOTTED_KEY.findall(message) + LEADING_KEY.findall(message)
            for key in self.overridden:
                if any(self._sets(key, name) for name in named):
                    return self._override(key)
            quoted = [tuple(int(p) if p.isdigit() else p for p in m.split(".")) for m in named]
            loc = next((candidate for candidate in quoted if candidate in self.key_lines), ())
        if loc and tuple(loc) not in self.key_lines:
            below = next((key for key in self.overridden if key.startswith(path + ".")), None)
            if below is not None:
                return self._override(below)
        for length in range(len(loc), 0, -1):
            line = self.key_lines.get(tuple(loc[:length]))
            if line is not None:
                return f"{self.source}:{line}{self._with_overrides_below(dotted(loc), message)}"
        return self.source

    def _with_overrides_below(self, path: str, message: str) -> str:
        """For a check of a whole section or list that the file holds (`rollout: tag_weights has 1 entries and tags
        6`), the overrides inside it that may have broken it: ` with --set rollout.tag_weights` for those whose key
        the message names, else ` (overridden in it: --set ...)` for every one."""
        below = [key for key in self.overridden if path and key.startswith(path + ".")]
        named = [key for key in below if key.rsplit(".", 1)[-1] in message]
        if named:
            return " with " + ", ".join(self._override(key) for key in named)
        return f" (overridden in it: {', '.join(self._override(key) for key in below)})" if below else ""

    def _sets(self, key: str, path: str) -> bool:
        """Whether the override of `key` set `path`: the key itself or a key below it, unless the override is a
        mapping merged into a section that does not hold that key."""
        if path != key and not path.startswith(key + "."):
            return False
        value = self.values.get(key)
        for part in path[len(key) + 1 :].split(".") if path != key else ():
            if not isinstance(value, Mapping):
                return True
            if part not in value:
                return False
            value = value[part]
        return True

    def _override(self, key: str) -> str:
        return self.options.get(key, f"--set {key}")


CONTAINER_MESSAGES = {
    "list_type": "expected a list, e.g. [a, b] (in YAML, or as a --set value)",
    "tuple_type": "expected a list, e.g. [a, b] (in YAML, or as a --set value)",
    "dict_type": "expected a mapping of KEY: VALUE, e.g. {key: value}",
    "model_type": "expected a config section: a mapping of KEY: VALUE, e.g. {key: value}",
}
"""Pydantic's words for a wrong container ("a valid tuple", "a valid dictionary or instance of RewardSpec") name
Python types and classes; these say what to write instead."""


def format_validation_error(error: ValidationError, root: type[BaseModel], origin: ErrorOrigin) -> str:
    """One line per problem: where it was set, the field's dotted path, and what is wrong or allowed."""
    lines = [f"invalid config {origin.source}:"]
    items = error.errors()
    item_locs = [tuple(item["loc"]) for item in items]
    for item in items:
        loc = tuple(item["loc"])
        below = [other for other in item_locs if len(other) > len(loc) and other[: len(loc)] == loc]
        given = item.get("input")
        long_enough = isinstance(given, list | tuple) and len(given) >= item.get("ctx", {}).get("min_length", 1)
        if item["type"] == "too_short" and below and long_enough:
            continue  # "at least 1 item ... not 0": the items refused are named, and enough were given
        message = CONTAINER_MESSAGES.get(item["type"], item["msg"].removeprefix("Value error, "))
        if item["type"] == "extra_forbidden":
            message = unknown_key_message(root, loc)
        where = origin.where(loc, message)
        field = f"{dotted(loc)}: " if loc and not where.endswith(f" {dotted(loc)}") else ""  # `--set KEY` names it
        lines.append(f"  {where}: {field}{message}{_shown_input(item)}")
    return "\n".join(lines)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys, list items of mappings by index (`rewards.0.name`) as `--set` spells them;
    a list of plain values stays one value (`rollout.tags`)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(item, (dict, list)) for item in tree):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def set_from_option(overrides: dict[str, Any], key: str, value: Any, option: str) -> None:
    """`overrides[key] = value`, given by the command-line option `option` (`--iterations` for
    train.num_iterations); a `--set` of the same key (or of a section mapping that holds it) with another value is
    an error, not silently overruled."""
    found, given = set_in(overrides, key)
    if found and given != value:
        raise ConfigError(f"{option} {value} and --set {key}={given} disagree; give one of them")
    overrides[key] = value


def set_in(overrides: dict, key: str) -> tuple[bool, Any]:
    """(whether `--set` options give dotted `key`, the value): as itself, or inside a mapping given for a section
    above it (`--set 'sampler={num_steps: 5}'` gives sampler.num_steps)."""
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        given, found = overrides.get(".".join(parts[:depth])), ".".join(parts[:depth]) in overrides
        for part in parts[depth:]:
            found = found and isinstance(given, Mapping) and part in given
            given = given.get(part) if found else None
        if found:
            return True, given
    return False, None


def set_dotted(data: dict[str, Any], dotted: str, value: Any, root: type[BaseModel] | None = None) -> None:
    """Set `a.b.c` in nested mappings, creating missing sections; a number indexes a list (`rewards.0.weight`). A
    mapping given for a section or a list item merges into it (`sampler={num_steps: 5}` keeps the file's other
    sampler keys); a list given for a list replaces it (`rewards=[{name: clip}]`). With the config class `root`,
    an index into a list field that `data` does not hold is an error that says so."""
    keys = dotted.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        where = ".".join(keys[:depth]) or "the top level"
        index: Any = key
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {where} is a list of {len(node)}; use an index 0..{len(node) - 1}")
            index = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {where} is a value, not a section")
        if depth == len(keys) - 1:
            current = node[index] if isinstance(node, list) else node.get(index)
            if isinstance(value, dict) and isinstance(current, dict):  # a list item too (`rewards.0={mode: binary}`)
                for key_below, value_below in value.items():
                    set_dotted(node[index], str(key_below), value_below)  # below a list item: no root needed
            else:
                node[index] = value
        else:
            missing = isinstance(node, dict) and index not in node and keys[depth + 1].isdigit()
            if missing and root is not None and is_list_field(root, tuple(keys[: depth + 1])):
                listed = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"--set {dotted}: the config gives no {listed} list to index (its default applies); set the "
                    f"whole list instead, e.g. --set '{listed}=[...]'"
                )
            node = node.setdefault(index, {}) if isinstance(node, dict) else node[index]


def apply_overrides(
    data: dict[str, Any], overrides: dict[str, Any] | None, root: type[BaseModel] | None = None
) -> dict[str, Any]:
    """`data` with each dotted override set in place (see `set_dotted`; `root`: the config class of `data`)."""
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value, root)
    return data


def is_list_field(root: type[BaseModel], loc: Loc) -> bool:
    """Whether `loc` names a list (or tuple) field of the config class `root` (`("rewards",)`: yes)."""
    section = section_at(root, loc[:-1])
    field = section.model_fields.get(str(loc[-1])) if section is not None else None
    return field is not None and _is_sequence(field.annotation)


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    return origin in (typing.Union, types.UnionType) and any(_is_sequence(a) for a in typing.get_args(annotation))
