"""Configs saved by earlier versions (a run's config.yaml), read as today's config tree reads them, as far as it can.

`maskfocus compare` groups runs of different versions by their settings, and a resume compares a run's saved
settings with its new ones: in both, a key added since, a null threshold that today reads as its kind's default, or
a key removed since must not look like a setting the user changed.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from maskfocus.config import ConfigError, RunConfig, config_from_dict
from maskfocus.config_base import flatten


def saved_settings_of(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config as dotted keys: validated whole where it still passes today's checks; else section by section
    (each section today's tree accepts as it reads it, the others as written) plus the keys added since at their
    defaults, so that a key removed or a value refused since is its only difference from a run of today."""
    try:
        return flatten(config_from_dict(data).model_dump(mode="json"))
    except ConfigError:
        return with_added_defaults(flatten(sections_as_read_today(data)))


def sections_as_read_today(config: dict[str, Any]) -> dict[str, Any]:
    """Each top-level section of `config` validated alone by today's config tree (null thresholds filled, values in
    canonical form), or as written where today's tree refuses it."""
    read = {}
    for name, value in config.items():
        field = RunConfig.model_fields.get(name)
        try:
            adapter = TypeAdapter(field.annotation)
            read[name] = adapter.dump_python(adapter.validate_python(value), mode="json")
        except (AttributeError, ValidationError, ValueError, TypeError):  # no such section, or refused
            read[name] = value
    return read


def with_added_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A run's flat config plus the keys added to the config tree since it ran, at their defaults (a new key
    defaults to the behaviour before it, e.g. `rollout.held_out: text`), so they do not split it from a newer run
    of the same settings. List items (`rewards.0...`) are left as the run wrote them."""
    defaults = flatten(RunConfig().model_dump(mode="json"))  # the code's defaults, as validation fills them
    added = {key: value for key, value in defaults.items() if key not in config and not _in_list_item(key)}
    return {**config, **added}


def _in_list_item(key: str) -> bool:
    return any(part.isdigit() for part in key.split("."))
