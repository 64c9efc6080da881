"""Run folders: a new run never writes into a folder that already holds one; metrics.jsonl across a resume; the
reward curve and its averages; the final float32 model and the resume hint from the checkpoints."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from maskfocus.config import ConfigError, config_from_dict
from maskfocus.run_io import (
    MetricsLog,
    RecentReward,
    float32_final_model,
    moving_average,
    new_run_folder,
    plot_reward_curve,
    read_metrics,
    resume_hint,
    rewind_metrics,
    save_checkpoint,
)


def test_new_run_folder_writes_the_config_and_refuses_a_folder_that_holds_a_run(tmp_path):
    config = config_from_dict({"train": {"out_dir": str(tmp_path)}})
    folder = new_run_folder(config, "first")
    assert (folder / "config.yaml").is_file()
    assert new_run_folder(config, "first") == folder  # nothing logged yet: the same name may be reused
    log = MetricsLog(folder / "metrics.jsonl")
    log.write({"iteration": 0})
    log.close()
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        new_run_folder(config, "first")
    assert (folder / "metrics.jsonl").read_text().count("\n") == 1  # the earlier run's records are untouched


def test_recent_reward_is_the_mean_of_the_last_window_and_skips_non_finite_rewards():
    recent = RecentReward(window=3)
    assert recent.postfix({}) == {}
    shown = [recent.postfix({"reward/mean": value}) for value in (0.1, 0.2, float("nan"), 0.3, 0.7)]
    assert shown[1] == {"reward": "0.150"} and shown[2] == {"reward": "0.150"}
    assert shown[-1] == {"reward": f"{(0.2 + 0.3 + 0.7) / 3:.3f}"}


def test_moving_average_matches_a_loop_over_each_window():
    values = [0.0, 1.0, 2.0, 6.0, 1.0]
    expected = []
    for j in range(len(values)):
        window = values[max(0, j - 2) : j + 1]
        expected.append(sum(window) / len(window))
    assert moving_average(values, 3) == pytest.approx(expected)
    assert moving_average(values, 1) == values


def test_reward_curve_adds_a_per_tag_panel_only_when_the_records_hold_tags(tmp_path):
    plain = [{"iteration": i, "reward/mean": 0.1 * i} for i in range(5)]
    tagged = [
        dict(r, **{"reward/tag/counting": 0.2} if r["iteration"] % 2 else {"reward/tag/colors": 0.9}) for r in plain
    ]
    plot_reward_curve(plain, tmp_path / "plain.png")
    plot_reward_curve(tagged, tmp_path / "tagged.png")
    plain_width = Image.open(tmp_path / "plain.png").size[0]
    tagged_width = Image.open(tmp_path / "tagged.png").size[0]
    assert tagged_width > 1.5 * plain_width  # a second panel beside the first


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_rewind_moves_the_records_to_redo_and_a_cut_last_line_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"iteration": i, "reward/mean": i / 10} for i in range(5)]
    _write_lines(path, [json.dumps(r) for r in records] + ['{"iteration": 5, "rew'])
    assert read_metrics(path) == records  # the cut line is left out, not an error
    assert rewind_metrics(path, 3) == 3
    assert read_metrics(path) == records[:3]
    aside = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in aside[:2]] == records[3:] and aside[2] == '{"iteration": 5, "rew'
    assert rewind_metrics(path, 3) == 0 and read_metrics(path) == records[:3]  # nothing more to move
    assert rewind_metrics(tmp_path / "absent.jsonl", 0) == 0


def test_a_fresh_start_moves_everything_and_a_log_appends_after_the_rewind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, [json.dumps({"iteration": i}) for i in range(3)])
    log = MetricsLog(path, start_iteration=1)
    log.write({"iteration": 1, "reward/mean": float("nan")})
    log.close()
    assert read_metrics(path) == [{"iteration": 0}, {"iteration": 1, "reward/mean": None}]
    assert rewind_metrics(path, 0) == 2 and read_metrics(path) == []
    assert len((tmp_path / "metrics.superseded.jsonl").read_text().splitlines()) == 4


def test_a_broken_line_before_the_last_names_its_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, ['{"iteration": 0}', "{oops", '{"iteration": 2}'])
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON record"):
        read_metrics(path)


def test_final_model_takes_the_float32_weights_of_the_last_checkpoint(tmp_path):
    import torch

    from maskfocus.models import load_generator

    config = config_from_dict({"model": {"dtype": "bfloat16"}})
    published = load_generator(config.model)
    assert "no checkpoint" in resume_hint(tmp_path)
    with pytest.raises(RuntimeError, match="without a checkpoint"):
        float32_final_model(config, tmp_path, published)
    master = load_generator(config.model, dtype="float32").trainable_module()
    with torch.no_grad():
        for parameter in master.parameters():
            parameter.add_(1e-3)  # below bfloat16's resolution near most weights: float32 must keep it
    save_checkpoint(tmp_path, 4, master, None, {})
    final = float32_final_model(config, tmp_path, published)
    for name, value in final.trainable_module().state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, master.state_dict()[name]), name
    assert resume_hint(tmp_path) == f"resume from iter_000004 with `maskfocus train --resume {tmp_path}`"
    same = config_from_dict({"model": {"dtype": "float32"}})
    assert float32_final_model(same, tmp_path, published) is published  # float32 rollouts: the published copy


def test_a_resume_that_changes_settings_rewrites_the_config_and_keeps_the_old_one(tmp_path):
    from maskfocus.config import dump_config, load_config
    from maskfocus.run_io import record_resumed_config

    config = config_from_dict({"train": {"num_iterations": 3}})
    dump_config(config, tmp_path / "config.yaml")
    assert record_resumed_config(tmp_path, config) == ([], None)  # same settings: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    (tmp_path / "checkpoints" / "iter_000002").mkdir(parents=True)
    extended = config_from_dict({"train": {"num_iterations": 5}, "sampler": {"compile": True}})
    changes, kept = record_resumed_config(tmp_path, extended)
    assert changes == ["sampler.compile: False -> True", "train.num_iterations: 3 -> 5"]
    assert kept == tmp_path / "config.before_resume_iter_000002.yaml"
    assert load_config(kept) == config and load_config(tmp_path / "config.yaml") == extended


def test_plain_state_dict_copies_full_tensors_or_only_joins_the_gathers():
    import torch

    from maskfocus.run_io import plain_state_dict

    module = torch.nn.Linear(3, 2)
    state = plain_state_dict(module)
    assert state.keys() == {"weight", "bias"}
    assert torch.equal(state["weight"], module.weight) and not state["weight"].requires_grad
    assert all(tensor.is_contiguous() and tensor.device.type == "cpu" for tensor in state.values())
    assert plain_state_dict(module, keep=False) == {}  # a rank that only joins the gathers holds nothing
