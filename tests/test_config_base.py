"""Config errors name the file and line (or the --set key), the field, and what is allowed."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from maskfocus.config import ConfigError, RunConfig, load_config, section_with_overrides
from maskfocus.config_base import flatten, section_at, unknown_key_message
from maskfocus.config_rewards import RewardSpec
from maskfocus.config_yaml import parse_set

ROOT = Path(__file__).resolve().parents[1]


def test_section_at_follows_nested_and_list_fields():
    assert section_at(RunConfig, ("rewards", 0, "detector")).__name__ == "GenEvalDetectorConfig"
    assert section_at(RunConfig, ("sampler",)).__name__ == "SamplerConfig"
    assert section_at(RunConfig, ()) is RunConfig
    assert section_at(RunConfig, ("seed",)) is None


def test_unknown_key_lists_the_sections_keys_and_the_closest():
    message = unknown_key_message(RunConfig, ("rewards", 1, "wieght"))
    assert "did you mean 'weight'?" in message
    assert message.endswith("rewards.1 takes: " + ", ".join(sorted(RewardSpec.model_fields)))
    assert "did you mean" not in unknown_key_message(RunConfig, ("zzzzzz",))
    assert "the top level takes: eval, grpo, model" in unknown_key_message(RunConfig, ("zzzzzz",))


def _error(path: Path, text: str, overrides: dict | None = None) -> list[str]:
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    return str(error.value).splitlines()


def test_each_error_names_its_file_line(tmp_path):
    path = tmp_path / "run.yaml"
    text = "seed: 0\nsampler:\n  num_steps: 12\n  cfg_scal: 3.0\ngrpo:\n  remask: foo\nrewards:\n  - name: geneval\n"
    text += "    mode: parital\n"
    lines = _error(path, text)
    assert lines[0] == f"invalid config {path}:"
    assert lines[1].startswith(f"  {path}:4: sampler.cfg_scal: unknown key; did you mean 'cfg_scale'?")
    assert lines[2] == f"  {path}:6: grpo.remask: Input should be 'random' or 'trajectory' (got 'foo')"
    assert lines[3].startswith(f"  {path}:9: rewards.0.mode: Input should be 'binary', 'partial' or 'graded'")
    assert lines[3].endswith("(got 'parital')")


def test_an_override_is_blamed_rather_than_the_file(tmp_path):
    lines = _error(tmp_path / "run.yaml", "grpo:\n  remask: random\n", {"grpo.remask": "bar", "rewards": [{"x": 1}]})
    assert "  --set grpo.remask: Input should be 'random' or 'trajectory' (got 'bar')" in lines
    assert any(line.startswith("  --set rewards: rewards.0.x: unknown key") for line in lines)


def test_a_misspelt_section_in_an_override_is_blamed_on_the_override_not_the_file(tmp_path):
    """The error's location is a prefix of the `--set` key; the file's nearest key (line 2, `- name: geneval`) is not
    where the mistake is."""
    text = "rewards:\n  - name: geneval\n    mode: partial\n"
    overrides = {"samplr.num_steps": 3, "rewards.0.detectr.kind": "shapes"}
    lines = _error(tmp_path / "run.yaml", text, overrides)
    assert any(
        line.startswith("  --set samplr.num_steps: samplr: unknown key; did you mean 'sampler'?") for line in lines
    )
    assert any(line.startswith("  --set rewards.0.detectr.kind: rewards.0.detectr: unknown key") for line in lines)
    lines = _error(tmp_path / "run.yaml", "samplr:\n  num_steps: 3\n", {"samplr.num_steps": 4})
    where = f"{tmp_path / 'run.yaml'}:1 (overridden in it: --set samplr.num_steps)"
    assert lines[1].startswith(f"  {where}: samplr: unknown key")


def test_a_check_of_a_section_the_file_holds_also_names_the_overrides_inside_it(tmp_path):
    """`--set rollout.tag_weights=[1]` broke the section's own check (one weight per tag), which was blamed on the
    file's `rollout:` line alone, as if the shipped file were wrong."""
    text = "rollout:\n  group_size: 8\nrewards:\n  - name: geneval\n    weight: 1.0\n"
    path = tmp_path / "run.yaml"
    lines = _error(path, text, {"rollout.tag_weights": [1.0]})
    assert lines[1].startswith(f"  {path}:1 with --set rollout.tag_weights: rollout: tag_weights has 1 entries")
    lines = _error(path, text, {"rewards.0.weight": 0.0, "rollout.group_size": 4})
    assert lines[1].startswith(f"  {path}:3 with --set rewards.0.weight: rewards: every term has weight 0")
    lines = _error(path, text, {"rollout.tag_weights": [1.0], "rollout.group_size": 4})  # only the one it names
    assert lines[1].startswith(f"  {path}:1 with --set rollout.tag_weights: rollout: tag_weights has 1 entries")
    lines = _error(path, "rollout:\n  group_size: 8\n  tag_weights: [1]\n", {"rollout.group_size": 4})
    assert lines[1].startswith(f"  {path}:1 (overridden in it: --set rollout.group_size): rollout: tag_weights has")


def test_an_override_from_a_command_line_option_is_named_by_the_option(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sampler:\n  cfg_scale: 3.0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, {"sampler.cfg_scale": -1.0}, options={"sampler.cfg_scale": "--cfg"})
    assert str(error.value).splitlines()[1] == (
        "  --cfg: sampler.cfg_scale: Input should be greater than or equal to 0 (got -1.0)"
    )


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_infinite_and_nan_numbers_are_refused(tmp_path, value):
    """An infinite cfg_scale sampled blank images (overall 0.000) without a word."""
    lines = _error(tmp_path / "run.yaml", f"sampler:\n  cfg_scale: {value}\n")
    assert lines[1].startswith(f"  {tmp_path / 'run.yaml'}:2: sampler.cfg_scale: Input should be a finite number")


def test_infinity_stays_allowed_where_it_means_no_limit(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  grad_clip: .inf\ngrpo:\n  behaviour_weight_cap: .inf\n")
    config = load_config(path)
    assert config.optim.grad_clip == float("inf") and config.grpo.behaviour_weight_cap == float("inf")
    path.write_text("optim:\n  grad_clip: .nan\n")
    with pytest.raises(ConfigError, match=r"optim.grad_clip: Input should be greater than 0"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("sampler:\n  num_steps: true\n", "sampler.num_steps"),  # int: pydantic alone reads it as 1
        ("sampler:\n  cfg_scale: false\n", "sampler.cfg_scale"),  # float
        ("grpo:\n  clip_eps: true\n", "grpo.clip_eps"),  # float | None
        ("rollout:\n  tag_weights: [1, true, 1, 1, 1, 1]\n", "rollout.tag_weights"),  # tuple[float, ...] | None
    ],
)
def test_true_or_false_is_refused_where_a_number_is_needed(tmp_path, text, key):
    lines = _error(tmp_path / "run.yaml", text)
    assert lines[1].startswith(f"  {tmp_path / 'run.yaml'}:2: {key}: a number is needed, not true or false")


def test_a_fixed_tuple_checks_each_place_against_its_own_type():
    """`tuple[bool, int]` takes true in its first place and a number in its second: each item is checked against the
    type of its place, not all against the first."""
    from maskfocus.config_base import Section

    class Pair(Section):
        pair: tuple[bool, int] = (False, 0)
        counts: list[int] = []
        anything: typing.List = []  # noqa: UP006 (bare, no item type): true and false pass through as they are

    assert Pair.model_validate({"anything": [True, 1]}).anything == [True, 1]

    assert Pair.model_validate({"pair": [True, 3]}).pair == (True, 3)
    for bad in ({"pair": [True, False]}, {"counts": [1, True]}):
        with pytest.raises(ValueError, match="a number is needed, not true or false"):
            Pair.model_validate(bad)


def test_a_rejected_value_is_shown_as_yaml_spells_it(tmp_path):
    assert _error(tmp_path / "run.yaml", "sampler:\n  num_steps: false\n")[1].endswith("(got false)")
    assert _error(tmp_path / "run.yaml", "optim:\n  grad_clip: null\n")[1].endswith("(got null)")
    assert _error(tmp_path / "run.yaml", "sampler:\n  num_steps: 0\n")[1].endswith("(got 0)")  # not `false`
    assert _error(tmp_path / "run.yaml", "grpo:\n  remask: foo\n")[1].endswith("(got 'foo')")


def test_true_and_false_still_set_switches_and_numbers_still_set_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sampler:\n  compile: false\n  num_steps: 6\n  cfg_scale: 2\ntrain:\n  final_eval: false\n")
    config = load_config(path)
    assert (config.sampler.compile, config.train.final_eval) == (False, False)
    assert (config.sampler.num_steps, config.sampler.cfg_scale) == (6, 2.0)


def test_a_value_that_contains_itself_is_named_not_a_recursion_error(tmp_path):
    """`&a [*a]` made a list inside itself; validating it recursed until Python gave up."""
    alias = "(a YAML alias inside its own anchor)"
    lines = _error(tmp_path / "run.yaml", "seed: 0\nrollout:\n  tags: &t [single_object, [*t]]\n")
    assert lines == [f"{tmp_path / 'run.yaml'}:3: rollout.tags contains itself at rollout.tags.1.0 {alias}"]
    lines = _error(tmp_path / "run.yaml", "seed: 0\nsampler: &s\n  inner: *s\n")
    assert lines == [f"{tmp_path / 'run.yaml'}:2: sampler contains itself at sampler.inner {alias}"]
    overrides = parse_set(["rollout.tags=&a [*a]"])
    lines = _error(tmp_path / "run.yaml", "seed: 0\n", overrides)
    assert lines == [f"--set rollout.tags: rollout.tags contains itself at rollout.tags.0 {alias}"]


def test_without_the_shipped_yaml_no_run_falls_back_to_the_field_defaults(monkeypatch, tmp_path):
    """The field defaults are another run (reward mode, sampler, executor): a missing default config is an error."""
    import maskfocus.config

    monkeypatch.setattr(maskfocus.config, "DEFAULT_CONFIG", tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"the shipped default config .*missing.yaml is missing .*give --config"):
        maskfocus.config.default_run_config({"sampler.cfg_scale": 2.0})


def test_a_wheel_install_finds_its_own_configs_whatever_sits_beside_the_package(tmp_path):
    """site-packages/configs, where a checkout keeps configs/, may be another package's folder."""
    import maskfocus.config

    site = tmp_path / "site-packages"
    (site / "maskfocus" / "configs").mkdir(parents=True)
    (site / "maskfocus" / "configs" / "shapes_tiny.yaml").write_text("seed: 0\n")
    (site / "configs").mkdir()  # another package's
    module = site / "maskfocus" / "config.py"
    assert maskfocus.config.shipped_configs_folder(module) == site / "maskfocus" / "configs"
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    assert maskfocus.config.shipped_configs_folder(checkout / "maskfocus" / "config.py") == checkout / "configs"


def test_the_shipped_configs_are_the_checkouts_and_a_wheel_installs_them():
    import tomllib

    import maskfocus.config

    assert maskfocus.config.DEFAULT_CONFIG == ROOT / "configs" / "shapes_tiny.yaml"
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["maskfocus.configs"] == "configs"
    assert "maskfocus.configs" in setuptools["packages"]
    assert setuptools["package-data"]["maskfocus.configs"] == ["*.yaml"]


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"sampler:\n  negative_prompt: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"run.yaml: not UTF-8 text \(invalid continuation byte\); save it as UTF-8"):
        load_config(path)


def test_a_cross_field_check_points_at_the_key_it_names(tmp_path):
    lines = _error(tmp_path / "run.yaml", "sampler:\n  num_steps: 4\nselection:\n  num_steps: 5\n")
    assert lines[1].startswith(f"  {tmp_path / 'run.yaml'}:4: selection.num_steps (K=5) must be <=")


def test_a_missing_field_points_at_its_section(tmp_path):
    lines = _error(tmp_path / "run.yaml", "seed: 1\nrewards:\n  - weight: 2.0\n")
    assert lines[1] == f"  {tmp_path / 'run.yaml'}:3: rewards.0.name: Field required"


def test_overrides_without_a_file_name_the_set_key():
    from maskfocus.shapes.pretrain import PretrainConfig

    with pytest.raises(ConfigError) as error:
        section_with_overrides(PretrainConfig, {"generator.transformer.widht": 3}, "pretrain (--set)")
    line = str(error.value).splitlines()[1]
    assert line.startswith("  --set generator.transformer.widht: unknown key; generator.transformer takes: ")


def test_flatten_spells_keys_as_set_does():
    tree = {"a": {"b": 1, "tags": ["x", "y"]}, "rewards": [{"name": "geneval", "weight": 1.0}]}
    assert flatten(tree) == {"a.b": 1, "a.tags": ["x", "y"], "rewards.0.name": "geneval", "rewards.0.weight": 1.0}


def test_a_mapping_set_on_a_section_merges_into_it_and_a_key_set_twice_takes_the_later_value():
    """`--set sampler={num_steps: 5}` reset the file's other sampler keys (Gumbel 4.0 -> 2.0, compile off) without a
    word."""
    shipped = load_config(ROOT / "configs" / "shapes_tiny.yaml")
    merged = load_config(ROOT / "configs" / "shapes_tiny.yaml", parse_set(["sampler={num_steps: 5}"]))
    assert merged.sampler.num_steps == 5
    assert merged.sampler.model_copy(update={"num_steps": shipped.sampler.num_steps}) == shipped.sampler
    assert parse_set(["seed=1", "sampler.num_steps=4", "seed=2"]) == {"sampler.num_steps": 4, "seed": 2}  # later wins


def test_a_mapping_set_on_a_list_item_merges_into_it_and_a_list_replaces_the_list():
    """`--set 'rewards.0={mode: binary}'` replaced the file's reward term: its name, detector and weight went, and the
    error blamed the file's line."""
    shipped = load_config(ROOT / "configs" / "shapes_tiny.yaml")
    merged = load_config(ROOT / "configs" / "shapes_tiny.yaml", parse_set(["rewards.0={mode: binary}"]))
    assert merged.rewards[0].mode == "binary"
    assert merged.rewards[0].model_copy(update={"mode": shipped.rewards[0].mode}) == shipped.rewards[0]
    replaced = load_config(ROOT / "configs" / "shapes_tiny.yaml", parse_set(["rewards=[{name: geneval, weight: 2}]"]))
    assert len(replaced.rewards) == 1 and replaced.rewards[0].weight == 2  # the file's term replaced whole:
    assert replaced.rewards[0].mode == RewardSpec.model_fields["mode"].default != shipped.rewards[0].mode


def test_a_shortcut_option_and_a_set_of_its_key_must_agree(tmp_path, capsys):
    from support import cli_error

    out = ["--set", f"train.out_dir={tmp_path}", "--check"]
    iterations = ["--iterations", "5", "--set", "train.num_iterations=7"]
    error = cli_error(capsys, "train", "--executor", "local", *iterations, *out)
    assert "--iterations 5 and --set train.num_iterations=7 disagree; give one of them" in error
    steps = ["--steps", "4", "--set", "sampler.num_steps=6"]
    error = cli_error(capsys, "eval", *steps, "--out", str(tmp_path / "r.jsonl"))
    assert "--steps 4 and --set sampler.num_steps=6 disagree" in error


def test_a_cross_field_error_names_the_override_that_caused_it(tmp_path):
    """`--set sampler.num_steps=2` was reported at the file's line of selection.num_steps, which it did not change."""
    path = tmp_path / "run.yaml"
    path.write_text("sampler:\n  num_steps: 12\nselection:\n  num_steps: 3\n")
    for key in ("sampler.num_steps", "selection.num_steps"):
        with pytest.raises(ConfigError) as error:
            load_config(path, {key: 2 if key == "sampler.num_steps" else 20})
        assert str(error.value).splitlines()[1].startswith(f"  --set {key}: selection.num_steps (K=")


def test_a_section_mapping_override_is_blamed_only_for_its_own_keys_and_checked_against_shortcuts(tmp_path, capsys):
    """`--set sampler={num_steps: 5}` was named for a bad cfg_scale on the file's own line, `--steps 8` silently beat
    it, and `--set rewards=[]` was blamed on the file."""
    from support import cli_error

    path = tmp_path / "run.yaml"
    path.write_text("sampler:\n  num_steps: 12\n  cfg_scale: -1.0\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, {"sampler": {"num_steps": 5}})
    assert str(error.value).splitlines()[1].startswith(f"  {path}:3: sampler.cfg_scale")
    with pytest.raises(ConfigError) as error:
        load_config(ROOT / "configs" / "shapes_tiny.yaml", {"rewards": []})
    assert str(error.value).splitlines()[1].startswith("  --set rewards: rewards: at least one reward term")
    steps = ["--steps", "8", "--set", "sampler={num_steps: 5}"]
    error = cli_error(capsys, "eval", *steps, "--out", str(tmp_path / "r.jsonl"))
    assert "--steps 8 and --set sampler.num_steps=5 disagree" in error
