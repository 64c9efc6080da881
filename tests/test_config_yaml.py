"""Reading YAML as it looks (maskfocus/config_yaml.py): key lines against an indentation walk, keys given twice,
`--set` parsing, and the values YAML 1.1 reads as another number, refused in a file and in a `--set`."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from maskfocus.config import ConfigError, load_config
from maskfocus.config_yaml import number_quirk, parse_set, yaml_key_lines

ROOT = Path(__file__).resolve().parents[1]


def _indent_key_lines(text: str) -> dict[tuple, int]:
    """Slow reference for block-style YAML of mappings and `- ` list items: track the path by indentation."""
    lines, stack = {}, []  # stack of (indent, key or index, is_list)
    counters: dict[tuple, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.split("#", 1)[0].rstrip()
        if not stripped.strip():
            continue
        indent = len(stripped) - len(stripped.lstrip())
        body = stripped.strip()
        while stack and stack[-1][0] >= indent and not (stack[-1][0] == indent and stack[-1][2] and body[0] != "-"):
            stack.pop()
        if body.startswith("- "):
            parent = tuple(part for _, part, _ in stack)
            index = counters.get(parent, 0)
            counters[parent] = index + 1
            lines[(*parent, index)] = number
            stack.append((indent, index, True))
            body, indent = body[2:], indent + 2
        key = body.split(":", 1)[0]
        path = (*(part for _, part, _ in stack), key)
        lines[path] = number
        stack.append((indent, key, False))
    return lines


def test_key_lines_match_an_indentation_walk_over_the_shipped_config():
    text = (ROOT / "configs" / "shapes_tiny.yaml").read_text()
    expected = _indent_key_lines(text)
    actual = yaml_key_lines(text)
    assert len(expected) > 50
    assert {key: actual.get(key) for key in expected} == expected
    flow_items = set(actual) - set(expected)  # `tags: [a, b]`: items of a one-line list sit on their key's line
    assert flow_items and all(actual[key] == actual[key[:-1]] for key in flow_items)


def test_key_lines_of_flow_style_items():
    assert yaml_key_lines("a:\n  b: [1, 2]\n  c: {d: 3}\n") == {
        ("a",): 1,
        ("a", "b"): 2,
        ("a", "b", 0): 2,
        ("a", "b", 1): 2,
        ("a", "c"): 3,
        ("a", "c", "d"): 3,
    }
    assert yaml_key_lines("") == {}


def test_a_key_given_twice_names_both_lines():
    """YAML keeps the last value without a word; a run would not sample with the steps its file seems to say."""
    with pytest.raises(ConfigError, match=r"^run.yaml:4: sampler.num_steps is given twice \(lines 2 and 4\); keep one"):
        yaml_key_lines("sampler:\n  num_steps: 12\n  cfg_scale: 3\n  num_steps: 8\n", "run.yaml")
    with pytest.raises(ConfigError, match=r"^<text>:2: rewards.0.name is given twice \(lines 2 and 2\)"):
        yaml_key_lines("rewards:\n  - {name: geneval, name: clip}\n")
    assert yaml_key_lines("a:\n  x: 1\nb:\n  x: 2\n") == {("a",): 1, ("a", "x"): 2, ("b",): 3, ("b", "x"): 4}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("=3", "--set expects KEY=VALUE (e.g. train.num_iterations=10), got '=3'"),
        ("sampler.num_steps=[1", "--set 'sampler.num_steps=[1': the value is not valid YAML (expected ',' or ']'"),
        ("seed=!!python/name:os.system", "--set 'seed=!!python/name:os.system': the value is not valid YAML (could"),
    ],
)
def test_a_set_option_without_a_key_or_with_a_value_yaml_cannot_read_is_named(item, message):
    with pytest.raises(ConfigError) as error:
        parse_set([item])
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("sampler.negative_prompt=blurry #watermark, text", "a comment, which would be dropped"),
        ("seed=0123", r"reads 0123 \(a number with a leading 0\) as octal: 83"),
        ("sampler={num_steps: 012}", r"reads 012 \(a number with a leading 0\) as octal: 10"),  # inside a mapping too
        ("rewards.0.weight=1:30", r"reads 1:30 \(numbers joined by ':'\) as one number in base 60: 90"),
        ("sampler={cfg_scale: 2} # two", "a comment, which would be dropped"),
    ],
)
def test_set_values_yaml_would_read_otherwise_than_they_look_are_refused(item, problem):
    """`blurry #watermark, text` became 'blurry' and `0123` became 83, without a word; quoted, they are what they
    look like."""
    with pytest.raises(ConfigError, match=problem + r"; put it in quotes where it is meant as written"):
        parse_set([item])
    key, value = item.split("=", 1)
    if not value.startswith("{"):
        assert parse_set([f"{key}='{value}'"]) == {key: value}
    assert parse_set(["x=a#b", "y=0", "z=0.5"]) == {"x": "a#b", "y": 0, "z": 0.5}


def _looks_like(plain: str) -> int | float | str:
    """What a reader takes an unquoted scalar for: a decimal integer, else a float, else the text itself."""
    for read in (lambda text: int(text, 10), float):
        try:
            return read(plain)
        except ValueError:
            pass
    return plain


def _plain_scalars(alphabet: str, longest: int):
    for length in range(1, longest + 1):
        for chars in itertools.product(alphabet, repeat=length):
            text = "".join(chars)
            try:
                node = yaml.compose(text, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                continue
            if isinstance(node, yaml.ScalarNode) and node.style is None and text != "---":  # "---": a document mark
                yield text


def test_number_quirk_flags_exactly_the_scalars_yaml_reads_as_another_value_than_they_look():
    """Every plain scalar of up to 4 characters of `01789:.+-` (digits on both sides of octal's range, colons,
    points, signs), against what YAML reads. A string that means the number it looks like (`08`, `-.5`: YAML keeps
    them as strings) is not flagged: the config's number fields read it as that number."""
    checked = 0
    for plain in _plain_scalars("01789:.+-", 4):
        read, looks = yaml.safe_load(plain), _looks_like(plain)
        same = type(read) is type(looks) and read == looks
        same = same or (isinstance(read, str) and not isinstance(looks, str) and float(read) == looks)
        assert (number_quirk(plain) is None) == same, (plain, read, looks)
        checked += 1
    assert checked > 2000
    assert number_quirk("010") == "YAML reads 010 (a number with a leading 0) as octal: 8"
    assert number_quirk("1:30") == "YAML reads 1:30 (numbers joined by ':') as one number in base 60: 90"
    assert [number_quirk(plain) for plain in ("0x10", "1_000", "07", "08", "1e-4", "0.5")] == [None] * 6


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("seed: 010", "seed: YAML reads 010 (a number with a leading 0) as octal: 8"),
        ("train:\n  num_iterations: 1:30", "train.num_iterations: YAML reads 1:30 (numbers joined by ':') as one"),
        ("rollout:\n  tag_weights: [1, 1, 1, 1, 1, 010]", "rollout.tag_weights.5: YAML reads 010 (a number with"),
    ],
)
def test_a_config_file_value_yaml_reads_as_another_number_is_refused_at_its_line(tmp_path, text, problem):
    """`seed: 010` ran with seed 8, without a word (`--set seed=010` was already refused); quoted, it is a string."""
    config = tmp_path / "run.yaml"
    config.write_text(f"# a run\n{text}\n")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(error.value).startswith(f"{config}:{len(text.splitlines()) + 1}: {problem}")
    assert "put it in quotes where it is meant as written" in str(error.value)
    config.write_text("sampler:\n  negative_prompt: '010'\n  num_steps: 10\n")
    assert load_config(config).sampler.negative_prompt == "010"
    config.write_text("sampler:\n  negative_prompt: !!str 010\n")  # an explicit tag says what it is
    assert load_config(config).sampler.negative_prompt == "010"


def test_a_saved_config_holding_a_string_yaml_writes_unquoted_loads_again(tmp_path):
    """`yaml.safe_dump` writes the string '08' unquoted, as a run's config.yaml is written; refusing it stopped
    `--resume` of that run."""
    from maskfocus.config import dump_config

    config = load_config(ROOT / "configs" / "shapes_tiny.yaml", parse_set(["sampler.negative_prompt='08'"]))
    dump_config(config, tmp_path / "config.yaml")
    assert "negative_prompt: 08\n" in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml").sampler.negative_prompt == "08"


def test_a_set_value_with_an_explicit_tag_is_what_its_tag_says():
    assert parse_set(["sampler.negative_prompt=!!str 010"]) == {"sampler.negative_prompt": "010"}
    with pytest.raises(ConfigError, match=r"YAML reads 010 \(a number with a leading 0\) as octal: 8"):
        parse_set(["seed=010"])
