from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import ConfigError, RunConfig, config_from_dict, dump_config, load_config, model_folder_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_loads_and_matches_code_defaults_where_unset():
    config = load_config(ROOT / "configs" / "shapes_tiny.yaml")
    assert config.model.path == "builtin:shapes-tiny"
    assert config.sampler.num_steps == 12
    assert config.eval.num_images_per_prompt == 4


def test_unknown_key_names_the_field_and_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sampler:\n  num_stepz: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "sampler.num_stepz" in str(error.value) and "unknown key" in str(error.value)
    assert str(path) in str(error.value)


def test_out_of_range_value_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sampler:\n  num_steps: 0\n")
    with pytest.raises(ConfigError, match="sampler.num_steps"):
        load_config(path)


def test_a_clip_epsilon_of_one_or_more_is_rejected():
    """1 - eps <= 0 would clip nothing below: only the upper bound would bind."""
    with pytest.raises(ConfigError, match=r"grpo.clip_eps.*less than 1"):
        load_config(ROOT / "configs" / "shapes_tiny.yaml", {"grpo.clip_eps": 1.5})
    assert load_config(ROOT / "configs" / "shapes_tiny.yaml", {"grpo.clip_eps": 0.5}).grpo.clip_eps == 0.5


def test_overrides_apply_dotted_keys(tmp_path):
    config = load_config(ROOT / "configs" / "shapes_tiny.yaml", {"sampler.cfg_scale": 1.5})
    assert config.sampler.cfg_scale == 1.5


def test_overrides_index_lists_and_reject_bad_paths(tmp_path):
    config = load_config(ROOT / "configs" / "shapes_tiny.yaml", {"rewards.0.strict": True, "rewards.0.weight": 2.0})
    assert config.rewards[0].strict and config.rewards[0].weight == 2.0
    for dotted, message in [
        ("rewards.1.weight", "rewards is a list of 1; use an index 0..0"),
        ("rewards.first.weight", "rewards is a list of 1"),
        ("seed.value", "seed is a value, not a section"),
    ]:
        with pytest.raises(ConfigError, match=f"--set {dotted}: {message}"):
            load_config(ROOT / "configs" / "shapes_tiny.yaml", {dotted: 1})
    # a file without the list: its default is not indexable ("rewards: Input should be a valid tuple" before)
    bare = tmp_path / "bare.yaml"
    bare.write_text("seed: 0\n")
    expected = r"--set rewards.0.weight: the config gives no rewards list to index .*--set 'rewards=\[...\]'"
    with pytest.raises(ConfigError, match=expected):
        load_config(bare, {"rewards.0.weight": 2.0})
    for typo in ("reward.0.weight", "sampler.0.num_steps"):  # not list fields: the unknown key is named, not a list
        with pytest.raises(ConfigError, match="unknown key") as error:
            load_config(bare, {typo: 2.0})
        assert "list to index" not in str(error.value)


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("rollout.tags", "single_object", r"--set rollout.tags: expected a list, e.g. \[a, b\] .*'single_object'"),
        ("rewards.0", "clip", r"--set rewards.0: expected a config section: a mapping of KEY: VALUE.* \(got 'clip'\)"),
        ("rollout", 3, r"--set rollout: expected a config section: a mapping of KEY: VALUE.* \(got 3\)"),
    ],
)
def test_a_value_where_a_list_or_section_belongs_says_what_to_write(dotted, value, message):
    """Pydantic's words named Python types ("a valid tuple", "a valid dictionary or instance of RewardSpec")."""
    with pytest.raises(ConfigError, match=message) as error:
        load_config(ROOT / "configs" / "shapes_tiny.yaml", {dotted: value})
    assert "valid tuple" not in str(error.value) and "instance of" not in str(error.value)


def test_config_is_frozen():
    config = RunConfig()
    with pytest.raises(ValidationError):
        config.seed = 3


def test_resolved_config_round_trips(tmp_path):
    config = load_config(ROOT / "configs" / "shapes_tiny.yaml")
    dump_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("sampler: [1, 2\n")
    with pytest.raises(ConfigError) as error:  # the file and line, not PyYAML's "<unicode string>"
        load_config(path)
    assert str(error.value).startswith(f"{path}:2:1: not valid YAML: while parsing a flow sequence, expected ','")
    assert "<unicode string>" not in str(error.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "null\n"])
def test_a_config_without_settings_is_refused_and_a_folder_is_named_so(tmp_path, text):
    """An empty --config ran with every code default (binary reward, no compile, Gumbel 2.0), not the shipped
    config's, without a word; a folder was "not found"."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty.yaml: holds no settings \(empty, or only comments\); it would run"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"config file {tmp_path}: is a folder; give a YAML file"):
        load_config(tmp_path)


def test_every_field_has_a_docstring():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(RunConfig)


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ("  tags: [counting, position]\n  tag_weights: [1]\n", "one weight per tag"),
        ("  tags: [counting, position]\n  tag_weights: [1, -1]\n", "must be >= 0 with a positive sum"),
        ("  tags: [counting, position]\n  tag_weights: [0, 0]\n", "must be >= 0 with a positive sum"),
        ("  tags: [counting, counting]\n  tag_weights: [1, 2]\n", "repeat a tag"),
        ("  prompt_file: p.txt\n  tags: [counting]\n  tag_weights: [1]\n", "a .txt prompt_file has no tags"),
        ("  prompt_file: p.jsonl\n  held_out: meaning\n", "held_out 'meaning' applies to the shapes-world prompts"),
    ],
)
def test_bad_tag_weights_name_the_field(tmp_path, rollout, message):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n" + rollout)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "rollout" in str(error.value) and message in str(error.value)


def test_model_folder_overrides_trust_a_meissonic_folder_only_when_asked():
    plain = load_config(DEFAULT_CONFIG, model_folder_overrides("some/folder"))
    assert (plain.model.path, plain.model.kind, plain.model.trust_checkpoint_code) == ("some/folder", "amused", False)
    trusted = load_config(DEFAULT_CONFIG, model_folder_overrides("some/folder", trust_checkpoint_code=True))
    assert (trusted.model.kind, trusted.model.trust_checkpoint_code) == ("meissonic", True)


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"model.dtype": "float16", "sampler.num_steps": 66}, None),  # 65 * 1000 = 64992 in float16
        ({"model.dtype": "float16", "sampler.num_steps": 67}, "model.dtype: float16 with sampler.num_steps 67"),
        ({"model.dtype": "bfloat16", "sampler.num_steps": 200, "eval.dtype": "bfloat16"}, None),
        ({"model.dtype": "bfloat16", "sampler.num_steps": 80, "eval.dtype": "float16"}, "eval.dtype: float16 with"),
        ({"model.dtype": "float16", "sampler.num_steps": 12, "rollout.num_steps": 100}, "rollout.num_steps 100"),
    ],
)
def test_meissonic_in_float16_is_refused_beyond_66_steps(overrides, refused):
    """Its transformer multiplies the timestep (T - 1 at the first step) by 1000 in float16: inf, then NaN logits."""
    meissonic = {"model.path": "/models/Meissonic", "model.kind": "meissonic", "model.trust_checkpoint_code": True}
    settings = {**meissonic, "selection.num_steps": 3, **overrides}
    if refused is None:
        assert load_config(DEFAULT_CONFIG, settings).model.kind == "meissonic"
        return
    with pytest.raises(ConfigError, match=re.escape(refused)):
        load_config(DEFAULT_CONFIG, settings)
    assert load_config(DEFAULT_CONFIG, {**settings, "model.kind": "amused"}).model.kind == "amused"


@pytest.mark.parametrize(
    ("prompts", "group", "workers", "ok"),
    [(4, 8, 1, True), (3, 2, 4, False), (1, 2, 4, False), (4, 2, 4, True), (3, 3, 4, False), (5, 2, 4, True)],
)
def test_every_learner_rank_gets_samples(prompts, group, workers, ok):
    """Ranks take ceil(B / W) rows each; B = 6 over 4 ranks would leave rank 3 none (2, 2, 2, 0)."""
    overrides = {
        "rollout.prompts_per_iteration": prompts,
        "rollout.group_size": group,
        "ray.num_learner_workers": workers,
        "train.executor": "ray",
    }
    if ok:
        assert load_config(DEFAULT_CONFIG, overrides).ray.num_learner_workers == workers
        return
    with pytest.raises(ConfigError, match=r"ray.num_learner_workers \(4\) leaves a learner rank without samples"):
        load_config(DEFAULT_CONFIG, overrides)
    assert load_config(DEFAULT_CONFIG, {**overrides, "train.executor": "local"}).ray.num_learner_workers == workers


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["x"], "rollout.tags.0: Input should be 'single_object', 'two_object', 'counting', 'colors', 'position' or"),
        ([], "rollout.tags: Tuple should have at least 1 item"),
    ],
)
def test_unknown_or_no_rollout_tags_are_refused_before_a_run_starts(tags, message):
    from maskfocus.rewards.geneval import TAGS

    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(DEFAULT_CONFIG, {"rollout.tags": tags})
    assert len(str(error.value).splitlines()) == 2  # one problem: an unknown tag is not also "no tag"
    assert load_config(DEFAULT_CONFIG).rollout.tags == TAGS  # the config's tags are GenEval's


def test_rollout_steps_replace_only_the_rollouts_T_and_bound_K():
    config = load_config(ROOT / "configs" / "shapes_tiny.yaml", {"rollout.num_steps": 6})
    assert config.rollout_sampler().num_steps == 6 and config.sampler.num_steps == 12  # evaluation keeps T = 12
    assert config.rollout_sampler().cfg_scale == config.sampler.cfg_scale
    assert RunConfig().rollout_sampler() == RunConfig().sampler  # unset: the evaluation's sampler
    for overrides, message in [
        ({"rollout.num_steps": 3}, r"selection.num_steps \(K=3\) must be <= rollout.num_steps - 1 \(T-1=2\)"),
        ({"rollout.num_steps": 2, "selection.strategy": "random"}, r"must be <= rollout.num_steps \(T=2\)"),
        ({"rollout.num_steps": 0}, "rollout.num_steps: Input should be greater than or equal to 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(ROOT / "configs" / "shapes_tiny.yaml", overrides)


def test_a_learning_rate_above_one_is_refused_before_the_run():
    """1e300 passed, then ended in torch's AdamW ("value cannot be converted to type float without overflow") after
    the run folder was made."""
    with pytest.raises(ConfigError, match=r"--set optim.learning_rate: Input should be less than or equal to 1"):
        load_config(DEFAULT_CONFIG, {"optim.learning_rate": 1e300})


def test_a_resolution_above_4096_is_refused_before_the_run():
    """An extra digit (10240 for 1024) used to pass, as any multiple of the VQ's downscale does, and would first
    show as a run out of memory."""
    with pytest.raises(ConfigError, match=r"--set model.resolution: Input should be less than or equal to 4096"):
        load_config(DEFAULT_CONFIG, {"model.resolution": 10240})
    assert load_config(DEFAULT_CONFIG, {"model.resolution": 4096}).model.resolution == 4096


def test_clip_step_embeddings_of_a_real_model_need_a_clip_or_hps_reward_term():
    """Without one, a real model's 1024-px steps were embedded by the 64-px shapes-world CLIP, without a word."""
    real = {"model.path": "/models/amused-512", "selection.embedding": "clip"}
    with pytest.raises(ConfigError, match=r"selection.embedding: clip embeds the steps' images with the CLIP of"):
        load_config(DEFAULT_CONFIG, real)
    load_config(DEFAULT_CONFIG, {**real, "rewards": [{"name": "geneval"}, {"name": "clip", "weight": 0.0}]})
    load_config(DEFAULT_CONFIG, {"selection.embedding": "clip"})  # the built-in model: the tiny CLIP serves


def test_the_step_embedding_comes_from_an_hps_term_too():
    from types import SimpleNamespace

    from maskfocus.trainer import clip_image_embed

    hps = SimpleNamespace(name="hps", scorer=SimpleNamespace(image_embeddings="the HPS CLIP's"))
    rewards = SimpleNamespace(terms=[(1.0, SimpleNamespace(name="geneval")), (0.0, hps)])
    assert clip_image_embed(rewards) == "the HPS CLIP's"


def test_the_eval_benchmark_is_one_of_the_built_in_ones_when_the_config_is_read():
    """A misspelt benchmark passed every check and failed at the final evaluation, after all of training."""
    from typing import get_args

    from maskfocus.config import EvalConfig
    from maskfocus.evaluation import BENCHMARKS

    assert set(get_args(EvalConfig.model_fields["benchmark"].annotation)) == set(BENCHMARKS)
    with pytest.raises(ConfigError, match=r"eval.benchmark: Input should be 'shapes-geneval' \(got 'shapes_geneval'\)"):
        config_from_dict({"eval": {"benchmark": "shapes_geneval"}})


@pytest.mark.parametrize(("given", "shown"), [(None, "null"), (0, "0"), (-1.0, "-1.0")])
def test_a_grad_clip_of_null_or_zero_is_told_that_inf_turns_clipping_off(given, shown):
    """null said only "Input should be a valid number"; that .inf is no clipping was in a code comment."""
    from maskfocus.config import OptimConfig

    message = "a positive norm is needed; no clipping is .inf in YAML, inf in --set optim.grad_clip=inf"
    with pytest.raises(ConfigError, match=re.escape(f"--set optim.grad_clip: {message} (got {shown})")):
        load_config(DEFAULT_CONFIG, {"optim.grad_clip": given})
    assert load_config(DEFAULT_CONFIG, {"optim.grad_clip": "inf"}).optim.grad_clip == float("inf")  # as --set reads it
    assert "no clipping" in OptimConfig.model_fields["grad_clip"].description


def test_a_run_folder_under_the_home_folder_is_made_there_and_not_in_a_folder_named_tilde(tmp_path, monkeypatch):
    """`--set train.out_dir=~/runs` reached the config unexpanded: the runs went to ./~/runs (review finding)."""
    from maskfocus.config import default_run_config
    from maskfocus.config_yaml import parse_set
    from maskfocus.run_io import run_folder_for

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = default_run_config(parse_set(["train.out_dir=~/runs"]))
    assert config.train.out_dir == str(tmp_path / "home" / "runs")
    assert run_folder_for(config, "x") == tmp_path / "home" / "runs" / "x"
    assert config_from_dict({"train": {"out_dir": "runs/~x"}}).train.out_dir == "runs/~x"  # only a leading ~


def test_a_word_yaml_reads_as_a_boolean_in_a_text_field_is_named_with_the_quoting_advice(tmp_path):
    """`negative_prompt: no` is false to YAML 1.1; the error said only "Input should be a valid string"."""
    from maskfocus.config import default_run_config
    from maskfocus.config_yaml import parse_set

    advice = "YAML reads an unquoted yes, no, on, off, true or false as a boolean: put it in quotes"
    path = tmp_path / "run.yaml"
    path.write_text("seed: 0\nsampler:\n  negative_prompt: off\n")
    with pytest.raises(ConfigError, match=rf"run.yaml:3: sampler.negative_prompt: .*\(got false\); {advice}"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"--set sampler.negative_prompt: .*\(got false\); {advice}"):
        default_run_config(parse_set(["sampler.negative_prompt=no"]))
    path.write_text("seed: 0\nsampler:\n  negative_prompt: 'no'\n")
    assert load_config(path).sampler.negative_prompt == "no"
    with pytest.raises(ConfigError) as number:  # a bool where a number belongs gets no such advice
        config_from_dict({"sampler": {"num_steps": True}})
    assert "quotes" not in str(number.value)


def test_a_config_write_killed_part_way_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    """A cut config.yaml still parsed, and `maskfocus compare` filled its missing sections with defaults."""
    import maskfocus.outputs as outputs
    from maskfocus.config import default_run_config, dump_config

    path = tmp_path / "config.yaml"
    dump_config(default_run_config(), path)
    before = path.read_text()

    def killed(*_):
        raise KeyboardInterrupt  # the process dies between writing the new text and putting it in place

    monkeypatch.setattr(outputs.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        dump_config(default_run_config({"seed": 7}), path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
