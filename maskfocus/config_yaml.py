"""Reading YAML as it looks: the line of every key of a config file, `--set KEY=VALUE` options, and the values
YAML 1.1 reads other than they look (`010` as 8, `1:30` as 90, a ` #` comment), refused in a file and in a
`--set` alike. Part of the config machinery of `maskfocus.config_base`."""

from __future__ import annotations

import re

import yaml

from maskfocus.config_base import QUOTE_IT, ConfigError, Loc, dotted


def yaml_key_lines(text: str, source: str = "<text>") -> dict[Loc, int]:
    """The 1-based line of every key and list item of a YAML document, by its path.

    `"a:\\n  b: [1, 2]\\n"` gives {("a",): 1, ("a", "b"): 2, ("a", "b", 0): 2, ("a", "b", 1): 2}. A key given
    twice in one mapping is a ConfigError naming `source` and both lines (YAML itself keeps the last silently), and
    so is an unquoted value YAML reads as another number than it looks (`seed: 010` is 8: `number_quirk`).
    """
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, path: Loc, enclosing: frozenset[int] = frozenset()) -> None:
        if id(node) in enclosing:  # an alias inside its own anchor; `cycle_in` names it
            return
        enclosing |= {id(node)}
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path, line = (*path, str(key_node.value)), key_node.start_mark.line + 1
                if key_path in lines:
                    raise ConfigError(
                        f"{source}:{line}: {dotted(key_path)} is given twice (lines {lines[key_path]} and {line}); "
                        "keep one"
                    )
                lines[key_path] = line
                walk(value_node, key_path, enclosing)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index), enclosing)
        elif isinstance(node, yaml.ScalarNode) and node.style is None and _implicit(node):
            quirk = number_quirk(node.value)
            if quirk is not None:
                raise ConfigError(f"{source}:{node.start_mark.line + 1}: {dotted(path)}: {quirk}; {QUOTE_IT}")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _implicit(node: yaml.ScalarNode) -> bool:
    """Whether YAML typed the plain scalar by its look, not by an explicit tag (`!!str 010` is the string '010')."""
    return node.tag == yaml.SafeLoader.resolve(yaml.SafeLoader, yaml.ScalarNode, node.value, (True, False))


def parse_set(items: list[str], option: str = "--set") -> dict:
    """`--set KEY=VALUE` options -> {dotted key: YAML-read value}; a missing `=` or value is an error naming
    `option` (a script's own, e.g. --ray-set). A key given twice takes the later value, as a later option overrides
    an earlier one."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE (e.g. train.num_iterations=10), got {item!r}")
        if not value.strip():  # YAML reads it as null, which would switch off e.g. grpo.clip_eps without a word
            raise ConfigError(
                f"{option} {item!r}: no value after '='; write {key.strip()}=null for null, {key.strip()}=\"''\" for "
                "an empty string"
            )
        quirk = _yaml_quirk(value)
        if quirk is not None:
            raise ConfigError(f"{option} {item!r}: {quirk}; {QUOTE_IT}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(
                f"{option} {item!r}: the value is not valid YAML ({problem}); quote a string value, e.g. "
                f"{key.strip()}=\"'...'\""
            ) from None
        overrides.pop(key.strip(), None)  # given twice: the later one counts (a script's settings, then the user's)
        overrides[key.strip()] = parsed
    return overrides


def _yaml_quirk(value: str) -> str | None:
    """What YAML would read in `value` other than it looks, anywhere in it (a mapping or list given too): a ` #`
    starts a comment (the rest was dropped without a word), and an unquoted number YAML reads as another
    (`number_quirk`: `0123` is 83, `1:30` is 90). None where YAML itself refuses the value
    (its own error says why) or reads it as it looks."""
    try:
        tokens = [token for token in yaml.scan(value) if not isinstance(token, yaml.StreamEndToken)]
    except yaml.YAMLError:
        return None
    if tokens and tokens[-1].end_mark.index < len(value.rstrip()):
        return "YAML reads ' #' and what follows as a comment, which would be dropped"
    for previous, token in zip([None, *tokens], tokens, strict=False):
        if isinstance(previous, yaml.TagToken):  # `!!str 010`: the tag says what it is
            continue
        quirk = number_quirk(token.value) if isinstance(token, yaml.ScalarToken) and token.plain else None
        if quirk is not None:
            return quirk
    return None


def number_quirk(plain: str) -> str | None:
    """What YAML 1.1 reads in the unquoted scalar `plain` other than the number it looks like, and as what: a
    leading zero makes it octal (`010` is 8) and colons base 60 (`1:30` is 90). None for anything else: `07`
    (octal and decimal agree), `08` (not octal: the string '08', which a number field reads as 8, and which
    `yaml.safe_dump` writes unquoted in a run's saved config.yaml), `0x10` (16) and `1_000` (1000) read as meant."""
    if re.fullmatch(r"[-+]?0[0-9_]+", plain):
        read = yaml.safe_load(plain)
        if isinstance(read, str) or read == int(plain.replace("_", ""), 10):
            return None  # 07: octal and decimal agree; 08: a string, which a number field reads as 8
        return f"YAML reads {plain} (a number with a leading 0) as octal: {read}"
    if re.fullmatch(r"[-+]?([1-9][0-9_]*(:[0-5]?[0-9])+|[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*)", plain):  # YAML 1.1's
        return f"YAML reads {plain} (numbers joined by ':') as one number in base 60: {yaml.safe_load(plain)}"
    return None
